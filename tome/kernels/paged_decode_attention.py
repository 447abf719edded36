"""Paged attention for decode ("flash decoding"): one query token per sequence against its
whole cached context, read through the block table.

A long context is split into partitions of `partition_size` tokens; one program attends
one sequence's KV head over one partition (all the query heads that share that KV head at
once, GQA), and a second kernel merges the partitions' results by their log-sum-exp. A
single sequence with a million-token context thus keeps every SM busy, where one program
per sequence and head would leave most of the GPU idle.

int8/fp8 caches are read with their per-token-head scales applied inside the kernel. Their
rows are stored rotated (k R, v R with R orthogonal), so the caller passes the query
rotated (q R . k R = q . k) and rotates the output back (sum p v R, times R^T):
`paged_decode_attention` does both around the kernels."""

from functools import cache

import torch
import triton
import triton.language as tl

from tome.kernels.cache_operands import kernel_outputs, kernel_queries, scale_operands
from tome.kernels.dot_dtype import dot_dtype, dot_precision
from tome.kernels.paged_tile import attend_tile
from tome.layers.layer_kv_cache import LayerKVCache

LOG2_E = 1.4426950408889634
MAX_PARTITION_SIZE = 512  # tokens: long enough to hide a partition's fixed cost
MIN_PARTITION_SIZE = 128  # shorter ones would cost more to merge than they save
PROGRAMS_PER_SM = 4  # enough programs in flight to keep every SM reading memory
DEFAULT_BLOCK_N = 64  # context tokens per step within a partition
MIN_BLOCK_H = 16  # tl.dot needs 16 rows: a small GQA group is padded up to it


