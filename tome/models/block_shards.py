"""Quantized checkpoint tensors (GGUF blocks, pre-quantized checkpoints, weights quantized
as they load) gathered while a model loads, and put in place once all have come: a fused
projection (q/k/v, gate/up) stays quantized when every one of its shards arrived quantized
in one layout (on the block kernel, stacked per layout where they differ), computed by the
layer quantized_linear chooses for the machine; otherwise its shards are expanded and
copied into the float parameter like any other tensor."""

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import (
    BlockQuantizedWeight,
    concatenate_rows,
    dequantize,
    pack,
)
from tome.kernels.float8_matmul import Float8Weight, concatenate_float8_rows, dequantize_float8
from tome.layers.block_quantized_experts import BlockQuantizedExperts
from tome.layers.block_quantized_linear import StackedBlockQuantizedLinear
from tome.layers.moe import FusedExperts
from tome.layers.quantized_experts import QuantizedExperts
from tome.layers.quantized_linear import (
    InputPermutedLinear,
    block_kernel_reads,
    quantized_embedding,
    quantized_linear,
    uses_block_kernel,
)
from tome.loader.quantized_formats import DecodedWeight

QuantizedWeight = BlockQuantizedWeight | Float8Weight


class BlockShards:
    def __init__(self) -> None:
        # Target parameter name -> shard index -> (checkpoint name, weight).
        self._pending: dict[str, dict[int, tuple[str, BlockQuantizedWeight]]] = defaultdict(dict)

    def add(self, target: str, shard: int, name: str, weight: QuantizedWeight) -> None:
        self._pending[target][shard] = (name, weight)

    def install(
        self,
        model: nn.Module,
        shard_count: Callable[[str], int],
        copy_float: Callable[[str, torch.Tensor], None],
        device: torch.device,
    ) -> None:
        """Swap each fully quantized Linear, Embedding or layer of experts for its quantized
        twin; hand the rest, expanded, to `copy_float(checkpoint name, tensor)`."""
        self._install_experts(model, shard_count, copy_float, device)
        for target, shards in self._pending.items():
            module_name = target.removesuffix(".weight")
            module = model.get_submodule(module_name)
            parts = [weight for _, weight in (shards[i] for i in sorted(shards))]
            complete = len(parts) == shard_count(target)
            dtype = module.weight.dtype
            if any(isinstance(part, DecodedWeight) for part in parts):
                permuted = complete and isinstance(module, nn.Linear) and _one_order(parts)
                if not permuted:
                    _expand(shards.values(), copy_float)
                    continue
                inner = quantized_linear(
                    _concatenate([p.weight for p in parts]), None, dtype, device
                )
                layer = InputPermutedLinear(parts[0].input_order.to(device), inner, module.bias)
                model.set_submodule(module_name, layer)
                continue
            runs = _runs_of_one_layout(parts)
            if complete and isinstance(module, nn.Linear) and len(runs) == 1:
                layer = quantized_linear(_concatenate(parts), module.bias, dtype, device)
                model.set_submodule(module_name, layer)
            elif complete and isinstance(module, nn.Linear) and _kernel_stacks(runs, dtype, device):
                stacked = [pack(concatenate_rows(run)) for run in runs]
                model.set_submodule(module_name, StackedBlockQuantizedLinear(stacked, module.bias))
            elif complete and isinstance(module, nn.Embedding) and len(parts) == 1:
                model.set_submodule(module_name, quantized_embedding(parts[0], dtype, device))
            else:
                _expand(shards.values(), copy_float)

    def _install_experts(
        self,
        model: nn.Module,
        shard_count: Callable[[str], int],
        copy_float: Callable[[str, torch.Tensor], None],
        device: torch.device,
    ) -> None:
        """Layers of experts, whose gate_up_proj (shards 2e, 2e + 1: expert e's gate and
        up) and down_proj (shard e) must all have come quantized, each expert's gate and up
        in one layout: on the block kernel, BlockQuantizedExperts (a layer's active experts
        in one kernel call); elsewhere QuantizedExperts, a layer quantized_linear chooses
        for each projection. Otherwise the experts are expanded to float."""
        owners = {t.rsplit(".", 1)[0] for t in self._pending}
        for owner in owners:
            layer = model.get_submodule(owner)
            if not isinstance(layer, FusedExperts):
                continue
            gate_up = self._pending.pop(f"{owner}.gate_up_proj", {})
            down = self._pending.pop(f"{owner}.down_proj", {})
            experts = range(len(down))
            # Act-order experts (weights over permuted inputs) are expanded: each would need
            # its own gather of the inputs.
            shards = [weight for _, weight in (*gate_up.values(), *down.values())]
            whole = (
                len(gate_up) == shard_count(f"{owner}.gate_up_proj")
                and len(down) == shard_count(f"{owner}.down_proj")
                and not any(isinstance(weight, DecodedWeight) for weight in shards)
                and all(
                    _layout(gate_up[2 * e][1]) == _layout(gate_up[2 * e + 1][1]) for e in experts
                )
            )
            if not whole:
                _expand([*gate_up.values(), *down.values()], copy_float)
                continue
            fused = [_concatenate([gate_up[2 * e][1], gate_up[2 * e + 1][1]]) for e in experts]
            downs = [down[e][1] for e in experts]
            dtype = layer.down_proj.dtype
            # On the block kernel, gate/up of every expert share a layout, and so do the
            # downs (Q4_K_M files keep some downs in Q6_K, held as 8-bit blocks).
            if (
                uses_block_kernel(dtype, device)
                and _one_kernel_layout(fused)
                and _one_kernel_layout(downs)
            ):
                experts_layer = BlockQuantizedExperts(
                    [pack(w) for w in fused], [pack(w) for w in downs]
                )
            else:
                experts_layer = QuantizedExperts(
                    [quantized_linear(w, None, dtype, device) for w in fused],
                    [quantized_linear(w, None, dtype, device) for w in downs],
                )
            model.set_submodule(owner, experts_layer)


