"""The layout the CPU and Triton kernels over [tokens, heads, head_dim] rows read: each
token's heads side by side, tokens any stride apart. A view of a fused q/k/v projection's
rows has it (tokens apart by the whole row), so the kernels take such views without a copy."""

import torch


def with_contiguous_heads(x: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, head_dim] itself where it has that layout, else a contiguous copy."""
    if x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        return x.contiguous()
    return x
