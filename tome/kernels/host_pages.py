"""Large host buffers in transparent huge pages: zero-filled anonymous memory the kernel
backs with 2 MiB pages (madvise(MADV_HUGEPAGE)) where Linux offers them, 4 KiB pages
elsewhere.

Two costs of 4 KiB pages weigh on a long-context CPU engine. A KV pool is touched first
while a prompt is prefilled, and each first touch of a page faults: in this VM, 8,191
tokens of SmolLM2's KV (377 MB) took 1.3 s of page faults, 9% of the prefill. And a decode
step reads gigabytes of KV a page at a time, a TLB miss every 4 KiB. With huge pages the
faults are 512x fewer and decode attention took 8-11% less time (one-off measurements,
2026-12-02; the block-quantized weights, 111 MB, showed no difference)."""

import contextlib
import mmap

import torch


def zeroed_host_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of `nbytes` zeros, its pages mapped (and counted in RSS) only when
    first written."""
    region = mmap.mmap(-1, max(nbytes, 1))
    if hasattr(mmap, "MADV_HUGEPAGE"):
        # A kernel built without transparent huge pages refuses: small ones serve.
        with contextlib.suppress(OSError):
            region.madvise(mmap.MADV_HUGEPAGE)
    # The tensor holds a reference to the mapping: it lives as long as the tensor does.
    return torch.frombuffer(region, dtype=torch.uint8)[:nbytes]
