"""The perplexity sweep for a person and for a program: a table per rope setting and length,
and the same numbers as JSON."""

import json
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from tome.eval.config import format_length
from tome.eval.perplexity import PerplexityPoint, scored_positions

PPL_JSON = "ppl.json"
SCORING = (
    "perplexity = exp(mean negative log-likelihood of the tokens in the second half of each "
    "window, positions L//2 to L-1, of the text's first L tokens)"
)


def perplexity_table(points: list[PerplexityPoint]) -> Table:
    """Lengths down, rope settings across; a skipped cell reads 'skipped'."""
    ropes = list(dict.fromkeys(p.rope for p in points))
    lengths = list(dict.fromkeys(p.context_length for p in points))
    cell = {(p.rope, p.context_length): p for p in points}
    table = Table(title="perplexity by context length and rope setting")
    table.add_column("context")
    for rope in ropes:
        table.add_column(rope, justify="right")
    for length in lengths:
        values = [cell[(rope, length)].perplexity for rope in ropes]
        table.add_row(
            format_length(length), *("skipped" if v is None else f"{v:.3f}" for v in values)
        )
    return table


def write_json(points: list[PerplexityPoint], model: str, text: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / PPL_JSON
    report = {
        "model": model,
        "text": text,
        "scoring": SCORING,
        "points": [
            {**asdict(p), "scored_from": scored_positions(p.context_length).start} for p in points
        ],
    }
    path.write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return path
