"""Paged attention on the CPU with the C++ decode kernel: the torch backend, except that
every decoding sequence attends in one call of cpu/paged_decode_attention.cpp, which reads
each context in place at close to the memory's rate. Prefill chunks keep the torch
backend's SDPA path."""

from tome.kernels.cpu_decode_attention import cpu_decode_attention
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import TorchAttentionBackend


class CpuAttentionBackend(TorchAttentionBackend):
    """TorchAttentionBackend with its decodes in the C++ kernel."""

    def _decode(self, q, cache: LayerKVCache, meta: AttentionMetadata, scale: float):
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
