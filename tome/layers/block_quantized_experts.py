"""A layer's experts kept in GGUF's quantized blocks (as BlockQuantizedLinear keeps a
dense layer's), computed by the block kernel: a Q4_K MoE model stays near its file size in
memory, and a step reads each active expert's blocks once, all of a layer's gate/up
products in one pass of the kernel and all its down products in another (a few small
products stream like one large one). Float32 on the CPU, as the block kernel is."""

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import PackedWeight, grouped_block_quantized_matmul
from tome.layers.activation import silu_and_mul
from tome.layers.moe import expert_groups


class BlockQuantizedExperts(nn.Module):
    def __init__(self, gate_up: list[PackedWeight], down: list[PackedWeight]) -> None:
        """gate_up[e]: expert e's gate rows then up rows; down[e]: its down projection."""
        super().__init__()
        self.gate_up, self.down = gate_up, down
        self.num_experts = len(gate_up)
        self.int8_activations = False  # see set_int8_activations

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """As FusedExperts: each token's weighted sum of its experts, added in expert
        order. The active experts' gate/up products run in one kernel call, their down
        products in another."""
        groups = expert_groups(ids, self.num_experts)
        experts = [expert for expert, _ in groups]
        counts = [len(assignments) for _, assignments in groups]
        assignments = torch.cat([assignments for _, assignments in groups])
        tokens = assignments // ids.shape[1]
        gate_up = grouped_block_quantized_matmul(
            x[tokens], counts, [self.gate_up[e] for e in experts], self.int8_activations
        )
        down = grouped_block_quantized_matmul(
            silu_and_mul(gate_up), counts, [self.down[e] for e in experts], self.int8_activations
        )
        out = torch.zeros_like(x)
        return out.index_add_(0, tokens, down * weights.flatten()[assignments, None])
