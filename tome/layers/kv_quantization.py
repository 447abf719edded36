"""KV-cache quantization: int8 and fp8 (e4m3) with one float32 scale per token and head.

A scale per token and head, rather than per tensor, keeps heads whose values are small from
being crushed to a few levels by a large neighbour. These functions are the reference the
GPU kernels are checked against; the torch attention backend calls them directly."""

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


def round_trip(x: torch.Tensor, dtype: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor:
    """x as a cache storing `dtype` gives it back when read as `out_dtype`."""
    if not is_quantized(dtype):
        return x.to(dtype).to(out_dtype)
    return dequantize(*quantize(x, dtype), out_dtype)
