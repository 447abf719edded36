"""Stores a step's new K/V rows in their paged-cache slots on the CPU with
cpu/kv_store.cpp: float32 and bfloat16 caches, and int8 ones quantized on the way (the
rows rotated by one torch matmul first, as the Triton store does). Every stored byte equals
what tome.layers.torch_attention_backend.write_kv stores; other cache dtypes stay there."""

import ctypes

import torch

from tome.kernels.cpu_kernels import KernelSource, load_declared
from tome.kernels.token_rows import with_contiguous_heads
from tome.layers.kv_quantization import SCALE_DTYPE, rotation
from tome.layers.layer_kv_cache import LayerKVCache

# The kernel's codes for the cache dtypes it stores (its StoreKind).
STORE_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}


_pointer, _size = ctypes.c_void_p, ctypes.c_int64
# Rounded as torch rounds, so built without -ffast-math.
KERNEL = KernelSource(
    "kv_store",
    {
        "tome_store_kv": (
            ctypes.c_int,
            [_pointer, _size, _pointer, _size, _pointer, _size, _size, _size, ctypes.c_int]
            + [_pointer] * 4,
        )
    },
    fast_math=False,
)


def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, its signature declared; None where it cannot be built."""
    return load_declared(KERNEL)


def supports_cache(cache: LayerKVCache) -> bool:
    return (
        cache.k.device.type == "cpu"
        and cache.k.dtype in STORE_KINDS
        and kernel_library() is not None
    )


def cpu_store_kv(
    cache: LayerKVCache, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store the new tokens' K/V ([tokens, kv_heads, head_dim]) in their cache slots, as
    write_kv does; slot_mapping [tokens] int64 on the host. A latent cache's one tensor
    is written once, from k."""
    vectors = [k] if cache.shares_kv else [k, v]
    if cache.quantized:
        vectors = list(torch.stack(vectors).to(SCALE_DTYPE) @ rotation(k.shape[-1], k.device))
    k, v = (with_contiguous_heads(x.to(torch.float32)) for x in (vectors[0], vectors[-1]))
    slots = slot_mapping.contiguous()
    status = kernel_library().tome_store_kv(
        k.data_ptr(),
        k.stride(0),
        v.data_ptr(),
        v.stride(0),
        slots.data_ptr(),
        k.shape[0],
        k.shape[1],
        k.shape[2],
        STORE_KINDS[cache.k.dtype],
        cache.k.data_ptr(),
        cache.v.data_ptr(),
        cache.k_scale.data_ptr() if cache.quantized else None,
        cache.v_scale.data_ptr() if cache.quantized else None,
    )
    if status != 0:
        raise RuntimeError(f"CPU KV store refused cache dtype {cache.k.dtype}")