@triton.jit
def _decode_partition_kernel(
    q_ptr,  # [seqs, heads, head_dim]
    k_cache_ptr,  # [num_blocks, block_size, kv_heads, head_dim]
    v_cache_ptr,
    k_scale_ptr,  # [num_blocks, block_size, kv_heads] when QUANTIZED
    v_scale_ptr,
    block_tables_ptr,  # [seqs, max_blocks]
    context_lens_ptr,  # [seqs]
    out_ptr,  # [seqs, heads, head_dim], written directly when there is one partition
    partial_out_ptr,  # [seqs, heads, partitions, head_dim] float32
    partial_lse_ptr,  # [seqs, heads, partitions] float32, log2 domain
    qk_scale,  # softmax scale times log2(e): the kernel works in powers of two
    stride_q_seq,
    stride_q_head,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_scale_block,
    stride_scale_token,
    stride_table_seq,
    stride_out_seq,
    stride_out_head,
    num_partitions,
    block_size,
    group_size,
    head_dim,
    PARTITION_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,  # what tl.dot multiplies: the compute dtype (see dot_dtype.py)
    PRECISION: tl.constexpr,  # "ieee" for float32 products exact, not TF32; else None
    DIRECT: tl.constexpr,  # one partition: write the output, no merge needed
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    partition = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    start = partition * PARTITION_SIZE
    if start < context_len:
        end = tl.minimum(start + PARTITION_SIZE, context_len)
        rows = tl.arange(0, BLOCK_H)
        dims = tl.arange(0, BLOCK_D)
        heads = kv_head * group_size + rows
        row_mask = rows < group_size
        dim_mask = dims < head_dim
        q = tl.load(
            q_ptr + seq * stride_q_seq + heads[:, None] * stride_q_head + dims[None, :],
            mask=row_mask[:, None] & dim_mask[None, :],
            other=0.0,
        ).to(DOT_DTYPE)
        row_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
        denominator = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        table = block_tables_ptr + seq.to(tl.int64) * stride_table_seq
        for first in range(start, end, BLOCK_N):
            acc, row_max, denominator = attend_tile(
                q,
                acc,
                row_max,
                denominator,
                first,
                end,
                rows,  # no causal mask: a decode token sees its whole context
                table,
                k_cache_ptr + kv_head * stride_cache_head,
                v_cache_ptr + kv_head * stride_cache_head,
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
        acc = acc / denominator[:, None]
        if DIRECT:
            out = out_ptr + seq * stride_out_seq + heads[:, None] * stride_out_head + dims[None, :]
            out_mask = row_mask[:, None] & dim_mask[None, :]
            tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
        else:
            at = (seq * tl.num_programs(1) * group_size + heads).to(tl.int64)
            at = at * num_partitions + partition
            partial = partial_out_ptr + at[:, None] * BLOCK_D + dims[None, :]
            tl.store(partial, acc, mask=row_mask[:, None])
            tl.store(partial_lse_ptr + at, row_max + tl.log2(denominator), mask=row_mask)


@triton.jit
def _merge_partitions_kernel(
    out_ptr,  # [seqs, heads, head_dim]
    partial_out_ptr,  # [seqs, heads, partitions, BLOCK_D] float32
    partial_lse_ptr,  # [seqs, heads, partitions] float32, log2 domain
    context_lens_ptr,
    stride_out_seq,
    stride_out_head,
    num_heads,
    num_partitions,
    head_dim,
    PARTITION_SIZE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Each partition's output weighed by its share of the softmax denominator."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    used = tl.cdiv(tl.load(context_lens_ptr + seq), PARTITION_SIZE)
    dims = tl.arange(0, BLOCK_D)
    base = (seq * num_heads + head).to(tl.int64) * num_partitions
    m = tl.full([1], float("-inf"), tl.float32)
    weight_sum = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for first in range(0, used, BLOCK_P):
        partitions = first + tl.arange(0, BLOCK_P)
        mask = partitions < used
        lse = tl.load(partial_lse_ptr + base + partitions, mask=mask, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        alpha = tl.exp2(m - m_new)
        weights = tl.exp2(lse - m_new)
        outs = tl.load(
            partial_out_ptr + (base + partitions)[:, None] * BLOCK_D + dims[None, :],
            mask=mask[:, None],
            other=0.0,
        )
        acc = acc * alpha + tl.sum(weights[:, None] * outs, axis=0)
        weight_sum = weight_sum * alpha + tl.sum(weights, axis=0)
        m = m_new
    out = out_ptr + seq * stride_out_seq + head * stride_out_head + dims
    tl.store(out, (acc / weight_sum).to(out_ptr.dtype.element_ty), mask=dims < head_dim)


def paged_decode_attention(
    q: torch.Tensor,
    cache: LayerKVCache,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    max_context_len: int,
    scale: float,
    partition_size: int | None = None,
    block_n: int = DEFAULT_BLOCK_N,
) -> torch.Tensor:
    """q [seqs, heads, head_dim], one query token per sequence, attends to the first
    context_lens[i] tokens of sequence i's blocks; returns [seqs, heads, head_dim] in q's
    dtype. `max_context_len` (known on the host) sizes the partitioning without a sync;
    `partition_size` defaults to choose_partition_size's."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = cache.k.shape[2]
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    compute_dtype = cache.compute_dtype
    query = kernel_queries(q, cache)
    if cache.quantized:
        out = torch.empty(q.shape, dtype=compute_dtype, device=q.device)
    if partition_size is None:
        partition_size = choose_partition_size(num_seqs * num_kv_heads, max_context_len, q.device)
    block_n = min(block_n, partition_size, triton.next_power_of_2(max_context_len))
    block_n = max(block_n, 16)  # tl.dot's smallest tile
    partition_size = max(partition_size, block_n)
    num_partitions = triton.cdiv(max_context_len, partition_size)
    block_d = triton.next_power_of_2(head_dim)
    group_size = num_heads // num_kv_heads
    partial_out = partial_lse = out
    if num_partitions > 1:
        partial_out = torch.empty(
            num_seqs, num_heads, num_partitions, block_d, dtype=torch.float32, device=q.device
        )
        partial_lse = torch.empty(
            num_seqs, num_heads, num_partitions, dtype=torch.float32, device=q.device
        )
    k_scale, v_scale, *scale_strides = scale_operands(cache)
    _decode_partition_kernel[(num_seqs, num_kv_heads, num_partitions)](
        query,
        cache.k,
        cache.v,
        k_scale,
        v_scale,
        block_tables,
        context_lens,
        out,
        partial_out,
        partial_lse,
        scale * LOG2_E,
        query.stride(0),
        query.stride(1),
        cache.k.stride(0),
        cache.k.stride(1),
        cache.k.stride(2),
        *scale_strides,
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        num_partitions,
        cache.k.shape[1],
        group_size,
        head_dim,
        PARTITION_SIZE=partition_size,
        BLOCK_N=block_n,
        BLOCK_H=max(MIN_BLOCK_H, triton.next_power_of_2(group_size)),
        BLOCK_D=block_d,
        QUANTIZED=cache.quantized,
        DOT_DTYPE=dot_dtype(compute_dtype),
        PRECISION=dot_precision(compute_dtype),
        DIRECT=num_partitions == 1,
        num_warps=4,
        num_stages=2,
    )
    if num_partitions > 1:
        _merge_partitions(out, partial_out, partial_lse, context_lens, partition_size)
    return kernel_outputs(out, cache, q.dtype)


def _merge_partitions(
    out: torch.Tensor,
    partial_out: torch.Tensor,
    partial_lse: torch.Tensor,
    context_lens: torch.Tensor,
    partition_size: int,
) -> None:
    num_seqs, num_heads, num_partitions, block_d = partial_out.shape
    _merge_partitions_kernel[(num_seqs, num_heads)](
        out,
        partial_out,
        partial_lse,
        context_lens,
        out.stride(0),
        out.stride(1),
        num_heads,
        num_partitions,
        out.shape[-1],
        PARTITION_SIZE=partition_size,
        BLOCK_P=min(32, triton.next_power_of_2(num_partitions)),
        BLOCK_D=block_d,
        num_warps=4 if block_d >= 128 else 2,
    )


def choose_partition_size(
    num_heads_to_read: int, max_context_len: int, device: torch.device
) -> int:
    """The longest partition (up to MAX_PARTITION_SIZE tokens) that still gives every SM
    PROGRAMS_PER_SM programs: a few sequences with long contexts are split finely, a large
    batch hardly at all."""
    if device.type != "cuda":
        return MAX_PARTITION_SIZE
    wanted = PROGRAMS_PER_SM * _sm_count(device)
    size = MAX_PARTITION_SIZE
    while (
        size > MIN_PARTITION_SIZE
        and num_heads_to_read * triton.cdiv(max_context_len, size) < wanted
    ):
        size //= 2
    return size


@cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count
