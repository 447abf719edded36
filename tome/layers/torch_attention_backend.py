"""Paged attention in plain PyTorch: the CPU backend and the reference the GPU kernels are
checked against. It never builds a score matrix over the whole prompt: a prefill chunk of
q tokens attends to its context of n tokens through SDPA's tiled kernel with a q x n mask,
so memory grows with the chunk, not with the square of the prompt."""

import torch
import torch.nn.functional as F

from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_kv_cache import LayerKVCache


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store the new tokens' K/V ([tokens, kv_heads, head_dim]) in their cache slots."""
    kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, length: int) -> torch.Tensor:
    """[seqs, kv_heads, length, head_dim] from blocks of [num_blocks, block_size, kvh, d]."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    blocks = cache[block_tables[:, :num_blocks]]  # [seqs, blocks, block_size, kvh, d]
    seqs = blocks.shape[0]
    return blocks.reshape(seqs, num_blocks * block_size, *cache.shape[2:])[:, :length].transpose(
        1, 2
    )


def context_kv(cache: torch.Tensor, meta: AttentionMetadata, seq: int, length: int) -> torch.Tensor:
    """One sequence's first `length` cached K or V as [1, kv_heads, length, head_dim]: a
    view when its blocks are consecutive (the usual case), else a gathered copy."""
    first_block = meta.contiguous_start_cpu[seq]
    if first_block is None:
        return gather_kv(cache, meta.block_tables[seq : seq + 1], length)
    start = first_block * cache.shape[1]
    return cache.view(-1, *cache.shape[2:])[start : start + length].transpose(0, 1)[None]


class TorchAttentionBackend:
    """Reads and writes the paged KV cache with torch ops only."""

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
        k_cache, v_cache = cache.k, cache.v
        write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        out = torch.empty_like(q)
        if meta.num_decodes:
            out[: meta.num_decodes] = self._decode(
                q[: meta.num_decodes], k_cache, v_cache, meta, scale
            )
        for i in range(meta.num_decodes, meta.num_seqs):
            start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
            out[start:end] = self._prefill(q, k, v, k_cache, v_cache, meta, i, scale)
        return out

    def _decode(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """All single-token queries at once, their contexts padded to the longest."""
        n = meta.num_decodes
        longest = max(meta.context_lens_cpu[:n])
        if n == 1:
            keys, values = (
                context_kv(k_cache, meta, 0, longest),
                context_kv(v_cache, meta, 0, longest),
            )
        else:
            tables = meta.block_tables[:n]
            keys, values = gather_kv(k_cache, tables, longest), gather_kv(v_cache, tables, longest)
        mask = None
        if min(meta.context_lens_cpu[:n]) != longest:
            positions = torch.arange(longest, device=q.device)
            mask = (positions[None, :] < meta.context_lens[:n, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q[:, :, None, :].to(keys.dtype),
            keys,
            values,
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        return out[:, :, 0, :].to(q.dtype)

    def _prefill(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, i: int, scale: float):
        """One prefill chunk: its queries are the last tokens of a context of n tokens."""
        start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
        query = q[start:end].transpose(0, 1)[None]
        length = meta.context_lens_cpu[i]
        if length == end - start:  # nothing cached before this chunk: attend to itself
            dtype = k_cache.dtype
            keys = k[start:end].transpose(0, 1)[None].to(dtype)
            values = v[start:end].transpose(0, 1)[None].to(dtype)
            out = F.scaled_dot_product_attention(
                query.to(dtype), keys, values, is_causal=True, scale=scale, enable_gqa=True
            )
            return out[0].transpose(0, 1).to(q.dtype)
        keys, values = context_kv(k_cache, meta, i, length), context_kv(v_cache, meta, i, length)
        num_queries = end - start
        mask = torch.ones(num_queries, length, dtype=torch.bool, device=q.device).tril(
            length - num_queries
        )
        out = F.scaled_dot_product_attention(
            query.to(keys.dtype), keys, values, attn_mask=mask, scale=scale, enable_gqa=True
        )
        return out[0].transpose(0, 1).to(q.dtype)
