"""The speed targets from the issue, checked against a run's results.

Prefill at the longest prompt >= transformers; decode at batch 1 >= 1.5x transformers;
decode at batch 16 >= 8x our own batch 1; the decode targets after each prompt length."""

from dataclasses import dataclass

from tome.bench.results import RowKey, SideResult, decode_row, prefill_row, row_label
from tome.bench.workloads import Workload


@dataclass(frozen=True)
class Target:
    key: RowKey  # the row the target is about
    factor: float  # ours must reach factor x the baseline
    baseline: RowKey | None = None  # None: transformers on the same row; else one of ours

    def describe(self) -> str:
        if self.baseline is None:
            return f">= {self.factor:g}x transformers"
        return f">= {self.factor:g}x tome {row_label(self.baseline)}"

    def ratio(self, ours: SideResult, hf: SideResult | None) -> float | None:
        """What ours reached, as a multiple of the baseline; None if it was not measured."""
        value = ours.tokens_per_second(self.key)
        if self.baseline is None:
            base = hf.tokens_per_second(self.key) if hf else None
        else:
            base = ours.tokens_per_second(self.baseline)
        return value / base if value and base else None

    def verdict(self, ours: SideResult, hf: SideResult | None) -> str:
        ratio = self.ratio(ours, hf)
        if ratio is None:
            return f"{self.describe()}: not measured"
        return f"{self.describe()}: {'met' if ratio >= self.factor else 'MISSED'} ({ratio:.2f}x)"


def issue_targets(workload: Workload) -> list[Target]:
    """The targets this workload can check."""
    targets = [Target(prefill_row(max(workload.prefill_lengths)), 1.0)]
    if 1 not in workload.decode_batches:
        return targets
    for length in workload.decode_prompt_lens:
        targets.append(Target(decode_row(1, length), 1.5))
        if 16 in workload.decode_batches:
            targets.append(Target(decode_row(16, length), 8.0, baseline=decode_row(1, length)))
    return targets
