"""A batch's KDA prefill chunks through flash-linear-attention's chunked kernels (the
optional `fla-core` package, `pip install tome[gpu]`): on CUDA they compute the
recurrence 64 tokens at a time on tensor cores, as kda_ops.chunk_kda does in torch.

All the chunks go in one varlen call (fla's cu_seqlens), each starting from its
sequence's state, gathered from the pool (zeros for a chunk that starts its sequence),
and fla's final states are written back to the sequences' slots. A checkpoint inside a
chunk splits it (layer_state.state_pieces): the first pieces of every chunk go in one
call, the rest in a second call from the states the first left. fla's kernels do not run
in Triton's interpreter (a loop index used as a tensor), so on the CPU the tests check
this code around a stand-in of fla's function; on a GPU the real one."""

import importlib.util
from collections.abc import Callable
from functools import cache
from itertools import accumulate, pairwise

import torch

from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_state import state_pieces


def fla_serves(x: torch.Tensor) -> bool:
    """Whether fla's chunked kernels run the prefill chunks of q/k/v like x."""
    return x.is_cuda and _fla_installed()


@cache
def _fla_installed() -> bool:
    return importlib.util.find_spec("fla") is not None


def fla_chunk_kda() -> Callable:
    """fla's chunk_kda, imported when first used: fla is an optional dependency, and on a
    machine without a GPU importing it warns."""
    from fla.ops.kda import chunk_kda

    return chunk_kda


def chunk_prefills(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    meta: AttentionMetadata,
    out: torch.Tensor,
) -> None:
    """The rows of the batch's prefill chunks (sequences num_decodes on) of q, k, g
    [tokens, heads, k_dim], v [tokens, heads, v_dim] and beta [tokens, heads] into the
    same rows of out [tokens, heads, v_dim]; states [slots, heads, k_dim, v_dim] float32,
    read and written at the sequences' slots and checkpoints."""
    seqs = range(meta.num_decodes, meta.num_seqs)
    # Per sequence, its pieces as rows of the batch, each with the slots its end state goes to.
    pieces = []
    for seq in seqs:
        start, end = meta.query_start_loc_cpu[seq], meta.query_start_loc_cpu[seq + 1]
        split = state_pieces(end - start, meta.state_slots_cpu[seq], meta.state_checkpoint(seq))
        pieces.append([(slice(start + r.start, start + r.stop), into) for r, into in split])
    initial = states[meta.state_slots[meta.num_decodes :]]
    fresh = [i for i, seq in enumerate(seqs) if meta.starts_sequence(seq)]
    if fresh:
        initial[fresh] = 0
    chunk_kda = fla_chunk_kda()
    for round in range(max(len(split) for split in pieces)):
        batch = [i for i, split in enumerate(pieces) if len(split) > round]
        rows = [pieces[i][round][0] for i in batch]
        cu_seqlens = torch.tensor([0, *accumulate(r.stop - r.start for r in rows)])
        o, final = chunk_kda(
            *(_take_rows(x, rows)[None] for x in (q, k, v, g, beta)),
            initial_state=initial[batch],
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
            cu_seqlens=cu_seqlens.to(q.device),
            cu_seqlens_cpu=cu_seqlens,
        )
        _put_rows(out, rows, o[0])
        targets = [(slot, j) for j, i in enumerate(batch) for slot in pieces[i][round][1]]
        slots, finals = zip(*targets, strict=True)
        states.index_copy_(0, torch.tensor(slots, device=states.device), final[list(finals)])
        initial[batch] = final


def _take_rows(x: torch.Tensor, rows: list[slice]) -> torch.Tensor:
    """x's rows of each slice, in order: a view where they follow one another (a step
    without checkpoints inside its chunks), else a copy."""
    if _consecutive(rows):
        return x[rows[0].start : rows[-1].stop]
    return torch.cat([x[r] for r in rows])


def _put_rows(out: torch.Tensor, rows: list[slice], values: torch.Tensor) -> None:
    if _consecutive(rows):
        out[rows[0].start : rows[-1].stop] = values
        return
    first = 0
    for r in rows:
        out[r] = values[first : first + r.stop - r.start]
        first += r.stop - r.start


def _consecutive(rows: list[slice]) -> bool:
    return all(a.stop == b.start for a, b in pairwise(rows))
