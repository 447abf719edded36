"""Attention kernels, each checked against the PyTorch reference in tome/layers: Triton
kernels for the GPU path (paged decode or "flash decoding", paged prefill, sparse prefill
and the KV store) and a C++ decode kernel for the CPU (cpu/, built at first use)."""
