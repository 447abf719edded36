"""What the Llama-attention MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE) share: the
decoder of llama.py with a family's sparse block in place of the MLP, and checkpoints whose
experts come one tensor each, under Hub names (`...mlp.experts.3.gate_proj.weight`), packed
into a layer's FusedExperts as they arrive."""

import re
from collections.abc import Iterable
from typing import Any

import torch

from tome.models.llama import LlamaForCausalLM

# An expert's tensor in a checkpoint: (layer prefix, expert index, projection).
EXPERT_NAME = re.compile(r"^(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
# Projection -> (fused parameter, shard within it: gate rows before up rows).
EXPERT_SHARDS = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


class SparseMoeForCausalLM(LlamaForCausalLM):
    """A family names its checkpoint's tensors through CHECKPOINT_RENAMES (ours -> the
    checkpoint's substrings, as Mixtral's `block_sparse_moe` and `w1`/`w3`/`w2`)."""

    CHECKPOINT_RENAMES: tuple[tuple[str, str], ...] = ()

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        return {self._to_checkpoint(n): s for n, s in super().checkpoint_shapes().items()}

    def _unpacked_shapes(self, name: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        if name.endswith(".experts.gate_up_proj"):
            prefix, (experts, rows, hidden) = name.removesuffix(".gate_up_proj"), shape
            return {
                f"{prefix}.{e}.{projection}.weight": (rows // 2, hidden)
                for e in range(experts)
                for projection in ("gate_proj", "up_proj")
            }
        if name.endswith(".experts.down_proj"):
            prefix, (experts, *matrix) = name.removesuffix(".down_proj"), shape
            return {f"{prefix}.{e}.down_proj.weight": tuple(matrix) for e in range(experts)}
        return super()._unpacked_shapes(name, shape)

    def _target(self, name: str) -> tuple[str, int]:
        """Expert tensors as (fused parameter, shard) with the shard numbering experts:
        2 * expert + (0 gate, 1 up) in gate_up_proj, expert in down_proj."""
        name = self._from_checkpoint(name)
        match = EXPERT_NAME.match(name)
        if match is None:
            return super()._target(name)
        prefix, expert, projection = match.group(1), int(match.group(2)), match.group(3)
        if projection == "down_proj":
            return f"{prefix}.down_proj", expert
        fused, part = EXPERT_SHARDS[projection]
        return f"{prefix}.{fused}", 2 * expert + part

    def _shard_view(self, target_name: str, shard: int, data: torch.Tensor) -> torch.Tensor:
        if target_name.endswith(".experts.down_proj"):
            return data[shard]
        if target_name.endswith(".experts.gate_up_proj"):
            expert, part = divmod(shard, 2)
            rows = data.shape[1] // 2
            return data[expert].narrow(0, part * rows, rows)
        return super()._shard_view(target_name, shard, data)

    def _shard_count(self, target: str) -> int:
        if target.endswith(".experts.gate_up_proj"):
            return 2 * self.get_parameter(target).shape[0]
        if target.endswith(".experts.down_proj"):
            return self.get_parameter(target).shape[0]
        return super()._shard_count(target)

    def load_weights(self, weights: Iterable[tuple[str, Any]], device=None) -> None:
        """Tensors named as the checkpoint names them or as we do (a GGUF file's, read
        under our names) alike."""
        super().load_weights(
            ((self._to_checkpoint(self._from_checkpoint(name)), t) for name, t in weights), device
        )

    def _to_checkpoint(self, name: str) -> str:
        for ours, theirs in self.CHECKPOINT_RENAMES:
            name = name.replace(ours, theirs)
        return name

    def _from_checkpoint(self, name: str) -> str:
        for ours, theirs in self.CHECKPOINT_RENAMES:
            name = name.replace(theirs, ours)
        return name
