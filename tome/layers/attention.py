"""Attention layer: owns this layer's slice of the paged KV cache and hands the work to the
backend chosen for the device. Models call it with the batch's metadata."""

import torch
from torch import nn

from tome.layers.attention_backends import AttentionBackend, backend_for
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import TorchAttentionBackend


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.kv_cache = LayerKVCache(torch.empty(0), torch.empty(0))
        self.backend: AttentionBackend = TorchAttentionBackend()

    def bind_cache(self, kv_cache: LayerKVCache) -> None:
        self.kv_cache = kv_cache
        self.backend = backend_for(kv_cache.k.device, kv_cache.k.dtype)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        return self.backend.forward(q, k, v, self.kv_cache, meta, self.scale)