def _expand(
    shards: Iterable[tuple[str, QuantizedWeight]],
    copy_float: Callable[[str, torch.Tensor], None],
) -> None:
    """Each (checkpoint name, weight) expanded to float, over the layer's own input order,
    and handed to copy_float."""
    for name, weight in shards:
        copy_float(name, _expanded(weight))


def _expanded(weight: QuantizedWeight | DecodedWeight) -> torch.Tensor:
    if isinstance(weight, DecodedWeight):
        # Column j of the stored weight multiplies input input_order[j].
        natural = torch.empty(weight.shape)
        natural[:, weight.input_order] = _expanded(weight.weight)
        return natural
    if isinstance(weight, Float8Weight):
        return dequantize_float8(weight, torch.float32)
    return dequantize(weight)


def _one_order(parts: list) -> bool:
    """Whether the parts are weights over one permutation of the inputs, in one layout
    (a fused projection's parts read the same inputs, so act-order gives them one order)."""
    if not all(isinstance(part, DecodedWeight) for part in parts):
        return False
    order = parts[0].input_order
    same_order = all(torch.equal(part.input_order, order) for part in parts)
    return same_order and len(_runs_of_one_layout([part.weight for part in parts])) == 1


def _layout(weight: QuantizedWeight) -> tuple:
    """What parts must share to be stacked into one weight."""
    if isinstance(weight, Float8Weight):
        return ("fp8", weight.block_k)
    return ("blocks", weight.bits, weight.offsets is None)


def _concatenate(parts: list[QuantizedWeight]) -> QuantizedWeight:
    if isinstance(parts[0], Float8Weight):
        return concatenate_float8_rows(parts)
    return concatenate_rows(parts)


def _one_kernel_layout(parts: list[QuantizedWeight]) -> bool:
    return len({_layout(p) for p in parts}) == 1 and all(map(block_kernel_reads, parts))


def _kernel_stacks(
    runs: list[list[QuantizedWeight]], dtype: torch.dtype, device: torch.device
) -> bool:
    """Whether parts in several layouts can be stacked on the block kernel."""
    parts = [part for run in runs for part in run]
    return uses_block_kernel(dtype, device) and all(map(block_kernel_reads, parts))


def _runs_of_one_layout(parts: list[QuantizedWeight]) -> list[list[QuantizedWeight]]:
    """Consecutive parts grouped while they share a layout."""
    runs: list[list[QuantizedWeight]] = []
    for part in parts:
        if runs and _layout(runs[-1][0]) == _layout(part):
            runs[-1].append(part)
        else:
            runs.append([part])
    return runs
