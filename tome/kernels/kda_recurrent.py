"""Kimi Delta Attention's recurrence token by token as one Triton launch for a flattened
batch of sequences, each sequence's state read from and written back to its slot of the
layer's state pool in place. It serves the decodes (one token each: the fused
single-token update) and, where flash-linear-attention's chunked kernels do not run (the
interpreter, or no fla-core), the prefill chunks too.

Per token, with q and k L2-normalised and q scaled by k_dim^-0.5 (kda_ops.py has the
recurrence): S = diag(exp(g)) S; S += k (beta (v - k^T S))^T; o = q^T S. One program
holds one head's state for a block of value columns in registers ([k_dim, BLOCK_V]
float32) for the whole of its sequence's tokens, so S is read and written once a step,
not once per op as the torch step does."""

import torch
import triton
import triton.language as tl

from tome.kernels.token_rows import with_contiguous_heads

# Value columns per program: 128 x 32 floats of state in registers, and 4 programs per
# head of Kimi Linear (128 x 128), so one decode's 32 heads fill 128 of a GPU's SMs.
BLOCK_V = 32
# Inside the root, as flash-linear-attention and kda_ops normalise.
L2_EPS = tl.constexpr(1e-6)


@triton.jit
def _recurrent_kda_kernel(
    q_ptr,  # [tokens, heads, k_dim], tokens stride_q apart, heads contiguous
    k_ptr,  # [tokens, heads, k_dim], tokens stride_k apart
    v_ptr,  # [tokens, heads, v_dim], tokens stride_v apart
    stride_q,
    stride_k,
    stride_v,
    g_ptr,  # [tokens, heads, k_dim] log decays, contiguous
    beta_ptr,  # [tokens, heads] contiguous
    out_ptr,  # [tokens, heads, v_dim] float32, contiguous
    states_ptr,  # [slots, heads, k_dim, v_dim] float32, contiguous: updated in place
    slots_ptr,  # [seqs] each sequence's slot
    query_start_loc_ptr,  # [seqs + 1]
    context_lens_ptr,  # [seqs] a sequence whose context is this chunk starts from zeros
    checkpoints_ptr,  # [seqs, 2] (tokens, slot): the state after `tokens` also goes there
    heads,
    k_dim,
    v_dim,
    scale,
    HAS_CHECKPOINTS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    start = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    length = tl.load(query_start_loc_ptr + seq + 1).to(tl.int64) - start
    carried = tl.load(context_lens_ptr + seq) > length
    rows = tl.arange(0, BLOCK_K)
    cols = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask, col_mask = rows < k_dim, cols < v_dim
    state_mask = row_mask[:, None] & col_mask[None, :]
    # Within one slot's [heads, k_dim, v_dim]: int32 would do, the slot's offset may not.
    in_slot = (head * k_dim + rows[:, None]) * v_dim + cols[None, :]
    slot = tl.load(slots_ptr + seq).to(tl.int64)
    slot_size = heads * k_dim * v_dim
    # A sequence starting here reads no rows: its state starts as zeros.
    read_mask = (rows[:, None] < tl.where(carried, k_dim, 0)) & col_mask[None, :]
    state = tl.load(states_ptr + slot * slot_size + in_slot, mask=read_mask, other=0.0)
    checkpoint_tokens, checkpoint_slot = 0, slot  # after no token: never
    if HAS_CHECKPOINTS:
        checkpoint_tokens = tl.load(checkpoints_ptr + 2 * seq)
        checkpoint_slot = tl.load(checkpoints_ptr + 2 * seq + 1).to(tl.int64)
    # Pointers advance a token at a time: a row offset of a long prompt overflows int32.
    q_row = q_ptr + start * stride_q + head * k_dim
    k_row = k_ptr + start * stride_k + head * k_dim
    v_row = v_ptr + start * stride_v + head * v_dim
    g_row = g_ptr + (start * heads + head) * k_dim
    beta_at = beta_ptr + start * heads + head
    out_row = out_ptr + (start * heads + head) * v_dim
    for t in range(0, length):
        q = tl.load(q_row + rows, mask=row_mask, other=0.0).to(tl.float32)
        k = tl.load(k_row + rows, mask=row_mask, other=0.0).to(tl.float32)
        v = tl.load(v_row + cols, mask=col_mask, other=0.0).to(tl.float32)
        g = tl.load(g_row + rows, mask=row_mask, other=0.0).to(tl.float32)
        beta = tl.load(beta_at).to(tl.float32)
        q = q / tl.sqrt(tl.sum(q * q, axis=0) + L2_EPS) * scale
        k = k / tl.sqrt(tl.sum(k * k, axis=0) + L2_EPS)
        state = state * tl.exp(g)[:, None]
        delta = (v - tl.sum(state * k[:, None], axis=0)) * beta
        state = state + k[:, None] * delta[None, :]
        tl.store(out_row + cols, tl.sum(state * q[:, None], axis=0), mask=col_mask)
        if t + 1 == checkpoint_tokens:
            tl.store(states_ptr + checkpoint_slot * slot_size + in_slot, state, mask=state_mask)
        q_row += stride_q
        k_row += stride_k
        v_row += stride_v
        g_row += heads * k_dim
        beta_at += heads
        out_row += heads * v_dim
    tl.store(states_ptr + slot * slot_size + in_slot, state, mask=state_mask)


def recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    slots: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    checkpoints: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every token of a flattened batch of sequences. q, k, g [tokens, heads, k_dim] (q
    and k not yet normalised; each token's heads side by side, as views of a fused
    projection have them); v [tokens, heads, v_dim]; beta [tokens, heads]; states [slots,
    heads, k_dim, v_dim] float32, contiguous, each sequence's slot (slots [seqs]) read
    unless its context (context_lens [seqs]) is this chunk, and written with the state
    after its last token; query_start_loc [seqs + 1] its rows; checkpoints [seqs, 2]
    (tokens, slot), where a sequence's state after `tokens` of its rows is also saved (0
    tokens: nowhere). Returns the outputs [tokens, heads, v_dim] float32."""
    if not states.is_contiguous() or states.dtype != torch.float32:
        raise ValueError("the state pool must be contiguous float32")
    q, k, v = (with_contiguous_heads(x) for x in (q, k, v))
    tokens, heads, k_dim = k.shape
    v_dim = v.shape[-1]
    out = torch.empty(tokens, heads, v_dim, dtype=torch.float32, device=q.device)
    seqs = slots.shape[0]
    if seqs:
        _recurrent_kda_kernel[(seqs, heads, triton.cdiv(v_dim, BLOCK_V))](
            q,
            k,
            v,
            q.stride(0),
            k.stride(0),
            v.stride(0),
            g.contiguous(),
            beta.contiguous(),
            out,
            states,
            slots,
            query_start_loc,
            context_lens,
            checkpoints if checkpoints is not None else slots,
            heads,
            k_dim,
            v_dim,
            k_dim**-0.5,
            HAS_CHECKPOINTS=checkpoints is not None,
            BLOCK_K=triton.next_power_of_2(k_dim),
            BLOCK_V=BLOCK_V,
        )
    return out
