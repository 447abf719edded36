"""The gated MLP's activation: silu(gate) * up, over the fused gate/up projection."""

import torch
import torch.nn.functional as F

from tome.layers.layer_kernels import layer_kernels


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2 * width], gate then up; returns [..., width]."""
    kernels = layer_kernels(gate_up)
    if kernels is not None:
        return kernels.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
