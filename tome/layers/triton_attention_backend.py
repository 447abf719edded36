"""Paged attention with the Triton kernels of tome/kernels: the GPU backend. Same interface
and results as TorchAttentionBackend, its reference: new K/V stored into their slots, all
decodes in one flash-decoding launch, the dense prefill chunks in one flash-attention
launch, and each chunk that attends sparsely (EngineConfig.sparse_prefill) in a launch of
the vertical-slash kernel."""

import torch

from tome.kernels.kv_store import store_kv
from tome.kernels.paged_decode_attention import paged_decode_attention
from tome.kernels.paged_prefill_attention import paged_prefill_attention
from tome.kernels.sparse_prefill_attention import sparse_prefill_attention
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_kv_cache import LayerKVCache


class TritonAttentionBackend:
    """Reads and writes the paged KV cache with Triton kernels."""

    # A decode reads only device tensors (beside the longest context, which only sizes its
    # partitions): a CUDA graph can record it (tome/engine/cuda_graphs.py).
    graph_safe = True

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: LayerKVCache,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """q: [tokens, heads, d]; k, v: [tokens, kv_heads, d]. Returns [tokens, heads, d]."""
        store_kv(cache, k, v, meta.slot_mapping)
        out = torch.empty_like(q)
        n = meta.num_decodes
        if n:
            out[:n] = paged_decode_attention(
                q[:n],
                cache,
                meta.block_tables[:n],
                meta.context_lens[:n],
                max(meta.context_lens_cpu[:n]),
                scale,
            )
        if n < meta.num_seqs:
            self._prefill(q, k, v, cache, meta, scale, out)
        return out

    def _prefill(self, q, k, v, cache: LayerKVCache, meta: AttentionMetadata, scale, out) -> None:
        """Every prefill chunk into `out`: the dense ones in one launch, then each sparse one."""
        starts = meta.query_start_loc_cpu
        chunks = range(meta.num_decodes, meta.num_seqs)
        sparse = [i for i in chunks if meta.attends_sparsely(i)]
        dense = [i for i in chunks if i not in sparse]
        first = starts[meta.num_decodes]
        if dense:
            longest = max(starts[i + 1] - starts[i] for i in dense)
            seq_ids = self._sequence_ids(dense, meta.num_seqs - meta.num_decodes, q.device)
            out[first:] = paged_prefill_attention(
                q[first:],
                cache,
                meta.block_tables,
                meta.query_start_loc,
                meta.context_lens,
                seq_ids,
                first,
                longest,
                scale,
            )
        for i in sparse:
            out[starts[i] : starts[i + 1]] = sparse_prefill_attention(
                q[starts[i] : starts[i + 1]],
                cache,
                meta.block_tables[i],
                meta.context_lens_cpu[i],
                scale,
                meta.sparse_prefill,
            )

    @staticmethod
    def _sequence_ids(dense: list[int], num_chunks: int, device: torch.device) -> torch.Tensor:
        """The dense chunks' sequence indices on the device: made there, without a copy from
        the host, when every chunk is dense (the usual case)."""
        if len(dense) == num_chunks:
            return torch.arange(dense[0], dense[0] + num_chunks, dtype=torch.int32, device=device)
        return torch.tensor(dense, dtype=torch.int32).to(device)
