"""StatePool: the recurrent state of every running sequence, beside the paged KV pool.

A hybrid model's linear-attention layers (KDA; later Gated DeltaNet or Mamba alike) keep a
fixed-size state per sequence instead of K/V per token (tome/layers/layer_state.py). The
pool holds, for each such layer and each of its state tensors, one slot per seat
(`max_num_seqs`): a sequence takes a slot when the scheduler admits it and gives it back
when it finishes, is aborted, is pinned as a named context, or is preempted. Preemption
recomputes: the state is dropped with the blocks and the prompt is prefilled again from
the start, so a slot never has to outlive its sequence.

The pool is allocated whole when the engine starts, out of the cache's memory budget, and
a budget too small for it is refused then, with one line. Slots are never zeroed: a layer
starts a sequence from zeros itself (AttentionMetadata.starts_sequence) and afterwards
writes the slot before it reads it."""

import torch

from tome.engine.sequence import Sequence
from tome.layers.layer_state import StatefulLayer


def stateful_layers(model: torch.nn.Module) -> list[StatefulLayer]:
    return [m for m in model.modules() if isinstance(m, StatefulLayer)]


def state_bytes_per_sequence(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of recurrent state one sequence holds in `model` (built anywhere, meta too)
    whose activations are `dtype`; 0 for a model without recurrent layers."""
    layers = stateful_layers(model)
    return sum(spec.nbytes for layer in layers for spec in layer.state_specs(dtype).values())


class StatePool:
    def __init__(
        self, model: torch.nn.Module, num_slots: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        """One slot per seat for every state tensor of every recurrent layer of `model`
        (activations in `dtype`), bound to its layer."""
        self.num_slots = num_slots
        self.layers = stateful_layers(model)
        self.bytes_per_sequence = state_bytes_per_sequence(model, dtype)
        for layer in self.layers:
            layer.bind_state(
                {
                    name: torch.empty((num_slots, *spec.shape), dtype=spec.dtype, device=device)
                    for name, spec in layer.state_specs(dtype).items()
                }
            )
        self._free = list(range(num_slots - 1, -1, -1))  # popped from the end: 0 first

    @property
    def has_state(self) -> bool:
        """Whether the model has recurrent layers at all."""
        return bool(self.layers)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, seq: Sequence) -> None:
        """Give a sequence being admitted a slot. Slots are as many as seats, and a
        sequence is admitted only to a free seat, so one is always free."""
        if not self._free:
            raise RuntimeError("no state slot free: more sequences running than seats")
        seq.state_slot = self._free.pop()

    def free(self, seq: Sequence) -> None:
        """Take back a sequence's slot, if it holds one."""
        if seq.state_slot is not None:
            self._free.append(seq.state_slot)
            seq.state_slot = None
