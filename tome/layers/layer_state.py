"""Per-sequence recurrent state: what a linear-attention layer (KDA here; Gated DeltaNet or
Mamba alike) carries from one step to the next in place of a KV cache. Its size does not
grow with the sequence.

A StatefulLayer names its state tensors and their shape for one sequence; the engine's
StatePool (tome/engine/state_pool.py) holds them for every seat a running sequence can
take, [slots, *shape] each, and binds them to the layer. A batch's metadata says which
slot each of its sequences owns (AttentionMetadata.state_slots), and where a sequence's
state must also be saved partway through its chunk, into a prefix-cache checkpoint's slot
of the same tensors (StateCheckpoint; tome/engine/state_checkpoints.py)."""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # attention_metadata imports StateCheckpoint from here
    from tome.layers.attention_metadata import AttentionMetadata


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of one layer for one sequence."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class StateCheckpoint:
    """Save a sequence's state after `tokens` tokens of its chunk into pool slot `slot`."""

    tokens: int
    slot: int


def state_pieces(
    num_tokens: int, slot: int, checkpoint: StateCheckpoint | None
) -> list[tuple[slice, tuple[int, ...]]]:
    """A sequence's chunk of `num_tokens` as a recurrent layer runs it: consecutive pieces
    of its rows, each with the slots its end state is written to. The sequence's own slot
    gets the chunk's end state; a checkpoint inside the chunk splits it there."""
    whole = slice(0, num_tokens)
    if checkpoint is None:
        return [(whole, (slot,))]
    if checkpoint.tokens == num_tokens:
        return [(whole, (slot, checkpoint.slot))]
    return [
        (slice(0, checkpoint.tokens), (checkpoint.slot,)),
        (slice(checkpoint.tokens, num_tokens), (slot,)),
    ]


def checkpoint_stepped(pool: torch.Tensor, meta: "AttentionMetadata", seqs: int) -> None:
    """After a one-token step of the batch's first `seqs` sequences (decodes, one-token
    chunks), copy the state of each that saves a checkpoint (its token completes a block)
    from its slot of `pool` into the checkpoint's."""
    for seq in range(seqs):
        checkpoint = meta.state_checkpoint(seq)
        if checkpoint is not None:
            pool[checkpoint.slot] = pool[meta.state_slots_cpu[seq]]


class StatefulLayer(nn.Module):
    """Base of the layers that keep per-sequence state between steps."""

    def state_specs(self, dtype: torch.dtype) -> dict[str, StateSpec]:
        """The layer's state tensors by name, in a model whose activations are `dtype`."""
        raise NotImplementedError

    def bind_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the pool's tensors, one [slots, *shape] per name of state_specs(). In a
        forward the layer writes each sequence's state at the ends of its state_pieces()."""
        raise NotImplementedError
