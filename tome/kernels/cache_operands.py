"""What every attention kernel's launcher does around its kernel for a cache that may be
quantized: the queries in the cache's compute dtype, rotated like the stored keys (so
(qR)·(kR) = q·k needs no rotation of K inside the kernel); the scale tensors and their
strides, or stand-ins the kernel never reads; and the outputs rotated back, since they are
sums of rotated values."""

import torch

from tome.layers.kv_quantization import SCALE_DTYPE, rotation
from tome.layers.layer_kv_cache import LayerKVCache


def kernel_queries(
    q: torch.Tensor, cache: LayerKVCache, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """q [..., head_dim] as the kernels read it: in `dtype` (by default the cache's compute
    dtype), rotated for a quantized cache, unit stride along head_dim."""
    dtype = dtype or cache.compute_dtype
    if cache.quantized:
        query = (q.to(SCALE_DTYPE) @ rotation(q.shape[-1], q.device)).to(dtype)
    else:
        query = q.to(dtype)
    return query if query.stride(-1) == 1 else query.contiguous()


def scale_operands(cache: LayerKVCache) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """K scales, V scales and their block and token strides; K and V themselves and zero
    strides for a cache without scales (the kernels' QUANTIZED=False never reads them)."""
    if not cache.quantized:
        return cache.k, cache.v, 0, 0
    return cache.k_scale, cache.v_scale, cache.k_scale.stride(0), cache.k_scale.stride(1)


def kernel_outputs(out: torch.Tensor, cache: LayerKVCache, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's outputs rotated back for a quantized cache, as `dtype`."""
    if cache.quantized:
        out = out.to(SCALE_DTYPE) @ rotation(out.shape[-1], out.device).T
    return out.to(dtype)
