"""The serving benchmark's numbers: throughput, and time to first token (TTFT), time per
output token after the first (TPOT) and inter-token latency (ITL) as mean, median and p99."""

import statistics
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from rich.table import Table

from tome.bench.serve_targets import Trace
from tome.bench.serve_workload import ServeBenchConfig


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class TableReport:
    """A report of (metric, value) rows under a title, printed or appended as Markdown."""

    @property
    def title(self) -> str:
        raise NotImplementedError

    def rows(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def rich_table(self) -> Table:
        table = Table(title=self.title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for row in self.rows():
            table.add_row(*row)
        return table

    def append_markdown(self, path: Path) -> None:
        lines = [f"\n### {self.title}\n", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in self.rows()]
        with path.open("a") as file:
            file.write("\n".join(lines) + "\n")


@dataclass
class ServeBenchReport(TableReport):
    config: ServeBenchConfig
    traces: list[Trace]
    duration_s: float

    @property
    def completed(self) -> list[Trace]:
        return [t for t in self.traces if t.error is None and t.chunk_times]

    def ttfts(self) -> list[float]:
        return [t.chunk_times[0] - t.sent_at for t in self.completed]

    def tpots(self) -> list[float]:
        return [
            (t.chunk_times[-1] - t.chunk_times[0]) / (t.output_tokens - 1)
            for t in self.completed
            if t.output_tokens > 1
        ]

    def itls(self) -> list[float]:
        return [b - a for t in self.completed for a, b in pairwise(t.chunk_times)]

    def rows(self) -> list[tuple[str, str]]:
        done = self.completed
        output = sum(t.output_tokens for t in done)
        prompt = sum(t.prompt_tokens for t in done)
        rows = [
            ("requests completed / failed", f"{len(done)} / {len(self.traces) - len(done)}"),
            ("duration (s)", f"{self.duration_s:.2f}"),
            ("request throughput (req/s)", f"{len(done) / self.duration_s:.2f}"),
            ("output throughput (tok/s)", f"{output / self.duration_s:.1f}"),
            ("total throughput (tok/s)", f"{(prompt + output) / self.duration_s:.1f}"),
        ]
        for name, values in (("TTFT", self.ttfts()), ("TPOT", self.tpots()), ("ITL", self.itls())):
            if values:
                ms = [v * 1e3 for v in values]
                rows.append((f"{name} mean (ms)", f"{statistics.fmean(ms):.2f}"))
                rows.append((f"{name} median (ms)", f"{statistics.median(ms):.2f}"))
                rows.append((f"{name} p99 (ms)", f"{percentile(ms, 99):.2f}"))
        return rows

    def errors(self) -> list[str]:
        return sorted({t.error for t in self.traces if t.error})

    @property
    def title(self) -> str:
        c = self.config
        return (
            f"{c.target_name}: {c.num_prompts} requests, prompt {c.prompt_len} words, output "
            f"{c.output_len} tokens (jitter {c.len_jitter:g}), concurrency "
            f"{c.concurrency or 'unbounded'}, rate {c.request_rate or 'inf'}/s"
        )
