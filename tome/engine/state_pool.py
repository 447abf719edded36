"""StatePool: the recurrent state of every running sequence, beside the paged KV pool.

A hybrid model's linear-attention layers (KDA; later Gated DeltaNet or Mamba alike) keep a
fixed-size state per sequence instead of K/V per token (tome/layers/layer_state.py). The
pool holds, for each such layer and each of its state tensors, one slot per seat
(`max_num_seqs`): a sequence takes a slot when the scheduler admits it and gives it back
when it finishes, is aborted, is pinned as a named context, or is preempted. Preemption
recomputes: the state is dropped with the blocks and the prompt is prefilled again from
its last checkpoint (or the start), so a slot never has to outlive its sequence.

Behind the seats' slots the same tensors hold the prefix cache's state checkpoints
(state_checkpoints.py): a step saves some sequences' states into them from inside the
layers, and a sequence admitted with a prefix-cache hit starts from a copy of the one at
the end of its hit. Where that checkpoint went down to a lower tier with its block, the
copy comes from there: the engine makes it with the step's block restores, before the
forward pass (take_restores).

The pool is allocated whole when the engine starts, out of the cache's memory budget, and
a budget too small for it is refused then, with one line. Slots are never zeroed: a layer
starts a sequence from zeros itself (AttentionMetadata.starts_sequence) and afterwards
writes the slot before it reads it."""

from collections.abc import Callable

import torch

from tome.engine.sequence import Sequence
from tome.engine.state_checkpoints import StateCheckpoints, checkpoint_block
from tome.layers.layer_state import StateCheckpoint, StatefulLayer


def stateful_layers(model: torch.nn.Module) -> list[StatefulLayer]:
    return [m for m in model.modules() if isinstance(m, StatefulLayer)]


def state_bytes_per_sequence(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of recurrent state one sequence holds in `model` (built anywhere, meta too)
    whose activations are `dtype`; 0 for a model without recurrent layers."""
    layers = stateful_layers(model)
    return sum(spec.nbytes for layer in layers for spec in layer.state_specs(dtype).values())


class StatePool:
    def __init__(
        self,
        model: torch.nn.Module,
        num_slots: int,
        dtype: torch.dtype,
        device: torch.device,
        num_checkpoints: int = 0,
    ) -> None:
        """One slot per seat, and `num_checkpoints` more for checkpoints, for every state
        tensor of every recurrent layer of `model` (activations in `dtype`), bound to its
        layer."""
        self.num_slots = num_slots
        self.layers = stateful_layers(model)
        self.bytes_per_sequence = state_bytes_per_sequence(model, dtype)
        rows = num_slots + num_checkpoints
        self._tensors: list[torch.Tensor] = []
        for layer in self.layers:
            tensors = {
                name: torch.empty((rows, *spec.shape), dtype=spec.dtype, device=device)
                for name, spec in layer.state_specs(dtype).items()
            }
            layer.bind_state(tensors)
            self._tensors.extend(tensors.values())
        self._free = list(range(num_slots - 1, -1, -1))  # popped from the end: 0 first
        self.checkpoints = StateCheckpoints(range(num_slots, rows))
        # Checkpoints this step saves: (sequence, block hash, slot, past its prompt), kept
        # once it ran.
        self._saving: list[tuple[Sequence, bytes, int, bool]] = []
        # Sequences admitted since the last take_restores whose state starts from a
        # checkpoint in a lower tier: sequence -> the checkpoint's block hash.
        self._restores: dict[Sequence, bytes] = {}

    @property
    def has_state(self) -> bool:
        """Whether the model has recurrent layers at all."""
        return bool(self.layers)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        """Bytes of every slot, the seats' and the checkpoints'."""
        return sum(tensor.nbytes for tensor in self._tensors)

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor, [slots, *shape]: a slot is one row of each, as a KV block
        is of the KV pool's tensors, so the KV tiers move both alike."""
        return self._tensors

    def allocate(self, seq: Sequence) -> None:
        """Give a sequence being admitted a slot. Slots are as many as seats, and a
        sequence is admitted only to a free seat, so one is always free. A sequence whose
        leading blocks came from the prefix cache (which ends such a hit only where a
        checkpoint is, in memory or in a lower tier) starts from the checkpoint at their
        end: copied now, or by the engine before the forward pass (take_restores)."""
        if not self._free:
            raise RuntimeError("no state slot free: more sequences running than seats")
        seq.state_slot = self._free.pop()
        if self.has_state and seq.num_computed_tokens:
            last_hit = seq.block_hashes[seq.num_named_blocks - 1]
            if last_hit in self.checkpoints:
                self._copy(self.checkpoints.slot_of(last_hit), seq.state_slot)
            else:
                self._restores[seq] = last_hit

    def free(self, seq: Sequence) -> None:
        """Take back a sequence's slot, if it holds one (and cancel its restore: the slot
        may be someone else's before the restore would be made)."""
        if seq.state_slot is not None:
            self._free.append(seq.state_slot)
            seq.state_slot = None
        self._restores.pop(seq, None)

    def take_restores(self) -> list[tuple[bytes, int]]:
        """(block hash, slot): checkpoints to copy from a lower tier into the slots of
        sequences admitted since the last call."""
        restores = [(block_hash, seq.state_slot) for seq, block_hash in self._restores.items()]
        self._restores = {}
        return restores

    def plan_checkpoints(
        self,
        seqs: list[Sequence],
        num_new_tokens: list[int],
        block_size: int,
        block_hash: Callable[[Sequence, int], bytes],
    ) -> list[StateCheckpoint | None]:
        """Where the coming step saves each sequence's state (checkpoint_block), into a
        reserved slot, unless that prefix has a checkpoint already."""
        if not self.has_state or not self.checkpoints.num_slots:
            return []
        return [
            self._plan(seq, n, block_size, block_hash)
            for seq, n in zip(seqs, num_new_tokens, strict=True)
        ]

    def keep_checkpoints(self) -> None:
        """The step ran: its checkpoints hold their states, and hits may resume there."""
        for seq, block_hash, slot, answer in self._saving:
            self.checkpoints.commit(slot, block_hash, seq, answer)
        self._saving = []

    def _plan(
        self,
        seq: Sequence,
        num_new: int,
        block_size: int,
        block_hash: Callable[[Sequence, int], bytes],
    ) -> StateCheckpoint | None:
        start = seq.num_computed_tokens
        block = checkpoint_block(start, num_new, block_size)
        if block is None:
            return None
        key = block_hash(seq, block)
        if key in self.checkpoints:  # computed again, so used again (a context may pin it)
            self.checkpoints.touch(key)
            return None
        if any(key == saving for _, saving, _, _ in self._saving):
            return None
        end = (block + 1) * block_size
        answer = end > len(seq.prompt_token_ids)
        slot = self.checkpoints.reserve(seq, answer)
        if slot is None:
            return None
        self._saving.append((seq, key, slot, answer))
        return StateCheckpoint(end - start, slot)

    def _copy(self, source: int, target: int) -> None:
        for tensor in self._tensors:
            tensor[target] = tensor[source]
