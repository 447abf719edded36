"""Host memory for the CPU engine: the KV pool's zeroed buffers (tome/kernels/host_pages.py)
and glibc's malloc keeping freed blocks (tome/engine/host_allocator.py), checked through
what the process sees: contents, RSS and page faults."""

import platform
import subprocess
import sys

import psutil
import pytest
import torch

from tome.kernels.host_pages import zeroed_host_buffer

MB = 2**20


def test_a_zeroed_buffer_is_zeros_and_writable():
    buffer = zeroed_host_buffer(3 * MB + 5)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 3 * MB + 5
    assert int(buffer.count_nonzero()) == 0
    floats = buffer[: 3 * MB].view(torch.float32)
    floats[::1000] = 1.5
    assert float(floats.sum()) == 1.5 * len(range(0, floats.numel(), 1000))
    assert zeroed_host_buffer(0).numel() == 0


def test_a_large_buffer_costs_memory_only_where_written():
    rss = psutil.Process().memory_info().rss
    buffer = zeroed_host_buffer(2048 * MB)
    assert psutil.Process().memory_info().rss - rss < 64 * MB
    buffer[: 8 * MB].fill_(1)
    assert int(buffer[8 * MB - 1]) == 1 and int(buffer[8 * MB]) == 0


# In a fresh process: how far the heap can grow in place depends on what else the
# process has mapped above it.
REUSE_SCRIPT = """
import resource, torch
from tome.engine.host_allocator import keep_freed_memory
assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # 100 MB each, freed at once
    torch.ones(25 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_large_blocks_are_reused_without_page_faults():
    result = subprocess.run(
        [sys.executable, "-c", REUSE_SCRIPT], capture_output=True, text=True, check=True
    )
    # A fresh 100 MB block faults in 25,600 pages of 4 KiB: glibc's default unmaps and
    # maps it again each time (10 x 25,600). Kept, the heap grows to hold the block in
    # one to three steps (depending on where the address-space layout put what is mapped
    # above it) and then reuses it.
    assert int(result.stdout) < 4 * 25_600
