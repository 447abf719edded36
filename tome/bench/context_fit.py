"""The longest context one card holds per KV dtype: `tome plan`'s arithmetic (weights plus
the KV pool's own bytes per token), computed from the config, not measured. Activations
and the runtime need some memory beyond it."""

from dataclasses import dataclass

from rich.table import Table

from tome.bench.report import markdown_table
from tome.engine.memory_plan import plan_memory
from tome.models.config import ModelConfig

CARD_BYTES = 80 * 2**30
HEADER = ("KV dtype", "KV bytes/token", "most tokens beside the weights", "fits the window")


@dataclass(frozen=True)
class ContextFit:
    title: str
    rows: list[tuple[str, ...]]

    def rich_table(self) -> Table:
        table = Table(title=self.title)
        for name in HEADER:
            table.add_column(name, justify="left" if name == "KV dtype" else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        return markdown_table(self.title, HEADER, self.rows)


def context_fit(config: ModelConfig, dtype: str, card_bytes: int = CARD_BYTES) -> ContextFit:
    """Per KV dtype: the most tokens whose KV fits beside `dtype` weights on the card."""
    window = config.max_position_embeddings
    plan = plan_memory(config, dtype, window, card_bytes)
    title = (
        f"Longest context on one {card_bytes / 2**30:g} GiB card, {dtype} weights "
        f"({plan.weight_bytes / 2**30:.2f} GiB), window {window:,}: computed, not measured"
    )
    rows = [
        (
            kv.kv_dtype,
            f"{kv.bytes_per_token:,}",
            f"{kv.max_tokens:,}",
            "yes" if kv.max_tokens >= window else "no",
        )
        for kv in plan.kv
    ]
    return ContextFit(title, rows)
