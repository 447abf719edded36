"""The scores as JSON: every item, and means per task, language, length, depth and grid cell."""

import json
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tome.eval.config import EvalConfig
from tome.eval.runner import ItemResult

REPORT_FILE = "scores.json"


def mean_scores(
    results: list[ItemResult], key: Callable[[ItemResult], Hashable]
) -> dict[Hashable, dict[str, float]]:
    """{key: {"score": mean, "n": count}} in order of first appearance."""
    groups: dict[Hashable, list[float]] = defaultdict(list)
    for result in results:
        groups[key(result)].append(result.score)
    return {k: {"score": sum(v) / len(v), "n": len(v)} for k, v in groups.items()}


def build_report(config: EvalConfig, model: str, results: list[ItemResult]) -> dict[str, Any]:
    def by(field: str) -> dict[str, dict[str, float]]:
        means = mean_scores(results, lambda r: getattr(r.spec, field))
        return {_key(k): v for k, v in means.items()}

    cells = mean_scores(
        results, lambda r: (r.spec.task, r.spec.language, r.spec.context_length, r.spec.depth)
    )
    return {
        "model": model,
        "config": {k: v for k, v in asdict(config).items() if k != "out"},
        "overall": sum(r.score for r in results) / len(results),
        "by_task": by("task"),
        "by_language": by("language"),
        "by_length": by("context_length"),
        "by_depth": by("depth"),
        "cells": [
            {"task": t, "language": lang, "length": n, "depth": d, **mean}
            for (t, lang, n, d), mean in cells.items()
        ],
        "items": [_item_json(r) for r in results],
    }


def write_report(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_FILE
    path.write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return path


def _key(value: Hashable) -> str:
    # JSON keys are strings; a task without a needle has depth None.
    return "none" if value is None else str(value)


def _item_json(result: ItemResult) -> dict[str, Any]:
    # The prompt is left out (it can be megabytes); the seed regenerates it.
    return {
        **asdict(result.spec),
        "prompt_tokens": result.prompt_tokens,
        "expected": list(result.expected),
        "output": result.output,
        "score": result.score,
    }
