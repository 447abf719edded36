"""Paged attention for prefill chunks, flash-attention style: a chunk's queries are the last
tokens of their sequence's context, and each attends causally to the context up to its own
position, read through the block table. Chunks of any lengths share one launch.

One program takes a tile of a chunk's queries, every head of one KV head's GQA group (so
each K/V tile is read once for the group), and walks the context BLOCK_N keys at a time
with an online softmax: no score matrix larger than BLOCK_M x BLOCK_N ever exists, however
long the prefix, and only the tiles on the diagonal pay for the causal mask. int8/fp8
caches are handled as in decode: scales applied in-kernel, queries rotated before and
outputs rotated back after, in torch."""

import torch
import triton
import triton.language as tl

from tome.kernels.cache_operands import kernel_outputs, kernel_queries, scale_operands
from tome.kernels.dot_dtype import dot_dtype, dot_precision
from tome.kernels.paged_tile import attend_tile
from tome.layers.layer_kv_cache import LayerKVCache

LOG2_E = 1.4426950408889634
DEFAULT_BLOCK_M = 64
DEFAULT_BLOCK_N = 64


@triton.jit
def _prefill_kernel(
    q_ptr,  # [tokens, heads, head_dim], token 0 being the batch's token `token_offset`
    out_ptr,  # like q
    k_cache_ptr,  # [num_blocks, block_size, kv_heads, head_dim]
    v_cache_ptr,
    k_scale_ptr,  # [num_blocks, block_size, kv_heads] when QUANTIZED
    v_scale_ptr,
    block_tables_ptr,  # [seqs, max_blocks]
    query_start_loc_ptr,  # [seqs + 1] cumulative query lengths of the whole batch
    context_lens_ptr,  # [seqs]
    seq_ids_ptr,  # [chunks] the batch's sequences to attend for
    token_offset,
    qk_scale,  # softmax scale times log2(e)
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_scale_block,
    stride_scale_token,
    stride_table_seq,
    block_size,
    group_size,
    head_dim,
    BLOCK_M: tl.constexpr,  # rows: BLOCK_M // group_size tokens times their group's heads
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,  # what tl.dot multiplies: the compute dtype (see dot_dtype.py)
    PRECISION: tl.constexpr,  # "ieee" for float32 products exact, not TF32; else None
):
    seq = tl.load(seq_ids_ptr + tl.program_id(0)).to(tl.int64)
    tokens_per_tile = BLOCK_M // group_size
    first_token = tl.program_id(1) * tokens_per_tile
    kv_head = tl.program_id(2)
    query_start = tl.load(query_start_loc_ptr + seq) - token_offset
    query_len = tl.load(query_start_loc_ptr + seq + 1) - token_offset - query_start
    if first_token < query_len:
        context_len = tl.load(context_lens_ptr + seq)
        prefix_len = context_len - query_len
        # Row r is query token first_token + r // group_size at head r % group_size of the
        # KV head's group: the whole group reads each K/V tile once.
        rows = tl.arange(0, BLOCK_M)
        tokens = first_token + rows // group_size
        row_mask = (rows < tokens_per_tile * group_size) & (tokens < query_len)
        heads = kv_head * group_size + rows % group_size
        positions = prefix_len + tokens  # each query's place in its context
        dims = tl.arange(0, BLOCK_D)
        dim_mask = dims < head_dim
        tokens_at = (query_start + tokens).to(tl.int64)
        q_mask = row_mask[:, None] & dim_mask[None, :]
        q_rows = q_ptr + tokens_at[:, None] * stride_q_token + heads[:, None] * stride_q_head
        q = tl.load(q_rows + dims[None, :], mask=q_mask, other=0.0).to(DOT_DTYPE)
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        denominator = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        table = block_tables_ptr + seq * stride_table_seq
        k_head = k_cache_ptr + kv_head * stride_cache_head
        v_head = v_cache_ptr + kv_head * stride_cache_head
        # Keys before the tile's first query are seen by every row: no causal mask there.
        unmasked_end = (prefix_len + first_token) // BLOCK_N * BLOCK_N
        # Keys past the tile's last query are seen by no row.
        end = tl.minimum(prefix_len + first_token + tokens_per_tile, context_len)
        for first in range(0, unmasked_end, BLOCK_N):
            acc, row_max, denominator = attend_tile(
                q,
                acc,
                row_max,
                denominator,
                first,
                unmasked_end,
                positions,
                table,
                k_head,
                v_head,
                k_scale_ptr + kv_head,
                v_scale_ptr + kv_head,
                dims,
                dim_mask,
                qk_scale,
                block_size,
                stride_cache_block,
                stride_cache_token,
                stride_scale_block,
                stride_scale_token,
                BLOCK_N,
                False,
                QUANTIZED,
                DOT_DTYPE,
                PRECISION,
            )
        for first in range(unmasked_end, end, BLOCK_N):
            acc, row_max, denominator = attend_tile(
                q,
                acc,
                row_max,
                denominator,
                first,
                end,
                positions,
                table,
                k_head,
                v_head,
                k_scale_ptr + kv_head,
                v_scale_ptr + kv_head,
                dims,
                dim_mask,
                qk_scale,
                block_size,
                stride_cache_block,
                stride_cache_token,
                stride_scale_block,
                stride_scale_token,
                BLOCK_N,
                True,
                QUANTIZED,
                DOT_DTYPE,
                PRECISION,
            )
        acc = acc / denominator[:, None]
        out_rows = (
            out_ptr + tokens_at[:, None] * stride_out_token + heads[:, None] * stride_out_head
        )
        tl.store(out_rows + dims[None, :], acc.to(out_ptr.dtype.element_ty), mask=q_mask)


