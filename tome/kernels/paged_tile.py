"""The step every paged attention kernel repeats: a tile of BLOCK_N context keys, read
through the block table, folded into running softmax state with the online softmax of
flash attention. Shared by decode (whole GQA groups of one token) and prefill (tiles of a
chunk's tokens times their GQA group)."""

import triton
import triton.language as tl


@triton.jit
def attend_tile(
    q,  # [ROWS, BLOCK_D] in DOT_DTYPE
    acc,  # [ROWS, BLOCK_D] float32: sum of p v so far
    row_max,  # [ROWS] float32: largest score so far (log2 units)
    denominator,  # [ROWS] float32: sum of p so far
    first,  # the tile's first context position
    end,  # context positions from `end` on are not read
    positions,  # [ROWS] each row's own context position, for the causal mask
    table,  # this sequence's block table row
    k_ptr,  # K cache at this KV head: [num_blocks, block_size, (head), head_dim]
    v_ptr,
    k_scale_ptr,  # scales at this KV head, when QUANTIZED
    v_scale_ptr,
    dims,  # [BLOCK_D] arange
    dim_mask,  # [BLOCK_D] dims < head_dim
    qk_scale,  # softmax scale times log2(e): scores are powers of two
    block_size,
    stride_block,
    stride_token,
    stride_scale_block,
    stride_scale_token,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,  # mask keys after each row's position
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The BLOCK_N consecutive keys from `first`."""
    keys = first + tl.arange(0, BLOCK_N)
    key_mask = keys < end
    visible = key_mask[None, :]
    if CAUSAL:
        visible = visible & (keys[None, :] <= positions[:, None])
    return attend_keys(
        q,
        acc,
        row_max,
        denominator,
        keys,
        key_mask,
        visible,
        table,
        k_ptr,
        v_ptr,
        k_scale_ptr,
        v_scale_ptr,
        dims,
        dim_mask,
        qk_scale,
        block_size,
        stride_block,
        stride_token,
        stride_scale_block,
        stride_scale_token,
        QUANTIZED,
        DOT_DTYPE,
        PRECISION,
    )


@triton.jit
def attend_keys(
    q,  # [ROWS, BLOCK_D] in DOT_DTYPE
    acc,  # [ROWS, BLOCK_D] float32
    row_max,  # [ROWS] float32, log2 units
    denominator,  # [ROWS] float32
    keys,  # [BLOCK_N] context positions to read, in any order
    key_mask,  # [BLOCK_N] which of them exist
    visible,  # [ROWS, BLOCK_N] which row attends to which key
    table,
    k_ptr,
    v_ptr,
    k_scale_ptr,
    v_scale_ptr,
    dims,
    dim_mask,
    qk_scale,
    block_size,
    stride_block,
    stride_token,
    stride_scale_block,
    stride_scale_token,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Keys at any positions under any mask (the sparse kernel's), where a row may see none
    of them."""
    blocks = tl.load(table + keys // block_size, mask=key_mask, other=0).to(tl.int64)
    within = keys % block_size
    kv_offsets = (blocks * stride_block + within * stride_token)[:, None] + dims[None, :]
    kv_mask = key_mask[:, None] & dim_mask[None, :]
    k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0).to(DOT_DTYPE)
    v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0).to(DOT_DTYPE)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if QUANTIZED:
        # Each key's scale multiplies its whole column of scores: q . (s k) = s (q . k).
        scale_offsets = blocks * stride_scale_block + within * stride_scale_token
        scores *= tl.load(k_scale_ptr + scale_offsets, mask=key_mask, other=0.0)[None, :]
    scores = tl.where(visible, scores * qk_scale, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    # A row that has seen no key yet has a max of -inf; shifting by 0 keeps its p at 0.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    alpha = tl.exp2(row_max - shift)
    p = tl.exp2(scores - shift[:, None])
    denominator = denominator * alpha + tl.sum(p, axis=1)
    if QUANTIZED:
        # And each value's scale its column of probabilities: p (s v) = (p s) v.
        p *= tl.load(v_scale_ptr + scale_offsets, mask=key_mask, other=0.0)[None, :]
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision=PRECISION)
    return acc, new_max, denominator
