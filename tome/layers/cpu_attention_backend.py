"""Paged attention on the CPU with the C++ kernels: the torch backend, except that every
decoding sequence attends in one call of cpu/paged_decode_attention.cpp, which reads each
context in place at close to the memory's rate, and new K/V are stored by cpu/kv_store.cpp
where it stores the cache's dtype. Prefill chunks, and decodes over a latent cache, keep
the torch backend's paths."""

import torch

from tome.kernels.cpu_decode_attention import cpu_decode_attention
from tome.kernels.cpu_kv_store import cpu_store_kv, supports_cache
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import TorchAttentionBackend, write_kv


class CpuAttentionBackend(TorchAttentionBackend):
    """TorchAttentionBackend with its decodes and K/V stores in C++ kernels."""

    def _store(self, cache: LayerKVCache, k, v, slot_mapping: torch.Tensor) -> None:
        if supports_cache(cache):
            cpu_store_kv(cache, k, v, slot_mapping)
        else:
            write_kv(cache, k, v, slot_mapping)

    def _decode(self, q, cache: LayerKVCache, meta: AttentionMetadata, scale: float):
        if cache.shares_kv:
            # A latent cache is one KV head of 576 values that all query heads read: the
            # torch path's two matrix products (BLAS) beat the kernel's walk row by row.
            # Kimi Linear's width with latent attention in 4 layers, 8k tokens of context:
            # 41 ms a token above its 1k decode, against 72 with the kernel.
            return super()._decode(q, cache, meta, scale)
        n = meta.num_decodes
        # The batch's host tensors as they are: nothing is rebuilt for each layer.
        return cpu_decode_attention(
            q,
            cache,
            meta.block_tables_cpu[:n],
            meta.context_lens[:n],
            max(meta.context_lens_cpu[:n]),
            scale,
        )
