"""RMSNorm computed in float32, as the reference implementations do, with the residual add
before it optionally fused in."""

import torch
from torch import nn

from tome.layers.layer_kernels import layer_kernels


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """RMSNorm of x; with `residual`, of x + residual, which is stored in `residual`
        (the stream a decoder carries from layer to layer, updated in place)."""
        kernels = layer_kernels(x)
        if kernels is not None:
            return kernels.rms_norm(x, self.weight, self.eps, residual)
        if residual is not None:
            x = residual.add_(x)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
