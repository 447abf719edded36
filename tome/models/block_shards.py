"""Block-quantized checkpoint tensors gathered while a model loads, and put in place once
all have come: a fused projection (q/k/v, gate/up) keeps its blocks when every one of its
shards arrived in blocks (stacked per layout where they differ); otherwise they are
expanded and copied into the float parameter like any other tensor."""

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import (
    BlockQuantizedWeight,
    concatenate_rows,
    dequantize_transposed,
    pack,
)
from tome.layers.block_quantized_experts import BlockQuantizedExperts
from tome.layers.block_quantized_linear import (
    BlockQuantizedEmbedding,
    BlockQuantizedLinear,
    StackedBlockQuantizedLinear,
)
from tome.layers.moe import FusedExperts


class BlockShards:
    def __init__(self) -> None:
        # Target parameter name -> shard index -> (checkpoint name, weight).
        self._pending: dict[str, dict[int, tuple[str, BlockQuantizedWeight]]] = defaultdict(dict)

    def add(self, target: str, shard: int, name: str, weight: BlockQuantizedWeight) -> None:
        self._pending[target][shard] = (name, weight)

    def install(
        self,
        model: nn.Module,
        shard_count: Callable[[str], int],
        copy_float: Callable[[str, torch.Tensor], None],
    ) -> None:
        """Swap each fully block-quantized Linear, Embedding or layer of experts for its
        block-quantized twin; hand the rest, expanded, to `copy_float(checkpoint name,
        tensor)`."""
        self._install_experts(model, shard_count, copy_float)
        for target, shards in self._pending.items():
            module_name = target.removesuffix(".weight")
            module = model.get_submodule(module_name)
            parts = [weight for _, weight in (shards[i] for i in sorted(shards))]
            complete = len(parts) == shard_count(target)
            whole = complete and len({p.bits for p in parts}) == 1
            if whole and isinstance(module, nn.Linear):
                packed = pack(concatenate_rows(parts))
                model.set_submodule(module_name, BlockQuantizedLinear(packed, module.bias))
            elif complete and isinstance(module, nn.Linear):
                stacked = [pack(concatenate_rows(run)) for run in _runs_of_one_layout(parts)]
                model.set_submodule(module_name, StackedBlockQuantizedLinear(stacked, module.bias))
            elif whole and isinstance(module, nn.Embedding):
                model.set_submodule(module_name, BlockQuantizedEmbedding(pack(parts[0])))
            else:
                _expand(shards.values(), copy_float)

    def _install_experts(
        self,
        model: nn.Module,
        shard_count: Callable[[str], int],
        copy_float: Callable[[str, torch.Tensor], None],
    ) -> None:
        """Layers of experts, whose gate_up_proj (shards 2e, 2e + 1: expert e's gate and
        up) and down_proj (shard e) must both have come whole in blocks."""
        owners = {t.rsplit(".", 1)[0] for t in self._pending}
        for owner in owners:
            if not isinstance(model.get_submodule(owner), FusedExperts):
                continue
            gate_up = self._pending.pop(f"{owner}.gate_up_proj", {})
            down = self._pending.pop(f"{owner}.down_proj", {})
            # gate and up are stacked into one weight, so they must share a layout; down
            # may have another (Q4_K_M files keep some in Q6_K, held as 8-bit blocks).
            whole = (
                len(gate_up) == shard_count(f"{owner}.gate_up_proj")
                and len(down) == shard_count(f"{owner}.down_proj")
                and len({weight.bits for _, weight in gate_up.values()}) == 1
                and len({weight.bits for _, weight in down.values()}) == 1
            )
            if not whole:
                _expand([*gate_up.values(), *down.values()], copy_float)
                continue
            experts = range(len(down))
            fused = [concatenate_rows([gate_up[2 * e][1], gate_up[2 * e + 1][1]]) for e in experts]
            model.set_submodule(
                owner,
                BlockQuantizedExperts(
                    [pack(w) for w in fused], [pack(down[e][1]) for e in experts]
                ),
            )


def _expand(
    shards: Iterable[tuple[str, BlockQuantizedWeight]],
    copy_float: Callable[[str, torch.Tensor], None],
) -> None:
    """Each (checkpoint name, weight) expanded to float and handed to copy_float."""
    for name, weight in shards:
        copy_float(name, dequantize_transposed(pack(weight)).t())


def _runs_of_one_layout(parts: list[BlockQuantizedWeight]) -> list[list[BlockQuantizedWeight]]:
    """Consecutive parts grouped while they share a layout."""
    runs: list[list[BlockQuantizedWeight]] = []
    for part in parts:
        if runs and runs[-1][0].bits == part.bits:
            runs[-1].append(part)
        else:
            runs.append([part])
    return runs
