"""Vertical-slash sparse prefill attention over the paged KV cache: the pattern of
tome/layers/sparse_prefill.py, its reference, with the same kept keys. Each query attends
to the keys before it that are in one of its head's kept columns or at one of its head's
kept distances.

One program takes a tile of BLOCK_M queries of one query head and reads its KV head in the
cache in place (GQA without copies). As in MInference's vertical-slash kernel, the tile's
work has two parts that never count a key twice:
- key ranges: a kept distance d puts keys a - d .. b - d under the tile's positions a..b;
  those spans, merged where they overlap or touch, are walked BLOCK_N keys at a time with
  the exact mask, causal and (distance kept or column kept);
- columns: the kept columns outside every range, gathered BLOCK_N at a time, causal only.
The ranges and column lists come from torch ops on the device, for all tiles at once. The
online softmax, and the scales, rotation and dot dtypes of quantized caches, are those of
the dense kernels (paged_prefill_attention.py)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from tome.kernels.cache_operands import kernel_outputs, kernel_queries, scale_operands
from tome.kernels.dot_dtype import dot_dtype, dot_precision
from tome.kernels.paged_tile import attend_keys
from tome.layers.kv_quantization import dequantize_from_cache
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.sparse_prefill import SparsePrefillConfig, estimate_pattern

LOG2_E = 1.4426950408889634
DEFAULT_BLOCK_M = 64
DEFAULT_BLOCK_N = 64


@triton.jit
def _sparse_prefill_kernel(
    q_ptr,  # [queries, heads, head_dim]: the last queries of the context
    out_ptr,  # like q
    k_cache_ptr,  # [num_blocks, block_size, kv_heads, head_dim]
    v_cache_ptr,
    k_scale_ptr,  # [num_blocks, block_size, kv_heads] when QUANTIZED
    v_scale_ptr,
    table_ptr,  # [max_blocks] the sequence's block table
    columns_ptr,  # [heads, context] uint8: key columns kept
    distances_ptr,  # [heads, context] uint8: query - key distances kept
    range_starts_ptr,  # [heads, tiles, max_ranges] int32: first key of each range
    range_ends_ptr,  # [heads, tiles, max_ranges] int32: past its last key
    range_counts_ptr,  # [heads, tiles] int32
    column_keys_ptr,  # [heads, tiles, max_columns] int32: kept columns outside the ranges
    column_counts_ptr,  # [heads, tiles] int32
    num_queries,
    first_position,  # the first query's context position
    num_tiles,
    max_ranges,
    max_columns,
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
    stride_pattern_head,
    block_size,
    group_size,
    head_dim,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    kv_head = head // group_size
    tokens = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = tokens < num_queries
    positions = first_position + tokens
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    q_mask = row_mask[:, None] & dim_mask[None, :]
    q_rows = q_ptr + tokens.to(tl.int64)[:, None] * stride_q_token + head * stride_q_head
    q = tl.load(q_rows + dims[None, :], mask=q_mask, other=0.0).to(DOT_DTYPE)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denominator = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_head = k_cache_ptr + kv_head * stride_cache_head
    v_head = v_cache_ptr + kv_head * stride_cache_head
    k_scales = k_scale_ptr + kv_head
    v_scales = v_scale_ptr + kv_head
    columns = columns_ptr + head * stride_pattern_head
    distances = distances_ptr + head * stride_pattern_head
    tile_at = head * num_tiles + tile
    ranges = tl.load(range_counts_ptr + tile_at)
    for r in range(ranges):
        start = tl.load(range_starts_ptr + tile_at * max_ranges + r)
        end = tl.load(range_ends_ptr + tile_at * max_ranges + r)
        for first in range(start, end, BLOCK_N):
            keys = first + tl.arange(0, BLOCK_N)
            key_mask = keys < end
            distance = positions[:, None] - keys[None, :]
            causal = row_mask[:, None] & key_mask[None, :] & (distance >= 0)
            kept_distance = tl.load(distances + distance, mask=causal, other=0) != 0
            kept_column = tl.load(columns + keys, mask=key_mask, other=0) != 0
            visible = causal & (kept_distance | kept_column[None, :])
            acc, row_max, denominator = attend_keys(
                q,
                acc,
                row_max,
                denominator,
                keys,
                key_mask,
                visible,
                table_ptr,
                k_head,
                v_head,
                k_scales,
                v_scales,
                dims,
                dim_mask,
                qk_scale,
                block_size,
                stride_cache_block,
                stride_cache_token,
                stride_scale_block,
                stride_scale_token,
                QUANTIZED,
                DOT_DTYPE,
                PRECISION,
            )
    column_count = tl.load(column_counts_ptr + tile_at)
    for first in range(0, column_count, BLOCK_N):
        slots = first + tl.arange(0, BLOCK_N)
        key_mask = slots < column_count
        keys = tl.load(column_keys_ptr + tile_at * max_columns + slots, mask=key_mask, other=0)
        visible = row_mask[:, None] & key_mask[None, :] & (keys[None, :] <= positions[:, None])
        acc, row_max, denominator = attend_keys(
            q,
            acc,
            row_max,
            denominator,
            keys,
            key_mask,
            visible,
            table_ptr,
            k_head,
            v_head,
            k_scales,
            v_scales,
            dims,
            dim_mask,
            qk_scale,
            block_size,
            stride_cache_block,
            stride_cache_token,
            stride_scale_block,
            stride_scale_token,
            QUANTIZED,
            DOT_DTYPE,
            PRECISION,
        )
    # Every real row keeps distance 0, its own key; padding rows saw nothing.
    acc = acc / tl.where(row_mask, denominator, 1.0)[:, None]
    out_rows = out_ptr + tokens.to(tl.int64)[:, None] * stride_out_token + head * stride_out_head
    tl.store(out_rows + dims[None, :], acc.to(out_ptr.dtype.element_ty), mask=q_mask)


@dataclass
class SparseTiles:
    """Per query head and tile of block_m queries, the work of _sparse_prefill_kernel."""

    range_starts: torch.Tensor  # [heads, tiles, max_ranges] int32, ascending
    range_ends: torch.Tensor  # [heads, tiles, max_ranges] int32, exclusive
    range_counts: torch.Tensor  # [heads, tiles] int32
    column_keys: torch.Tensor  # [heads, tiles, max_columns] int32, ascending
    column_counts: torch.Tensor  # [heads, tiles] int32


def sparse_tiles(
    columns: torch.Tensor,
    distances: torch.Tensor,
    num_queries: int,
    block_m: int,
    config: SparsePrefillConfig,
) -> SparseTiles:
    """The key ranges and the lone kept columns of every tile of the last `num_queries`
    queries of a context of n keys, under the pattern `columns`, `distances` ([heads, n]
    bool, as estimate_pattern gives them)."""
    context, device = columns.shape[1], columns.device
    first_rows = context - num_queries + torch.arange(0, num_queries, block_m, device=device)
    last_rows = (first_rows + block_m).clamp(max=context) - 1
    first_rows, last_rows = first_rows[None, :, None], last_rows[None, :, None]
    # A kept distance d covers keys first_row - d .. last_row - d of a tile (those >= 0).
    # Largest d first: the spans then come in increasing order of their first key.
    kept = _kept_indices(distances, config.slash + config.local, descending=True)[:, None, :]
    low, high = (first_rows - kept).clamp(min=0), last_rows - kept  # [heads, tiles, kept]
    # Distances past the tile's last row cover no key, nor does the padding (-1): the spans
    # that exist are one stretch of each row, and each that neither overlaps nor touches
    # the one before opens a range, which the last before the next opening one closes.
    exists = (high >= 0) & (kept >= 0)
    previous_high = F.pad(torch.where(exists, high, -2)[..., :-1], (1, 0), value=-2)
    opens = exists & (low > previous_high + 1)
    closes = exists & ~F.pad((exists & ~opens)[..., 1:], (0, 1), value=False)
    range_starts, range_counts = _compact(low, opens)
    range_ends, _ = _compact(high + 1, closes)
    # A kept column lies in a range when some kept distance puts it under the tile's rows.
    kept_columns = _kept_indices(columns, config.vertical + config.sink, descending=False)
    candidates = kept_columns[:, None, :].expand(-1, first_rows.shape[1], -1)
    below = F.pad(distances.cumsum(1, dtype=torch.int32), (1, 0))  # kept distances below o
    lowest = (first_rows - candidates).clamp(min=0)
    beyond = (last_rows - candidates + 1).clamp(min=0)  # a distance past the last row's
    covered = _at(below, beyond) > _at(below, lowest)
    lone = (candidates <= last_rows) & ~covered
    column_keys, column_counts = _compact(candidates, lone)
    return SparseTiles(range_starts, range_ends, range_counts, column_keys, column_counts)


def _kept_indices(mask: torch.Tensor, count: int, descending: bool) -> torch.Tensor:
    """[heads, min(count, n)] the indices where each row of `mask` is True, sorted, for rows
    with at most `count` of them (estimate_pattern's keep exactly that many); fewer are
    padded with -1 (descending) or n (ascending). Made without a sync with the host."""
    kept = min(count, mask.shape[1])
    indices = torch.arange(mask.shape[1], dtype=torch.int32, device=mask.device)
    missing = -1 if descending else mask.shape[1]
    ordered = torch.where(mask, indices, missing).sort(dim=1, descending=descending).values
    return ordered[:, :kept]


def _at(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table [heads, m] read at index [heads, tiles, k]."""
    return table.gather(1, index.flatten(1).long()).view(index.shape)


def _compact(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept values of every row of the last dimension moved to its front, in order
    (int32, the rest 0), and how many there are."""
    width = values.shape[-1]
    slots = torch.where(keep, keep.cumsum(-1, dtype=torch.int32) - 1, width)
    packed = torch.zeros(*values.shape[:-1], width + 1, dtype=torch.int32, device=values.device)
    packed.scatter_(-1, slots.long(), values.to(torch.int32))
    return packed[..., :width].contiguous(), keep.sum(-1, dtype=torch.int32)


def paged_context_keys(
    cache: LayerKVCache, block_table: torch.Tensor, kv_head: int, start: int, end: int
) -> torch.Tensor:
    """One KV head's keys at context positions start..end-1 of a sequence, [end - start, d],
    read through its block table and dequantized for a quantized cache, as the torch backend
    reads them."""
    block_size = cache.k.shape[1]
    blocks = block_table[start // block_size : -(-end // block_size)]
    offset = start % block_size
    rows = cache.k[blocks, :, kv_head].flatten(0, 1)[offset : offset + end - start]
    if not cache.quantized:
        return rows
    scales = cache.k_scale[blocks, :, kv_head].flatten()[offset : offset + end - start]
    return dequantize_from_cache(rows, scales, cache.read_dtype)


def sparse_prefill_attention(
    q: torch.Tensor,
    cache: LayerKVCache,
    block_table: torch.Tensor,
    context: int,
    scale: float,
    config: SparsePrefillConfig,
) -> torch.Tensor:
    """The last queries q [queries, heads, head_dim] of a context of `context` tokens whose
    K/V (theirs included) are in the cache under `block_table` [max_blocks]: the pattern
    estimated from the last config.last_queries of them, then attention over it. Returns
    q's shape and dtype."""
    query = q.to(cache.compute_dtype)
    last = min(config.last_queries, q.shape[0])
    columns, distances = estimate_pattern(
        query[-last:].transpose(0, 1),
        lambda kv_head, start, end: paged_context_keys(cache, block_table, kv_head, start, end),
        cache.k.shape[2],
        context,
        scale,
        config,
    )
    return attend_pattern(q, cache, block_table, columns, distances, scale, config)


def attend_pattern(
    q: torch.Tensor,
    cache: LayerKVCache,
    block_table: torch.Tensor,
    columns: torch.Tensor,
    distances: torch.Tensor,
    scale: float,
    config: SparsePrefillConfig,
    block_m: int = DEFAULT_BLOCK_M,
    block_n: int = DEFAULT_BLOCK_N,
) -> torch.Tensor:
    """Attention of the last queries q [queries, heads, head_dim] of a context of n tokens
    over the kept keys of a given pattern (columns, distances: [heads, n] bool)."""
    num_queries, num_heads, head_dim = q.shape
    compute_dtype = cache.compute_dtype
    query = kernel_queries(q, cache)
    block_m = max(16, min(block_m, triton.next_power_of_2(num_queries)))
    tiles = sparse_tiles(columns, distances, num_queries, block_m, config)
    out = torch.empty(q.shape, dtype=compute_dtype, device=q.device)
    k_scale, v_scale, *scale_strides = scale_operands(cache)
    # bool as bytes, a view: Triton's loads of 1-bit pointers differ between backends.
    columns, distances = columns.contiguous().view(torch.uint8), distances.contiguous()
    distances = distances.view(torch.uint8)
    num_tiles = tiles.range_counts.shape[1]
    _sparse_prefill_kernel[(num_tiles, num_heads)](
        query,
        out,
        cache.k,
        cache.v,
        k_scale,
        v_scale,
        block_table,
        columns,
        distances,
        tiles.range_starts,
        tiles.range_ends,
        tiles.range_counts,
        tiles.column_keys,
        tiles.column_counts,
        num_queries,
        columns.shape[1] - num_queries,
        num_tiles,
        tiles.range_starts.shape[2],
        tiles.column_keys.shape[2],
        scale * LOG2_E,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        cache.k.stride(0),
        cache.k.stride(1),
        cache.k.stride(2),
        *scale_strides,
        columns.stride(0),
        cache.k.shape[1],
        num_heads // cache.k.shape[2],
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
