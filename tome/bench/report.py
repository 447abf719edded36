"""The side-by-side table: a rich table for the terminal and the same rows as Markdown."""

from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table

from tome.bench.results import RowKey, SideResult, row_label
from tome.bench.spec import ModelSpec
from tome.bench.targets import Target
from tome.bench.workloads import Workload

HEADER = ("metric", "tome", "transformers", "tome / transformers", "target")
MIB = 2**20


@dataclass
class Report:
    model: ModelSpec
    workload: Workload
    ours: SideResult
    hf: SideResult | None
    targets: list[Target]

    @property
    def title(self) -> str:
        w = self.workload
        weights = "random weights" if self.model.dummy else "weights from the file"
        return (
            f"{self.model.name} ({weights}), {self.model.dtype} on {self.model.device}; "
            f"decode: {w.decode_tokens} tokens after a {w.decode_prompt_len}-token prompt"
        )

    def rows(self) -> list[tuple[str, ...]]:
        keys: list[RowKey] = [("prefill", n) for n in self.workload.prefill_lengths]
        keys += [("decode", b) for b in self.workload.decode_batches]
        rows = [self._speed_row(key) for key in keys]
        rows.append(self._memory_row("peak RSS (MiB)", lambda r: r.peak_rss_bytes))
        if self.ours.peak_gpu_bytes is not None:
            rows.append(self._memory_row("peak GPU memory (MiB)", lambda r: r.peak_gpu_bytes))
        return rows

    def _speed_row(self, key: RowKey) -> tuple[str, ...]:
        ours = self.ours.tokens_per_second(key)
        hf = self.hf.tokens_per_second(key) if self.hf else None
        verdict = "; ".join(t.verdict(self.ours, self.hf) for t in self.targets if t.key == key)
        return (f"{row_label(key)} (tok/s)", _num(ours), _num(hf), _ratio(ours, hf), verdict)

    def _memory_row(self, label: str, read: Callable[[SideResult], int]) -> tuple[str, ...]:
        ours = read(self.ours) / MIB
        hf = read(self.hf) / MIB if self.hf else None
        return (label, _num(ours, 0), _num(hf, 0), _ratio(ours, hf), "")

    def rich_table(self) -> Table:
        table = Table(title=self.title)
        for name in HEADER:
            table.add_column(name, justify="left" if name in ("metric", "target") else "right")
        for row in self.rows():
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", _md_row(HEADER), _md_row(("---",) * len(HEADER))]
        lines += [_md_row(row) for row in self.rows()]
        return "\n".join(lines) + "\n"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, hf: float | None) -> str:
    return f"{ours / hf:.2f}x" if ours and hf else "-"


def _md_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"
