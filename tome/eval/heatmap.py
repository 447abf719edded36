"""Heatmaps in the familiar needle-in-a-haystack layout: context length across, needle
depth down, score as colour from red (0) to green (1), each cell annotated. One PNG per
task and language; drawn with the Agg backend, no display needed."""

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tome.eval.config import format_length
from tome.eval.report import mean_scores
from tome.eval.runner import ItemResult


def write_heatmaps(results: list[ItemResult], out: Path, model: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    panels = dict.fromkeys((r.spec.task, r.spec.language) for r in results)
    paths = []
    for task, language in panels:
        chosen = [r for r in results if (r.spec.task, r.spec.language) == (task, language)]
        path = out / f"heatmap_{task}_{language}.png"
        _draw(chosen, f"{task} ({language}), {model}", path)
        paths.append(path)
    return paths


def _draw(results: list[ItemResult], title: str, path: Path) -> None:
    lengths = sorted({r.spec.context_length for r in results})
    depths = sorted({r.spec.depth for r in results}, key=lambda d: -1.0 if d is None else d)
    means = mean_scores(results, lambda r: (r.spec.depth, r.spec.context_length))
    grid = [[means.get((d, n), {"score": math.nan})["score"] for n in lengths] for d in depths]
    figure = Figure(figsize=(2.0 + 1.1 * len(lengths), 1.8 + 0.55 * len(depths)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            if not math.isnan(value):
                axes.text(
                    column,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color=_text_colour(value),
                )
    axes.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
    axes.set_yticks(range(len(depths)), ["n/a" if d is None else f"{d:.0%}" for d in depths])
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("needle depth")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label="score")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _text_colour(score: float) -> str:
    # Both ends of red-yellow-green are dark; black digits vanish on them.
    return "white" if score < 0.15 or score > 0.85 else "black"
