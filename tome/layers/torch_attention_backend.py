"""Paged attention in plain PyTorch: the CPU backend and the reference the GPU kernels are
checked against. It never builds a score matrix over the whole prompt: a prefill chunk
attends to its context of n tokens through SDPA's tiled kernel, its queries taken a few
rows at a time so that each row slice's causal mask (rows x n) stays within a fixed
number of elements however long the context grows."""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.chunk_attention import continue_chunk_attention
from tome.layers.kv_quantization import dequantize_from_cache, quantize_for_cache, round_trip
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.sparse_prefill import vertical_slash_attention

# Elements of one causal mask slice. SDPA's CPU kernel holds about 8 bytes per element
# (the bool mask, a float copy, its own buffers): some 35 MB, whatever the context length.
MASK_ELEMENTS = 1 << 22
# Runs of consecutive blocks a decode reads as separate views; a context in more pieces is
# gathered into one copy. Measured with SmolLM2's heads over 2,112 tokens: 1 run 0.19 ms,
# 16 runs 0.41, 132 one-block runs 2.1 ms in views against 0.6 ms gathered.
MAX_CONTEXT_VIEWS = 16


def write_kv(
    cache: LayerKVCache, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store the new tokens' K/V ([tokens, kv_heads, head_dim]) in their cache slots,
    quantized with their scales when the cache is (K and V in one call: at decode the
    quantization's dozen small ops cost more than their arithmetic). A latent cache's one
    tensor is written once, from k."""
    vectors = [k] if cache.shares_kv else [k, v]
    if cache.quantized:
        values, scales = quantize_for_cache(torch.stack(vectors), cache.k.dtype)
        _write_slots(cache.k, values[0], slot_mapping, cache.k_scale, scales[0])
        if not cache.shares_kv:
            _write_slots(cache.v, values[1], slot_mapping, cache.v_scale, scales[1])
    else:
        _write_slots(cache.k, k.to(cache.k.dtype), slot_mapping)
        if not cache.shares_kv:
            _write_slots(cache.v, v.to(cache.v.dtype), slot_mapping)


def _write_slots(
    store: torch.Tensor,
    values: torch.Tensor,
    slot_mapping: torch.Tensor,
    scale: torch.Tensor | None = None,
    new_scale: torch.Tensor | None = None,
) -> None:
    slots = store.view(-1, *store.shape[2:])
    if scale is None:
        slots.index_copy_(0, slot_mapping, values)
        return
    # As raw bytes: CPU index_copy_ has no float8 kernel.
    slots.view(torch.uint8).index_copy_(0, slot_mapping, values.view(torch.uint8))
    scale.view(-1, scale.shape[2]).index_copy_(0, slot_mapping, new_scale)


def read_kv(
    cache: LayerKVCache, select: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A context's K and V in the cache's compute dtype; `select` picks the context's slots
    out of a pool tensor (gather_kv or context_kv). A quantized cache dequantizes only the
    slots selected: memory is bounded by the context read, never by the pool. A latent
    cache's one tensor is read once and serves as both."""
    if not cache.quantized:
        keys = select(cache.k)
        return keys, keys if cache.shares_kv else select(cache.v)
    keys = dequantize_from_cache(select(cache.k), select(cache.k_scale), cache.read_dtype)
    if cache.shares_kv:
        return keys, keys
    return keys, dequantize_from_cache(select(cache.v), select(cache.v_scale), cache.read_dtype)


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, length: int) -> torch.Tensor:
    """[seqs, kv_heads, length, *rest] from blocks of [num_blocks, block_size, kv_heads, *rest]
    (rest: head_dim for K/V, nothing for scales)."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    blocks = cache[block_tables[:, :num_blocks]]  # [seqs, blocks, block_size, kvh, d]
    seqs = blocks.shape[0]
    return blocks.reshape(seqs, num_blocks * block_size, *cache.shape[2:])[:, :length].transpose(
        1, 2
    )


def context_kv(cache: torch.Tensor, meta: AttentionMetadata, seq: int, length: int) -> torch.Tensor:
    """One sequence's first `length` cached K or V as [1, kv_heads, length, head_dim] (or a
    scale tensor's [1, kv_heads, length]): a view when its blocks are consecutive (the usual
    case for a prompt), else a gathered copy."""
    runs = meta.context_runs_cpu[seq]
    if len(runs) > 1:
        return gather_kv(cache, meta.block_tables[seq : seq + 1], length)
    return run_kv(cache, runs[0][0], length).transpose(0, 1)[None]


def run_kv(cache: torch.Tensor, first_slot: int, tokens: int) -> torch.Tensor:
    """[tokens, kv_heads, *rest]: a view of the pool's slots first_slot onwards."""
    return cache.view(-1, *cache.shape[2:])[first_slot : first_slot + tokens]


