"""Writes a step's new K/V rows into their paged-cache slots, quantizing on the way for an
int8 or fp8 cache (one float32 scale per token and head, of rows rotated as
tome/layers/kv_quantization.py defines them). One program stores every KV head of one
token's K or V, all in one launch."""

import torch
import triton
import triton.language as tl

from tome.kernels.cache_operands import scale_operands
from tome.layers.kv_quantization import QUANTIZED_MAX, SCALE_DTYPE, rotation
from tome.layers.layer_kv_cache import LayerKVCache

# Adding and subtracting 1.5 * 2**(23 + s) rounds a float32 below 2**(22 + s) in magnitude to a
# multiple of 2**s, ties to even: float32 addition itself does the rounding.
_ROUNDING_MAGIC = tl.constexpr(12582912.0)  # s = 0


@triton.jit
def _round_half_even(x):
    """To the nearest integer, as torch.round does (libdevice.rint has no interpreter version)."""
    return (x + _ROUNDING_MAGIC) - _ROUNDING_MAGIC


@triton.jit
def _round_to_e4m3(x):
    """x (float32, |x| <= 448) to the nearest float8 e4m3 value, ties to even, so that the cast
    after it is exact. The hardware cast rounds the same way; the interpreter's drops the
    carry into the exponent (7.9 becomes 4, not 8)."""
    exponent = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    # Three mantissa bits: steps of 2**(exponent - 3); below 2**-6 subnormal steps of 2**-9.
    step = tl.maximum(exponent, -6) - 3
    magic = (((step + 23 + 127) << 23) | (1 << 22)).to(tl.float32, bitcast=True)
    return (x + magic) - magic


@triton.jit
def _store_rows(
    new_ptr,  # this token's rows: [heads, head_dim] with head stride stride_new_head
    stride_new_head,
    cache_ptr,  # this slot in the cache: [heads, head_dim] with head stride stride_cache_head
    stride_cache_head,
    scale_ptr,  # this slot's scales: [heads], when QUANTIZED
    num_heads,
    head_dim,
    QUANTIZED: tl.constexpr,
    INTEGER: tl.constexpr,
    LIMIT: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < num_heads) & (dims[None, :] < head_dim)
    rows = tl.load(new_ptr + heads[:, None] * stride_new_head + dims[None, :], mask=mask, other=0)
    destination = cache_ptr + heads[:, None] * stride_cache_head + dims[None, :]
    if QUANTIZED:
        rows = rows.to(tl.float32)
        # Divisions rounded as torch's are (Triton's default float32 division is approximate).
        # An all-zero row gets scale 1, not 0: its values stay 0, nothing divides by 0.
        scale = tl.math.div_rn(tl.max(tl.abs(rows), axis=1), LIMIT)
        scale = tl.where(scale == 0.0, 1.0, scale)
        scaled = tl.math.div_rn(rows, scale[:, None])
        scaled = tl.minimum(tl.maximum(scaled, -LIMIT), LIMIT)
        scaled = _round_half_even(scaled) if INTEGER else _round_to_e4m3(scaled)
        tl.store(destination, scaled.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(scale_ptr + heads, scale, mask=heads < num_heads)
    else:
        tl.store(destination, rows.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [tokens, heads, head_dim]
    v_ptr,
    k_cache_ptr,  # [num_blocks, block_size, heads, head_dim]
    v_cache_ptr,
    k_scale_ptr,  # [num_blocks, block_size, heads] when QUANTIZED
    v_scale_ptr,
    slot_mapping_ptr,  # [tokens]
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_scale_block,
    stride_scale_token,
    block_size,
    num_heads,
    head_dim,
    QUANTIZED: tl.constexpr,
    INTEGER: tl.constexpr,  # int8 levels, else float8 e4m3
    LIMIT: tl.constexpr,  # the format's largest magnitude
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (token, 0) stores the token's K, (token, 1) its V: one launch for both."""
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot >= 0:  # a negative slot marks a padding token, which is not stored
        block = slot // block_size
        offset = slot % block_size
        cache_at = block * stride_cache_block + offset * stride_cache_token
        scale_at = block * stride_scale_block + offset * stride_scale_token
        if tl.program_id(1) == 0:
            new_rows, stride_new_head = k_ptr + token * stride_k_token, stride_k_head
            cache_ptr, scale_ptr = k_cache_ptr, k_scale_ptr
        else:
            new_rows, stride_new_head = v_ptr + token * stride_v_token, stride_v_head
            cache_ptr, scale_ptr = v_cache_ptr, v_scale_ptr
        _store_rows(
            new_rows,
            stride_new_head,
            cache_ptr + cache_at,
            stride_cache_head,
            scale_ptr + scale_at,
            num_heads,
            head_dim,
            QUANTIZED,
            INTEGER,
            LIMIT,
            BLOCK_H,
            BLOCK_D,
        )


def store_kv(
    cache: LayerKVCache, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store the new tokens' K/V ([tokens, kv_heads, head_dim]) in their cache slots, as
    tome.layers.torch_attention_backend.write_kv does; a negative slot is skipped."""
    num_tokens, num_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    quantized = cache.quantized
    if quantized:
        # The rotation is one small matmul over the new rows only; the kernel quantizes.
        matrix = rotation(head_dim, k.device)
        k, v = k.to(SCALE_DTYPE) @ matrix, v.to(SCALE_DTYPE) @ matrix
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    store = cache.k
    k_scale, v_scale, *scale_strides = scale_operands(cache)
    _store_kv_kernel[(num_tokens, 2)](
        k,
        v,
        cache.k,
        cache.v,
        k_scale,
        v_scale,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        store.stride(0),
        store.stride(1),
        store.stride(2),
        *scale_strides,
        store.shape[1],
        num_heads,
        head_dim,
        QUANTIZED=quantized,
        INTEGER=store.dtype == torch.int8,
        LIMIT=QUANTIZED_MAX.get(store.dtype, 1.0),
        BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=1 if num_heads * head_dim <= 1024 else 4,
    )
