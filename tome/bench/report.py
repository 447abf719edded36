"""The side-by-side table: a rich table for the terminal and the same rows as Markdown;
with a roofline, each speed row also shows the device's bound and ours as a share of it."""

from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table

from tome.bench.results import RowKey, SideResult, row_label
from tome.bench.roofline import Roofline
from tome.bench.spec import ModelSpec
from tome.bench.targets import Target
from tome.bench.workloads import Workload
from tome.kernels import cpu_isa

HEADER = ("metric", "tome", "transformers", "tome / transformers", "target")
ROOFLINE_HEADER = ("roofline (tok/s)", "tome / roofline")
MIB = 2**20
OUT_OF_MEMORY = "out of memory"
NO_ROOM = "no room"  # skipped: its KV cache would not fit beside the weights


@dataclass
class Report:
    model: ModelSpec
    workload: Workload
    ours: SideResult
    hf: SideResult | None
    targets: list[Target]
    roofline: Roofline | None = None

    @property
    def title(self) -> str:
        w = self.workload
        weights = "random weights" if self.model.dummy else "weights from the file"
        if not self.model.dummy and self.model.source.kind == "gguf":
            weights += f", ours with gguf_weights={self.model.gguf_weights}"
        if self.model.quantization:
            head = "" if self.model.quantize_head else " but the embedding and LM head"
            weights += f", ours quantized to {self.model.quantization}{head}"
        sparse = ", sparse prefill" if self.model.sparse_prefill else ""
        device = self.model.device
        if device == "cpu":
            device += f" ({cpu_isa.describe()})"
        return (
            f"{self.model.name} ({weights}), {self.model.dtype} on {device}, "
            f"KV cache {self.model.kv_cache_dtype}{sparse}; prefill: the median of "
            f"{w.prefill_repeats} runs; decode: {w.decode_tokens} tokens after each prompt"
        )

    @property
    def caption(self) -> str:
        if self.roofline is None:
            return ""
        return (
            f"roofline: {self.roofline.peak.describe()}; max(bytes / bandwidth, FLOPs / peak) "
            "for our KV dtype and prefill settings"
        )

    @property
    def header(self) -> tuple[str, ...]:
        if self.roofline is None:
            return HEADER
        return (*HEADER[:-1], *ROOFLINE_HEADER, HEADER[-1])

    def rows(self) -> list[tuple[str, ...]]:
        rows = [self._speed_row(key) for key in self.workload.rows()]
        rows.append(self._memory_row("peak RSS (MiB)", lambda r: r.peak_rss_bytes))
        if self.ours.peak_gpu_bytes is not None:
            rows.append(self._memory_row("peak GPU memory (MiB)", lambda r: r.peak_gpu_bytes))
        return rows

    def _speed_row(self, key: RowKey) -> tuple[str, ...]:
        ours = self.ours.tokens_per_second(key)
        hf = self.hf.tokens_per_second(key) if self.hf else None
        verdict = "; ".join(t.verdict(self.ours, self.hf) for t in self.targets if t.key == key)
        cells = (_speed(self.ours, key), _speed(self.hf, key) if self.hf else "-")
        row = (f"{row_label(key)} (tok/s)", *cells, _ratio(ours, hf))
        if self.roofline is None:
            return (*row, verdict)
        bound = self.roofline.tokens_per_second(key)
        share = f"{ours / bound:.0%}" if ours else "-"
        return (*row, _num(bound), share, verdict)

    def _memory_row(self, label: str, read: Callable[[SideResult], int]) -> tuple[str, ...]:
        ours = read(self.ours) / MIB
        hf = read(self.hf) / MIB if self.hf else None
        blank = ("",) * (len(self.header) - 4)
        return (label, _num(ours, 0), _num(hf, 0), _ratio(ours, hf), *blank)

    def rich_table(self) -> Table:
        table = Table(title=self.title, caption=self.caption or None)
        for name in self.header:
            table.add_column(name, justify="left" if name in ("metric", "target") else "right")
        for row in self.rows():
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        table = markdown_table(self.title, self.header, self.rows())
        return f"{table}\n{self.caption}\n" if self.caption else table


def _speed(side: SideResult, key: RowKey) -> str:
    if key in side.out_of_memory:
        return OUT_OF_MEMORY
    return NO_ROOM if key in side.no_room else _num(side.tokens_per_second(key))


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, hf: float | None) -> str:
    return f"{ours / hf:.2f}x" if ours and hf else "-"


def markdown_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """The bold title, then the table, each line ending in a newline."""
    lines = [f"**{title}**", "", _md_row(header), _md_row(("---",) * len(header))]
    return "\n".join([*lines, *(_md_row(row) for row in rows)]) + "\n"


def _md_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"