def decode_context(
    cache: LayerKVCache, meta: AttentionMetadata, seq: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A decoding sequence's cached K and V as [tokens, kv_heads, d] pieces in context order:
    views of its runs of consecutive blocks, or, when it is scattered over more than
    MAX_CONTEXT_VIEWS runs, one gathered copy (a matrix product per short run costs more in
    call overhead than copying the context once)."""
    runs = meta.context_runs_cpu[seq]
    if len(runs) <= MAX_CONTEXT_VIEWS:
        return [read_kv(cache, partial(run_kv, first_slot=slot, tokens=n)) for slot, n in runs]
    table, length = meta.block_tables[seq : seq + 1], meta.context_lens_cpu[seq]
    return [read_kv(cache, lambda t: gather_kv(t, table, length)[0].transpose(0, 1))]


def decode_attention(
    q: torch.Tensor, context: list[tuple[torch.Tensor, torch.Tensor]], scale: float
) -> torch.Tensor:
    """One sequence's single query ([heads, d]) over its context (decode_context's pieces),
    with nothing padded or copied: the query heads of a GQA group are rows of one matrix
    product with their KV head, one softmax spans every piece."""
    kv_heads, head_dim = context[0][0].shape[1], q.shape[-1]
    query = q.view(kv_heads, -1, head_dim).to(context[0][0].dtype)
    scores = torch.cat([torch.bmm(query, keys.permute(1, 2, 0)) for keys, _ in context], dim=-1)
    probs = (scores * scale).softmax(-1).split([keys.shape[0] for keys, _ in context], dim=-1)
    out = torch.bmm(probs[0], context[0][1].transpose(0, 1))
    for weights, (_, values) in zip(probs[1:], context[1:], strict=True):
        out.baddbmm_(weights, values.transpose(0, 1))
    return out.view(-1, head_dim).to(q.dtype)


class TorchAttentionBackend:
    """Reads and writes the paged KV cache with torch ops only."""

    # Its decodes read the host's copy of the batch's metadata: a CUDA graph would replay
    # the captured batch's.
    graph_safe = False

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
        self._store(cache, k, v, meta.slot_mapping)
        out = torch.empty_like(q)
        if meta.num_decodes:
            out[: meta.num_decodes] = self._decode(q[: meta.num_decodes], cache, meta, scale)
        for i in range(meta.num_decodes, meta.num_seqs):
            start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
            out[start:end] = self._prefill(q, k, v, cache, meta, i, scale)
        return out

    def _store(self, cache: LayerKVCache, k, v, slot_mapping: torch.Tensor) -> None:
        write_kv(cache, k, v, slot_mapping)

    def _decode(self, q, cache: LayerKVCache, meta: AttentionMetadata, scale: float):
        """On CPU each query over its own context in place in the pool: a padded copy of a
        batch's contexts costs more there than the attention itself. Elsewhere (a GPU
        without Triton) one batched call, as a loop would pay a launch per sequence."""
        if q.device.type != "cpu":
            return self._decode_padded(q, cache, meta, scale)
        out = torch.empty_like(q)
        for i in range(meta.num_decodes):
            out[i] = decode_attention(q[i], decode_context(cache, meta, i), scale)
        return out

    def _decode_padded(self, q, cache: LayerKVCache, meta: AttentionMetadata, scale: float):
        """All single-token queries at once, their contexts gathered and padded to the
        longest."""
        n = meta.num_decodes
        longest = max(meta.context_lens_cpu[:n])
        tables = meta.block_tables[:n]
        keys, values = read_kv(cache, lambda t: gather_kv(t, tables, longest))
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

    def _prefill(self, q, k, v, cache: LayerKVCache, meta: AttentionMetadata, i: int, scale: float):
        """One prefill chunk: its queries are the last tokens of a context of n tokens."""
        start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
        query = q[start:end].transpose(0, 1)[None]
        length = meta.context_lens_cpu[i]
        if meta.attends_sparsely(i):
            keys, values = read_kv(cache, lambda t: context_kv(t, meta, i, length))
            out = vertical_slash_attention(
                query.to(keys.dtype), keys, values, scale, meta.sparse_prefill
            )
            return out[0].transpose(0, 1).to(q.dtype)
        if length == end - start:  # nothing cached before this chunk: attend to itself
            # As stored and read back, so outputs do not depend on how a prompt was chunked.
            dtype, stored = cache.compute_dtype, cache.k.dtype
            keys = round_trip(k[start:end].transpose(0, 1)[None], stored, dtype)
            values = (
                keys
                if cache.shares_kv
                else round_trip(v[start:end].transpose(0, 1)[None], stored, dtype)
            )
            # Contiguous heads: SDPA's CPU kernel runs 5% faster on them than on views of
            # the fused QKV rows, which costs a copy of 1% of its time (8,191 tokens).
            out = F.scaled_dot_product_attention(
                *(x.contiguous() for x in (query.to(dtype), keys, values)),
                is_causal=True,
                scale=scale,
                enable_gqa=True,
            )
            return out[0].transpose(0, 1).to(q.dtype)
        keys, values = read_kv(cache, lambda t: context_kv(t, meta, i, length))
        query = query.to(keys.dtype)
        if q.device.type == "cpu":
            out = continue_chunk_attention(query, keys, values, scale)
            return out[0].transpose(0, 1).to(q.dtype)
        num_queries = end - start
        rows = max(1, MASK_ELEMENTS // length)
        out = torch.empty_like(query)
        for first in range(0, num_queries, rows):
            last = min(first + rows, num_queries)
            # Query j sits at context position length - num_queries + j and sees up to it.
            seen = length - num_queries + last
            mask = torch.ones(last - first, seen, dtype=torch.bool, device=q.device).tril(
                seen - (last - first)
            )
            out[:, :, first:last] = F.scaled_dot_product_attention(
                query[:, :, first:last],
                keys[:, :, :seen],
                values[:, :, :seen],
                attn_mask=mask,
                scale=scale,
                enable_gqa=True,
            )
        return out[0].transpose(0, 1).to(q.dtype)
