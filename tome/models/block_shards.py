"""Block-quantized checkpoint tensors gathered while a model loads, and put in place once
all have come: a fused projection (q/k/v, gate/up) can keep its blocks only when every
one of its shards arrived in blocks of one layout; otherwise they are expanded and
copied into the float parameter like any other tensor."""

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import (
    BlockQuantizedWeight,
    concatenate_rows,
    dequantize_transposed,
    pack,
)
from tome.layers.block_quantized_linear import BlockQuantizedEmbedding, BlockQuantizedLinear


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
        """Swap each fully block-quantized Linear or Embedding for its block-quantized
        twin; hand the rest, expanded, to `copy_float(checkpoint name, tensor)`."""
        for target, shards in self._pending.items():
            module_name = target.removesuffix(".weight")
            module = model.get_submodule(module_name)
            parts = [weight for _, weight in (shards[i] for i in sorted(shards))]
            whole = len(parts) == shard_count(target) and len({p.bits for p in parts}) == 1
            if whole and isinstance(module, nn.Linear):
                packed = pack(concatenate_rows(parts))
                model.set_submodule(module_name, BlockQuantizedLinear(packed, module.bias))
            elif whole and isinstance(module, nn.Embedding):
                model.set_submodule(module_name, BlockQuantizedEmbedding(pack(parts[0])))
            else:
                for name, weight in shards.values():
                    copy_float(name, dequantize_transposed(pack(weight)).t())
