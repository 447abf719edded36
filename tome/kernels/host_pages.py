"""Large zeroed host buffers straight from the OS: a private anonymous mapping, whose pages
are mapped (and counted in RSS) only when first written.

The CPU KV pool lives in one: a multi-GiB pool costs nothing until used (torch.zeros would
write every byte first). It must not come from malloc: host_allocator.py makes the heap the
home of every large allocation, and an 8,191-token prefill ran 15% slower with the pool
calloc'd onto the heap than with it mapped apart (one-off runs, 2026-12-02). Transparent
huge pages for the pool (madvise) measured as slow as the heap there, so it keeps 4 KiB
pages."""

import mmap

import torch


def zeroed_host_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of `nbytes` zeros."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    size = max(nbytes, 1)
    region = mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)
    # The tensor holds a reference to the mapping: it lives as long as the tensor does.
    return torch.frombuffer(region, dtype=torch.uint8)[:nbytes]
