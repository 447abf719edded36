"""A linear layer that keeps its weight as [in, out]. On CPU in float32, MKL's
matrix-vector product over that layout runs 1.3-1.6x faster than over nn.Linear's
[out, in] for the layer shapes of small models (decode is a matrix-vector product per
layer), and no slower at prefill. (In bfloat16 it is the other way round.)"""

import torch
from torch import nn


class TransposedLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x @ self.weight_t
        return torch.addmm(self.bias, x, self.weight_t)


def transpose_layer_linears(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> None:
    """Swap every nn.Linear (but those named in `skip`) for a TransposedLinear, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name not in skip:
                setattr(parent, name, TransposedLinear(child))
