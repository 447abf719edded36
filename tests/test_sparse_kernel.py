"""The vertical-slash sparse prefill kernel (tome/kernels/sparse_prefill_attention.py) keeps
exactly the keys of a pattern (checked against a mask built key by key), gives what the
torch reference vertical_slash_attention gives over the paged cache (GQA ratios, head and
block sizes, a chunk at the end of a longer context, float, bfloat16 and int8 caches), and
the engine with it gives the torch backend's tokens. Run in Triton's CPU interpreter at
small sizes, and compiled on a GPU (tests/conftest.py's KERNEL_DEVICE) with contexts of 16k
to 32k tokens and the default pattern sizes added."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import KERNEL_DEVICE
from tests.test_kernels import ON_GPU, TOLERANCE, clone, random_normal, random_step, uses_triton
from tome import LLM, SamplingParams
from tome.kernels.sparse_prefill_attention import attend_pattern, sparse_prefill_attention
from tome.layers.attention_backends import BACKEND_ENV
from tome.layers.kv_quantization import SCALE_DTYPE, is_quantized
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.sparse_prefill import SparsePrefillConfig, vertical_slash_attention
from tome.layers.torch_attention_backend import TorchAttentionBackend, gather_kv, read_kv, write_kv
from tome.layers.triton_attention_backend import TritonAttentionBackend

KV_HEADS = 2
# The defaults scaled down to contexts of a few hundred tokens: a fraction of keys kept.
CONFIG = SparsePrefillConfig(
    min_context=64, last_queries=16, vertical=8, slash=8, sink=4, local=16, query_block=64
)


def paged_context(context, head_dim, block_size, kv_dtype, dtype, generator):
    """A cache holding one sequence's context of random K/V in blocks scattered over the
    pool, its block table, and the last queries' q [queries, heads, head_dim]."""
    num_blocks = -(-context // block_size)
    table = torch.randperm(num_blocks + 2, generator=generator, device=KERNEL_DEVICE)
    table = table[:num_blocks]
    shape = (num_blocks + 2, block_size, KV_HEADS, head_dim)
    scales = [torch.zeros(shape[:-1], dtype=SCALE_DTYPE, device=KERNEL_DEVICE) for _ in range(2)]
    cache = LayerKVCache(
        torch.zeros(shape, dtype=kv_dtype, device=KERNEL_DEVICE),
        torch.zeros(shape, dtype=kv_dtype, device=KERNEL_DEVICE),
        *(scales if is_quantized(kv_dtype) else []),
        read_dtype=dtype,
    )
    offsets = torch.arange(block_size, device=KERNEL_DEVICE)
    slots = (table[:, None] * block_size + offsets).flatten()[:context]
    k, v = (random_normal(context, KV_HEADS, head_dim, generator=generator) for _ in range(2))
    write_kv(cache, k.to(dtype), v.to(dtype), slots)
    return cache, table


def masked_reference(q, keys, values, columns, distances, scale):
    """Attention of q [queries, heads, d] (the context's last) over keys [kv_heads, n, d]
    with the mask built key by key (on the host): causal, and a kept column or a kept
    distance."""
    heads, context = columns.shape
    group = heads // keys.shape[0]
    columns, distances = columns.tolist(), distances.tolist()
    mask = torch.zeros(heads, q.shape[0], context, dtype=torch.bool)
    for h in range(heads):
        for i, position in enumerate(range(context - q.shape[0], context)):
            for j in range(position + 1):
                mask[h, i, j] = columns[h][j] or distances[h][position - j]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).float(),
        keys.repeat_interleave(group, 0).float(),
        values.repeat_interleave(group, 0).float(),
        attn_mask=mask.to(q.device),
        scale=scale,
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize(
    "gqa, head_dim, block_size, block_m, block_n",
    [(1, 64, 16, 16, 16), (2, 128, 32, 32, 16), (4, 64, 32, 64, 64)],
)
def test_kept_keys_are_exactly_the_pattern(gqa, head_dim, block_size, block_m, block_n):
    """Any pattern, not only an estimated one: columns and distances kept at random, with
    rows keeping different numbers of them, ranges of many key tiles and lone columns."""
    generator = torch.Generator(KERNEL_DEVICE).manual_seed(gqa + head_dim + block_m)
    context, queries, heads = 150, 70, KV_HEADS * gqa
    cache, table = paged_context(
        context, head_dim, block_size, torch.float32, torch.float32, generator
    )
    q = random_normal(queries, heads, head_dim, generator=generator)
    columns = torch.rand(heads, context, generator=generator, device=KERNEL_DEVICE) < 0.1
    distances = torch.rand(heads, context, generator=generator, device=KERNEL_DEVICE) < 0.15
    distances[:, 0] = True  # as estimate_pattern always keeps: every row sees a key
    keep_all = SparsePrefillConfig(vertical=context, slash=context)
    out = attend_pattern(q, cache, table, columns, distances, 0.125, keep_all, block_m, block_n)
    keys, values = (gather_kv(t, table[None], context)[0] for t in (cache.k, cache.v))
    expected = masked_reference(q, keys, values, columns, distances, 0.125)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


