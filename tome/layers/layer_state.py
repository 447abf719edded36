"""Per-sequence recurrent state: what a linear-attention layer (KDA here; Gated DeltaNet or
Mamba alike) carries from one step to the next in place of a KV cache. Its size does not
grow with the sequence.

A StatefulLayer names its state tensors and their shape for one sequence; the engine's
StatePool (tome/engine/state_pool.py) holds them for every seat a running sequence can
take, [slots, *shape] each, and binds them to the layer. A batch's metadata says which
slot each of its sequences owns (AttentionMetadata.state_slots)."""

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of one layer for one sequence."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class StatefulLayer(nn.Module):
    """Base of the layers that keep per-sequence state between steps."""

    def state_specs(self, dtype: torch.dtype) -> dict[str, StateSpec]:
        """The layer's state tensors by name, in a model whose activations are `dtype`."""
        raise NotImplementedError

    def bind_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the pool's tensors, one [slots, *shape] per name of state_specs()."""
        raise NotImplementedError
