"""Triton kernels for the GPU attention path: paged decode ("flash decoding"), paged prefill
and the KV store, each checked against the PyTorch reference in tome/layers."""
