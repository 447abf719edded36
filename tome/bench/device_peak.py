"""What a device can do at best: memory bandwidth and dense matrix-product throughput.

The roofline divides a workload's bytes and FLOPs by these. Measured numbers are the honest
ones (the clocks, the memory and the library the run itself gets), so on a GPU the bench
measures them in its own process before the model loads; the presets are for reading a CPU
run against a GPU, and for checking a measurement.

Presets are what a large copy and a large bfloat16 product reach, not the datasheet:
- H100 SXM: 3.0 TB/s and 770 TFLOP/s, measured (0.90x the nominal 3.35 TB/s, 0.78x the
  nominal 989 dense TFLOP/s).
- H200: 4.3 TB/s and 790 TFLOP/s, measured on the lent H200s of this workplace (a 8.6 GB
  device copy, 8192^3 bfloat16 products on random data: 769-798 TFLOP/s). Against the
  nominal 4.8 TB/s and 989 TFLOP/s that is 0.90x and 0.80x, the H100's own ratios."""

import time
from dataclasses import dataclass

import torch

from tome.errors import InvalidRequestError

MATMUL_SIDE = {"cuda": 8192, "cpu": 1024}
COPY_BYTES = {"cuda": 2 * 2**30, "cpu": 256 * 2**20}
WARMUP = 3
REPEATS = 10


@dataclass(frozen=True)
class DevicePeak:
    name: str
    bandwidth: float  # bytes/s a large device copy moves, reads and writes counted
    flops: float  # FLOP/s of a large dense product in the model's dtype

    def describe(self) -> str:
        return f"{self.name}: {self.bandwidth / 1e12:.3g} TB/s, {self.flops / 1e12:.3g} TFLOP/s"


PRESETS = {
    "h100-sxm": DevicePeak("H100 SXM (preset)", bandwidth=3.0e12, flops=770e12),
    "h200": DevicePeak("H200 (preset)", bandwidth=4.3e12, flops=790e12),
}
MEASURE = "measure"


def check_peak_source(name: str) -> str:
    """`measure` or a preset's name; anything else is a one-line error."""
    if name != MEASURE and name not in PRESETS:
        raise InvalidRequestError(
            f"--roofline-peak must be {MEASURE} or one of {', '.join(PRESETS)}; got {name!r}"
        )
    return name


def measure_device_peak(device: torch.device, dtype: torch.dtype) -> DevicePeak:
    """Time a square product of `dtype` matrices and a large copy on `device`."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
    return DevicePeak(
        f"{name} (measured)", bandwidth=_copy_bandwidth(device), flops=_matmul_flops(device, dtype)
    )


def _matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    side = MATMUL_SIDE[device.type]
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    return 2 * side**3 / _seconds(lambda: torch.mm(a, b), device)


def _copy_bandwidth(device: torch.device) -> float:
    source = torch.ones(COPY_BYTES[device.type] // 4, device=device)
    target = torch.empty_like(source)
    return 2 * source.nbytes / _seconds(lambda: target.copy_(source), device)


def _seconds(work, device: torch.device) -> float:
    """Mean seconds of one `work()`, after warm-ups."""
    for _ in range(WARMUP):
        work()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(REPEATS):
        work()
    _synchronize(device)
    return (time.perf_counter() - start) / REPEATS


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
