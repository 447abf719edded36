"""Each side runs in a fresh process, so its peak RSS is its own: weights, KV cache and
activations, with nothing left over from the other side."""

import resource
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import torch

from tome.bench.device_peak import measure_device_peak
from tome.bench.results import SideResult
from tome.bench.spec import ModelSpec
from tome.bench.workloads import Workload
from tome.errors import TomeError


def run_side_in_subprocess(
    side: str, model: ModelSpec, workload: Workload, measure_peak: bool = False
) -> SideResult:
    """Run one side ("tome" or "transformers") in a spawned process and return its result;
    with `measure_peak`, the device's bandwidth and FLOP/s are measured there first."""
    # spawn, not fork: a forked child would inherit the parent's memory and threads.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(run_side, side, model, workload, measure_peak).result()
        except BrokenProcessPool as exc:
            raise TomeError(f"the {side} run died (out of memory?)") from exc


def run_side(
    side: str, model: ModelSpec, workload: Workload, measure_peak: bool = False
) -> SideResult:
    # Before the model loads, and freed after: the measurement needs gigabytes of its own.
    peak = measure_device_peak(model.torch_device, model.torch_dtype) if measure_peak else None
    if model.torch_device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(model.torch_device)
    # Imported here: each process needs only its own side's code.
    if side == "tome":
        from tome.bench.engine_runner import run_engine as runner
    else:
        from tome.bench.hf_runner import run_hf as runner
    result = runner(model, workload)
    result.device_peak = peak
    # ru_maxrss is in KiB on Linux.
    result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if model.torch_device.type == "cuda":
        result.peak_gpu_bytes = torch.cuda.max_memory_allocated(model.torch_device)
    return result
