"""KV-cache quantization: int8 and fp8 (e4m3) with one float32 scale per token and head,
of K and V rotated by a fixed orthogonal matrix.

A scale per token and head, rather than per tensor, keeps heads whose values are small from
being crushed to a few levels by a large neighbour. The rotation (a Hadamard matrix, as in
QuaRot) spreads the few outlier channels real models' keys carry over all channels, so a
row's max abs, which sets its scale, is no longer many times its typical value. These
functions are the reference the GPU kernels are checked against; the torch attention
backend calls them directly."""

from functools import cache

import torch

SCALE_DTYPE = torch.float32
# The largest magnitude each quantized format stores: a token-head's max abs maps onto it.
QUANTIZED_MAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def is_quantized(dtype: torch.dtype) -> bool:
    return dtype in QUANTIZED_MAX


def scale_bytes_per_token_head(dtype: torch.dtype) -> int:
    return SCALE_DTYPE.itemsize if is_quantized(dtype) else 0


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., head_dim] -> (values in `dtype` [..., head_dim], scales [...]) such that
    dequantize(values, scales) ~ x: each row's max abs maps onto the format's largest value."""
    limit = QUANTIZED_MAX[dtype]
    x = x.to(SCALE_DTYPE)
    # An all-zero row gets scale 1, not 0: its values stay 0 and nothing divides by zero.
    scale = x.abs().amax(dim=-1) / limit
    scale.masked_fill_(scale == 0, 1.0)
    scaled = (x / scale[..., None]).clamp_(-limit, limit)
    if dtype == torch.int8:
        scaled.round_()
    return scaled.to(dtype), scale


def dequantize(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """values [..., head_dim] and scales [...] -> floats of `dtype` [..., head_dim]."""
    floats = values.to(SCALE_DTYPE)
    # In place: reading a long context should cost one float copy of it, not two.
    return floats.mul_(scale[..., None]).to(dtype)


@cache
def rotation(head_dim: int, device: torch.device) -> torch.Tensor:
    """An orthogonal [head_dim, head_dim] float32 matrix: the normalized Hadamard matrix
    (Sylvester's construction) for powers of two, else a fixed random orthogonal one."""
    if head_dim & (head_dim - 1) == 0:
        matrix = torch.ones(1, 1)
        while matrix.shape[0] < head_dim:
            matrix = torch.cat((torch.cat((matrix, matrix), 1), torch.cat((matrix, -matrix), 1)))
        matrix = matrix / head_dim**0.5
    else:
        gaussian = torch.randn(head_dim, head_dim, generator=torch.Generator().manual_seed(0))
        matrix = torch.linalg.qr(gaussian).Q
    return matrix.to(device)


def quantize_for_cache(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """K or V rows as a quantized cache stores them: rotated, then quantized."""
    rotated = x.to(SCALE_DTYPE) @ rotation(x.shape[-1], x.device)
    return quantize(rotated, dtype)


def dequantize_from_cache(
    values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The rows quantize_for_cache stored, rotated back, as floats of `dtype`."""
    rotated = dequantize(values, scale, SCALE_DTYPE)
    return (rotated @ rotation(values.shape[-1], values.device).T).to(dtype)


def round_trip(x: torch.Tensor, dtype: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor:
    """x as a cache storing `dtype` gives it back when read as `out_dtype`."""
    if not is_quantized(dtype):
        return x.to(dtype).to(out_dtype)
    return dequantize_from_cache(*quantize_for_cache(x, dtype), out_dtype)
