"""The gated MLP's activation: silu(gate) * up, over the fused gate/up projection."""

import torch
import torch.nn.functional as F

from tome.kernels import cpu_layer_ops


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2 * width], gate then up; returns [..., width]."""
    if cpu_layer_ops.runs_on(gate_up):
        return cpu_layer_ops.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
