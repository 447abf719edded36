"""Decode attention over the paged KV cache with the C++ kernel of
cpu/paged_decode_attention.cpp: every decoding sequence's query in one call, each context
read in place from the pool. Its reference in the tests is SDPA in float64 over the context
as the torch backend reads it back."""

import ctypes
import math
from functools import cache

import torch

from tome.kernels.cache_operands import kernel_outputs, kernel_queries
from tome.kernels.cpu_kernels import KernelSource, load_declared
from tome.layers.layer_kv_cache import LayerKVCache

# The kernel's codes for the cache dtypes it reads (its CacheKind).
CACHE_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2, torch.float8_e4m3fn: 3}
# Work items per thread: enough that a long context keeps every thread busy to the end.
ITEMS_PER_THREAD = 2
# Fewest blocks a work item takes: below this, merging partial results costs more than
# the parallelism gains.
MIN_SPLIT_BLOCKS = 8


# The kernel's parameters, in order (see tome_paged_decode_attention).
KERNEL_ARGUMENTS = [
    ctypes.c_void_p,  # q
    ctypes.c_void_p,  # out
    *[ctypes.c_int] * 6,  # seqs, heads, kv heads, head_dim, block size, cache kind
    *[ctypes.c_void_p] * 5,  # k, v, k_scale, v_scale, fp8 table
    ctypes.c_void_p,  # block tables
    ctypes.c_int64,  # their row stride
    ctypes.c_void_p,  # context lens
    ctypes.c_float,  # scale
    ctypes.c_int,  # blocks per work item
]


KERNEL = KernelSource(
    "paged_decode_attention", {"tome_paged_decode_attention": (ctypes.c_int, KERNEL_ARGUMENTS)}
)


def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, its signature declared; None where it cannot be built."""
    return load_declared(KERNEL)


def unsupported_reason(device: torch.device, kv_dtype: torch.dtype) -> str | None:
    """Why the kernel cannot read a cache of `kv_dtype` on `device`, or None when it can."""
    if device.type != "cpu" or kv_dtype not in CACHE_KINDS:
        kinds = ", ".join(str(dtype).removeprefix("torch.") for dtype in CACHE_KINDS)
        return f"it reads only {kinds} caches on the CPU, not {kv_dtype} on {device.type}"
    if kernel_library() is None:
        return "it could not be built here (the warning logged above says why)"
    return None


def supports(device: torch.device, kv_dtype: torch.dtype) -> bool:
    return unsupported_reason(device, kv_dtype) is None


def cpu_decode_attention(
    q: torch.Tensor,
    cache: LayerKVCache,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    longest: int,
    scale: float,
) -> torch.Tensor:
    """q [seqs, heads, d], one query per sequence; block_tables [seqs, max_blocks] and
    context_lens [seqs], int64 on the host; `longest` the largest context. Returns
    [seqs, heads, d] in q's dtype. The kernel reads float32 queries whatever the cache
    stores."""
    query = kernel_queries(q, cache, torch.float32).contiguous()
    out = torch.empty_like(query)
    tables, lens = block_tables.contiguous(), context_lens.contiguous()
    _, block_size, kv_heads, head_dim = cache.k.shape
    status = kernel_library().tome_paged_decode_attention(
        query.data_ptr(),
        out.data_ptr(),
        q.shape[0],
        q.shape[1],
        kv_heads,
        head_dim,
        block_size,
        CACHE_KINDS[cache.k.dtype],
        cache.k.data_ptr(),
        cache.v.data_ptr(),
        cache.k_scale.data_ptr() if cache.quantized else None,
        cache.v_scale.data_ptr() if cache.quantized else None,
        _fp8_values().data_ptr(),
        tables.data_ptr(),
        tables.stride(0),
        lens.data_ptr(),
        scale,
        split_blocks(longest, block_size, q.shape[0]),
    )
    if status != 0:
        raise RuntimeError(f"CPU decode kernel refused cache dtype {cache.k.dtype}")
    return kernel_outputs(out, cache, q.dtype)


def split_blocks(longest: int, block_size: int, num_seqs: int) -> int:
    """Blocks per work item: the longest context cut so that there are ITEMS_PER_THREAD
    items per thread in all, but no item under MIN_SPLIT_BLOCKS blocks."""
    splits_per_seq = math.ceil(ITEMS_PER_THREAD * torch.get_num_threads() / num_seqs)
    return max(MIN_SPLIT_BLOCKS, math.ceil(math.ceil(longest / block_size) / splits_per_seq))


@cache
def _fp8_values() -> torch.Tensor:
    """Each fp8 (e4m3) byte's value as torch converts it: the kernel's lookup table."""
    return torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
