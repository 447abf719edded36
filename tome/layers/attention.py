"""Attention layer: owns this layer's slice of the paged KV cache and hands the work to the
backend chosen for the device. Models call it with the batch's metadata."""

import torch
from torch import nn

from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.torch_attention_backend import TorchAttentionBackend


def backend_for(device: torch.device) -> TorchAttentionBackend:
    """Kernels are chosen by device; until GPU kernels land every device uses torch ops."""
    return TorchAttentionBackend()


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self.backend = TorchAttentionBackend()

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        self.k_cache, self.v_cache = k_cache, v_cache
        self.backend = backend_for(k_cache.device)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        return self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
