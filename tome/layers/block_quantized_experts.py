"""A layer's experts kept in GGUF's quantized blocks (as BlockQuantizedLinear keeps a
dense layer's), computed by the block kernel one active expert at a time over all its
tokens: a Q4_K MoE model stays near its file size in memory, and decoding reads each
active expert's blocks once. Float32 on the CPU, as the block kernel is."""

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import PackedWeight, block_quantized_matmul
from tome.layers.activation import silu_and_mul
from tome.layers.moe import sum_over_experts


class BlockQuantizedExperts(nn.Module):
    def __init__(self, gate_up: list[PackedWeight], down: list[PackedWeight]) -> None:
        """gate_up[e]: expert e's gate rows then up rows; down[e]: its down projection."""
        super().__init__()
        self.gate_up, self.down = gate_up, down
        self.num_experts = len(gate_up)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return sum_over_experts(x, weights, ids, self.num_experts, self._expert)

    def _expert(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        hidden = silu_and_mul(block_quantized_matmul(x, self.gate_up[expert]))
        return block_quantized_matmul(hidden, self.down[expert])
