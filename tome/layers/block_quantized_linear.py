"""A linear layer and an embedding whose weight stays in GGUF's quantized blocks, packed for
the CPU kernel: it multiplies by the blocks, and a lookup expands only the rows it picks.
A tied LM head and embedding share one weight. Both work in float32.

Layers that multiply by blocks round their activations to 8 bits when told to
(EngineConfig.int8_activations, applied to a loaded model by set_int8_activations)."""

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import (
    PackedWeight,
    block_quantized_matmul,
    gather_rows,
)


def set_int8_activations(model: nn.Module, enabled: bool) -> None:
    """Every block-quantized product of `model` rounds its activations to 8 bits (or not)."""
    for module in model.modules():
        if hasattr(module, "int8_activations"):
            module.int8_activations = enabled


class BlockQuantizedLinear(nn.Module):
    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.int8_activations = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = block_quantized_matmul(x, self.weight, self.int8_activations)
        return out if self.bias is None else out + self.bias


class StackedBlockQuantizedLinear(nn.Module):
    """A fused projection whose parts came in different block layouts (Q4_K_M files keep
    some v projections in Q6_K beside q and k in Q4_K): each part multiplied by its own
    blocks, the outputs side by side."""

    def __init__(self, parts: list[PackedWeight], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.parts = parts
        self.bias = bias
        self.int8_activations = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat(
            [block_quantized_matmul(x, part, self.int8_activations) for part in self.parts],
            dim=-1,
        )
        return out if self.bias is None else out + self.bias


class BlockQuantizedEmbedding(nn.Module):
    def __init__(self, weight: PackedWeight) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return gather_rows(self.weight, ids.reshape(-1)).view(*ids.shape, -1)
