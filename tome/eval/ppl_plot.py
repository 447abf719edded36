"""Perplexity against context length, one line per rope setting, each setting's window
marked by a dotted line of its colour. Drawn with the Agg backend, no display needed."""

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tome.eval.config import format_length
from tome.eval.perplexity import PerplexityPoint

PPL_PLOT = "ppl.png"


def write_plot(points: list[PerplexityPoint], title: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for rope in dict.fromkeys(p.rope for p in points):
        mine = [p for p in points if p.rope == rope]
        scored = [p for p in mine if p.perplexity is not None]
        (line,) = axes.plot(
            [p.context_length for p in scored], [p.perplexity for p in scored], "o-", label=rope
        )
        axes.axvline(mine[0].window, color=line.get_color(), linestyle=":", linewidth=1)
    lengths = sorted({p.context_length for p in points})
    # Lengths usually double: log scales make each step one even stride, and a perplexity
    # that explodes past a window stays on the same chart as the ones that hold.
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(lengths, [format_length(n) for n in lengths])
    axes.set_xlim(lengths[0] / 1.4, lengths[-1] * 1.4)  # a window far past them stays off
    axes.set_xlabel("context length (tokens); dotted: each setting's window")
    axes.set_ylabel("perplexity")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = out / PPL_PLOT
    figure.savefig(path, dpi=100)
    return path