def paged_prefill_attention(
    q: torch.Tensor,
    cache: LayerKVCache,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    seq_ids: torch.Tensor,
    token_offset: int,
    max_query_len: int,
    scale: float,
    block_m: int = DEFAULT_BLOCK_M,
    block_n: int = DEFAULT_BLOCK_N,
) -> torch.Tensor:
    """Causal attention of the prefill chunks of sequences `seq_ids` over their cached
    contexts (their own K/V already stored). q [tokens, heads, head_dim] holds the batch's
    tokens from `token_offset` on (query_start_loc counts from the batch's first token).
    Returns q's shape and dtype; rows of sequences not in `seq_ids` are left unwritten."""
    _, num_heads, head_dim = q.shape
    compute_dtype = cache.compute_dtype
    out = torch.empty(q.shape, dtype=compute_dtype, device=q.device)
    if len(seq_ids) == 0:
        return out.to(q.dtype)
    query = kernel_queries(q, cache)
    k_scale, v_scale, *scale_strides = scale_operands(cache)
    num_kv_heads = cache.k.shape[2]
    group_size = num_heads // num_kv_heads
    # Rows for the whole GQA group of at least one token, and no more than the chunks need.
    wanted_rows = triton.next_power_of_2(max_query_len * group_size)
    block_m = max(16, triton.next_power_of_2(group_size), min(block_m, wanted_rows))
    tokens_per_tile = block_m // group_size
    grid = (len(seq_ids), triton.cdiv(max_query_len, tokens_per_tile), num_kv_heads)
    _prefill_kernel[grid](
        query,
        out,
        cache.k,
        cache.v,
        k_scale,
        v_scale,
        block_tables,
        query_start_loc,
        context_lens,
        seq_ids,
        token_offset,
        scale * LOG2_E,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        cache.k.stride(0),
        cache.k.stride(1),
        cache.k.stride(2),
        *scale_strides,
        block_tables.stride(0),
        cache.k.shape[1],
        group_size,
        head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=triton.next_power_of_2(head_dim),
        QUANTIZED=cache.quantized,
        DOT_DTYPE=dot_dtype(compute_dtype),
        PRECISION=dot_precision(compute_dtype),
        num_warps=4 if head_dim <= 64 else 8,
        num_stages=2,
    )
    return kernel_outputs(out, cache, q.dtype)
