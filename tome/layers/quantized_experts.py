"""A layer's experts with quantized weights where the block kernel does not run them (a
bfloat16 model, a CPU without AVX-512, CUDA): each expert's gate/up and down projections
are the layers quantized_linear chooses for the machine, and every active expert runs once
over all its tokens, as FusedExperts runs its float experts."""

import torch
from torch import nn

from tome.layers.activation import silu_and_mul
from tome.layers.moe import sum_over_experts


class QuantizedExperts(nn.Module):
    def __init__(self, gate_up: list[nn.Module], down: list[nn.Module]) -> None:
        """gate_up[e]: expert e's gate rows then up rows; down[e]: its down projection."""
        super().__init__()
        self.gate_up, self.down = nn.ModuleList(gate_up), nn.ModuleList(down)
        self.num_experts = len(gate_up)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """As FusedExperts: each token's weighted sum of its experts, added in expert order."""
        return sum_over_experts(x, weights, ids, self.num_experts, self._expert)

    def _expert(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        return self.down[expert](silu_and_mul(self.gate_up[expert](x)))
