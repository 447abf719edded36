"""Weights kept in 8-bit floats (e4m3) with float32 scales over blocks, and the product by
them: FP8 checkpoints (DeepSeek-V3's 128 x 128 blocks, compressed-tensors' per-channel and
per-tensor scales) and `quantization="fp8"` keep one byte a weight in memory.

Every e4m3 value is exact in bfloat16 and float32, so a weight is computed as its value
times its block's scale in float32, then rounded once to the activations' dtype."""

from dataclasses import dataclass

import torch

FLOAT8 = torch.float8_e4m3fn


@dataclass
class Float8Weight:
    """W [n, k] = values * scales expanded: `values` float8_e4m3fn [n, k]; `scales` float32
    [n, ceil(k / block_k)], one scale per row and block of block_k columns (block_k = k:
    one per row). A checkpoint's block of rows (128 x 128 in DeepSeek-V3's) is held as its
    scale repeated on each row, so fused projections stack by rows like any other."""

    values: torch.Tensor
    scales: torch.Tensor
    block_k: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)


def concatenate_float8_rows(parts: list[Float8Weight]) -> Float8Weight:
    """The weights stacked along n (fused q/k/v or gate/up projections); one block_k."""
    return Float8Weight(
        torch.cat([p.values for p in parts]),
        torch.cat([p.scales for p in parts]),
        parts[0].block_k,
    )


def dequantize_float8(weight: Float8Weight, dtype: torch.dtype) -> torch.Tensor:
    """W as `dtype` [n, k]: each value times its scale in float32, rounded once."""
    n, k = weight.shape
    values = weight.values.to(torch.float32)
    if k % weight.block_k == 0:  # scales broadcast over whole blocks: no [n, k] copy of them
        blocks = values.view(n, k // weight.block_k, weight.block_k) * weight.scales[..., None]
        return blocks.view(n, k).to(dtype)
    scales = weight.scales.repeat_interleave(weight.block_k, dim=1)[:, :k]
    return (values * scales).to(dtype)


def float8_matmul(x: torch.Tensor, weight: Float8Weight) -> torch.Tensor:
    """x [..., k] times W^T: [..., n] in x's dtype. The weight is expanded for the call
    only, so it stays one byte a weight between calls."""
    return x @ dequantize_float8(weight, x.dtype).t()
