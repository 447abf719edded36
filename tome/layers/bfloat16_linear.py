"""A bfloat16 linear layer for the CPU whose decode steps (a few rows) run the C++ kernel of
kernels/bfloat16_matmul.py, and whose longer inputs run torch's product. Swapped in for
nn.Linear when a model loads in bfloat16 on the CPU."""

import torch
from torch import nn

from tome.kernels import bfloat16_matmul


class Bfloat16Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bfloat16_matmul.runs_on(x):
            return nn.functional.linear(x, self.weight, self.bias)
        out = bfloat16_matmul.bfloat16_matmul(x, self.weight)
        return out if self.bias is None else out + self.bias


def use_bfloat16_kernel(model: nn.Module) -> None:
    """Swap every bfloat16 nn.Linear of `model` for a Bfloat16Linear, in place, where the
    kernel builds."""
    if bfloat16_matmul.kernel_library() is None:
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16:
                setattr(parent, name, Bfloat16Linear(child))
