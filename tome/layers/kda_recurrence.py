"""Kimi Delta Attention's recurrence over one flattened batch (decodes first, then prefill
chunks): each sequence continues from its slot of the layer's state pool and leaves its
state there, and at its checkpoint where the batch saves one. The kernels are chosen by
device, as layer_kernels chooses the layer ops (TOME_LAYER_OPS overrides):

- Triton (CUDA, or `triton` on the CPU under the interpreter): the decodes as one launch
  of tome/kernels/kda_recurrent.py, states updated in place; the prefill chunks through
  flash-linear-attention's chunked kernels where they serve (kda_fla.py: CUDA with
  fla-core installed), else in that same launch, token by token.
- the CPU: the decodes as one call of cpu/kda_step.cpp, in place, where it builds; the
  prefill chunks through kda_ops.chunk_kda, a sequence at a time.
- otherwise torch: kda_ops' step over the decodes' states gathered from the pool and
  scattered back, and chunk_kda."""

import torch

from tome.kernels import cpu_kda_step
from tome.layers import kda_fla
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.kda_ops import chunk_kda, recurrent_kda_step
from tome.layers.layer_kernels import uses_cpu_kernels, uses_triton
from tome.layers.layer_state import checkpoint_stepped, state_pieces


def kda_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """q, k [tokens, heads, k_dim] (not yet normalised); v [tokens, heads, v_dim]; g
    [tokens, heads, k_dim] log decays; beta [tokens, heads]; states [slots, heads, k_dim,
    v_dim] float32, the layer's pool. Returns the outputs [tokens, heads, v_dim] float32."""
    if uses_triton(q):
        return _triton(q, k, v, g, beta, states, meta)
    out = q.new_empty(*v.shape, dtype=torch.float32)
    decodes = meta.num_decodes
    if decodes:
        out[:decodes] = _decode_step(
            q[:decodes], k[:decodes], v[:decodes], g[:decodes], beta[:decodes], states, meta
        )
    for seq in range(decodes, meta.num_seqs):
        rows = slice(meta.query_start_loc_cpu[seq], meta.query_start_loc_cpu[seq + 1])
        out[rows] = _prefill_chunk(
            q[rows], k[rows], v[rows], g[rows], beta[rows], states, meta, seq
        )
    return out


def _decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """One token of each of the batch's first sequences, all at once."""
    seqs = q.shape[0]
    slots = meta.state_slots[:seqs]
    fresh = [seq for seq in range(seqs) if meta.starts_sequence(seq)]  # one-token prompts
    if uses_cpu_kernels(q) and cpu_kda_step.runs_on(q, states):
        if fresh:
            states[slots[fresh]] = 0
        out = cpu_kda_step.kda_step_in_place(q, k, v, g, beta, states, slots)
    else:
        stepped = states[slots]
        if fresh:
            stepped[fresh] = 0
        out = recurrent_kda_step(q, k, v, g, beta, stepped)
        states.index_copy_(0, slots, stepped)
    checkpoint_stepped(states, meta, seqs)
    return out


def _prefill_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    meta: AttentionMetadata,
    seq: int,
) -> torch.Tensor:
    """One sequence's chunk: continues from its state unless the chunk starts it. Run in
    pieces where a checkpoint splits it, each piece's end state saved where asked."""
    slot = meta.state_slots_cpu[seq]
    state = None if meta.starts_sequence(seq) else states[slot]
    outs = []
    for rows, into in state_pieces(q.shape[0], slot, meta.state_checkpoint(seq)):
        out, state = chunk_kda(q[rows], k[rows], v[rows], g[rows], beta[rows], state)
        for target in into:
            states[target] = state
        outs.append(out)
    return torch.cat(outs)


def _triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    # Imported only when chosen: Triton is an optional dependency.
    from tome.kernels.kda_recurrent import recurrent_kda

    chunked = meta.num_decodes < meta.num_seqs and kda_fla.fla_serves(q)
    seqs = meta.num_decodes if chunked else meta.num_seqs
    rows = meta.query_start_loc_cpu[seqs]
    out = recurrent_kda(
        q[:rows],
        k[:rows],
        v[:rows],
        g[:rows],
        beta[:rows],
        states,
        meta.state_slots[:seqs],
        meta.query_start_loc[: seqs + 1],
        meta.context_lens[:seqs],
        _checkpoints(meta, seqs, q.device),
    )
    if not chunked:
        return out
    whole = q.new_empty(*v.shape, dtype=torch.float32)
    whole[:rows] = out
    kda_fla.chunk_prefills(q, k, v, g, beta, states, meta, whole)
    return whole


def _checkpoints(meta: AttentionMetadata, seqs: int, device: torch.device) -> torch.Tensor | None:
    """[seqs, 2]: (tokens, slot) of the first `seqs` sequences' checkpoints this step (0
    tokens where a sequence saves none); None where none does."""
    chosen = [meta.state_checkpoint(seq) for seq in range(seqs)]
    if all(checkpoint is None for checkpoint in chosen):
        return None
    pairs = [(0, 0) if c is None else (c.tokens, c.slot) for c in chosen]
    return torch.tensor(pairs, device=device)
