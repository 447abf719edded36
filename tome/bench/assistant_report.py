"""The reading assistant's benchmark as rows of one table: printed with rich, written as
JSON (with the machine it ran on) and as Markdown for BENCHMARKS.md."""

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from tome.bench.assistant_extraction import ExtractionResult
from tome.bench.assistant_follow_up import FollowUpResult
from tome.bench.assistant_retrieval import TOP_K, RetrievalResult

COLUMNS = ("part", "input", "measure", "value")


@dataclass(frozen=True)
class BenchRow:
    part: str
    input: str
    measure: str
    value: float


def extraction_rows(results: list[ExtractionResult]) -> list[BenchRow]:
    rows = []
    for r in results:
        described = (
            f"{r.name}: {r.sections} {r.unit}, {r.file_bytes / 1e6:.2f} MB file, "
            f"{r.text_chars:,} characters of text"
        )
        rows += [
            BenchRow("extraction", described, "seconds", r.seconds),
            BenchRow("extraction", described, f"{r.unit}/s", r.sections_per_second),
            BenchRow("extraction", described, "MB/s (of the file)", r.megabytes_per_second),
        ]
    return rows


def retrieval_rows(result: RetrievalResult) -> list[BenchRow]:
    described = (
        f"Chinese book: {result.chars:,} characters, {result.passages:,} passages, "
        f"{len(result.query_seconds)} questions"
    )
    return [
        BenchRow("retrieval", described, "chunking (s)", result.chunk_seconds),
        BenchRow("retrieval", described, "index build (s)", result.index_seconds),
        BenchRow("retrieval", described, "query, median (ms)", result.median_query_ms),
        BenchRow("retrieval", described, "query, p95 (ms)", result.p95_query_ms),
        BenchRow("retrieval", described, f"recall@{TOP_K}", result.recall_at_k),
    ]


def follow_up_rows(result: FollowUpResult) -> list[BenchRow]:
    described = f"{result.document_tokens:,}-token document, full mode"
    return [
        BenchRow("follow-up", described, "question 1: prompt tokens", result.first_prompt_tokens),
        BenchRow("follow-up", described, "question 1: time to first token (s)", result.first_ttft),
        BenchRow("follow-up", described, "question 2: prompt tokens", result.second_prompt_tokens),
        BenchRow("follow-up", described, "question 2: cached tokens", result.second_cached_tokens),
        BenchRow("follow-up", described, "question 2: time to first token (s)", result.second_ttft),
        BenchRow("follow-up", described, "question 2 / question 1", result.ratio),
    ]


def print_rows(rows: list[BenchRow], console: Console) -> None:
    table = Table(title="the reading assistant: extraction, retrieval, a follow-up question")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name == "value" else "left")
    for row, shown in zip(rows, _first_of_each_input(rows), strict=True):
        table.add_row(
            row.part if shown else "", row.input if shown else "", row.measure, _number(row.value)
        )
    console.print(table)


def markdown_table(rows: list[BenchRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|--:|"]
    for row, shown in zip(rows, _first_of_each_input(rows), strict=True):
        part, described = (row.part, row.input) if shown else ("", "")
        lines.append(f"| {part} | {described} | {row.measure} | {_number(row.value)} |")
    return "\n".join(lines)


def write_json(rows: list[BenchRow], options: dict[str, Any], folder: Path) -> Path:
    """`bench_assistant.json` in `folder`: the options, the machine and every row."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench_assistant.json"
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    report = {"options": options, "machine": machine, "rows": [asdict(row) for row in rows]}
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _first_of_each_input(rows: list[BenchRow]) -> list[bool]:
    """Whether each row starts a new input: the table names an input once, above its rows."""
    return [i == 0 or rows[i - 1].input != row.input for i, row in enumerate(rows)]


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