# The engine's defaults (sparse from 16k tokens of context, 1024 columns and distances).
FULL_CONFIG = SparsePrefillConfig()
SPARSE_CASES = [  # gqa, head_dim, block_size, kv_dtype, dtype, context, queries, config
    (1, 64, 16, torch.float32, torch.float32, 300, 300, CONFIG),  # a whole prompt in one chunk
    (2, 128, 32, torch.float32, torch.float32, 400, 100, CONFIG),  # the end of a longer one
    (4, 64, 32, torch.bfloat16, torch.bfloat16, 300, 120, CONFIG),
    (2, 64, 16, torch.int8, torch.float32, 350, 90, CONFIG),
    (4, 128, 16, torch.int8, torch.bfloat16, 260, 70, CONFIG),
]
if ON_GPU:
    SPARSE_CASES += [
        (4, 128, 16, torch.bfloat16, torch.bfloat16, 32768, 4096, FULL_CONFIG),
        (8, 128, 32, torch.bfloat16, torch.bfloat16, 16384, 16384, FULL_CONFIG),
        (7, 128, 16, torch.float16, torch.float16, 20000, 3000, FULL_CONFIG),
        (4, 128, 32, torch.int8, torch.bfloat16, 32768, 2048, FULL_CONFIG),
        (4, 128, 16, torch.float8_e4m3fn, torch.bfloat16, 24576, 1500, FULL_CONFIG),
    ]


@pytest.mark.parametrize(
    "gqa, head_dim, block_size, kv_dtype, dtype, context, queries, config", SPARSE_CASES
)
def test_sparse_prefill_equals_the_torch_reference(
    gqa, head_dim, block_size, kv_dtype, dtype, context, queries, config
):
    generator = torch.Generator(KERNEL_DEVICE).manual_seed(context + queries + gqa)
    cache, table = paged_context(context, head_dim, block_size, kv_dtype, dtype, generator)
    q = random_normal(queries, KV_HEADS * gqa, head_dim, generator=generator).to(dtype)
    scale = head_dim**-0.5
    out = sparse_prefill_attention(q, cache, table, context, scale, config)
    keys, values = read_kv(cache, lambda t: gather_kv(t, table[None], context))
    query = q.transpose(0, 1)[None].to(keys.dtype)
    expected = vertical_slash_attention(query, keys, values, scale, config)[0].transpose(0, 1)
    assert out.dtype == q.dtype
    torch.testing.assert_close(out, expected.to(dtype), atol=TOLERANCE[dtype], rtol=0)
    # Keys left out: the last rows differ from dense attention (only they are compared, so
    # that a 16k-token chunk's dense scores need not fit in memory).
    last = min(queries, 64)
    mask = torch.ones(last, context, dtype=torch.bool, device=KERNEL_DEVICE).tril(context - last)
    dense = F.scaled_dot_product_attention(
        query[:, :, -last:], keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )
    assert not torch.allclose(expected[-last:], dense[0].transpose(0, 1), atol=1e-2)


def test_sparse_chunks_beside_dense_ones_match_the_torch_backend():
    """A decode, a short chunk (dense) and a chunk over a cached prefix (sparse) in one step."""
    contexts, query_lens = [17, 40, 200], [1, 40, 77]
    cache, q, k, v, meta = random_step(contexts, query_lens, 1, 2, 64, 16, *[torch.float32] * 2)
    meta.sparse_prefill = CONFIG  # only the 200-token context reaches min_context
    reference_cache = clone(cache)
    expected = TorchAttentionBackend().forward(q, k, v, reference_cache, meta, 0.125)
    out = TritonAttentionBackend().forward(q, k, v, cache, meta, 0.125)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_engine_with_the_sparse_kernel_equals_the_torch_backend(tiny_llama, monkeypatch):
    prompts = [[(7 * i + 3) % 5000 + 10 for i in range(length)] for length in (300, 90)]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0)

    def generate(backend: str):
        monkeypatch.setenv(BACKEND_ENV, backend)
        llm = LLM(
            str(tiny_llama),
            device=KERNEL_DEVICE,
            dtype="float32",
            sparse_prefill=CONFIG,
            max_num_batched_tokens=128,
            kv_cache_memory=8 << 20,
        )
        assert uses_triton(llm) == (backend == "triton")
        return llm.generate(prompts, params)

    expected = generate("torch")
    for ours, theirs in zip(generate("triton"), expected, strict=True):
        assert ours.token_ids == theirs.token_ids
        mine = torch.tensor([token.logprob for token in ours.logprobs])
        reference = torch.tensor([token.logprob for token in theirs.logprobs])
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=0)
