"""Vertical-slash sparse prefill: the kept keys are exactly the estimated columns and
distances (checked against a mask built key by key), a pattern that keeps everything is
dense attention, and the engine with it switched on for long chunks still equals
transformers when the pattern covers the whole context."""

import pytest
import torch
import torch.nn.functional as F

from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.cli_options import parse_sparse_prefill
from tome.errors import InvalidRequestError
from tome.layers.sparse_prefill import SparsePrefillConfig, vertical_slash_attention


def random_qkv(heads: int, kv_heads: int, context: int, queries: int, dim: int = 16):
    generator = torch.Generator().manual_seed(context + queries)
    q = torch.randn(1, heads, queries, dim, generator=generator)
    k = torch.randn(1, kv_heads, context, dim, generator=generator)
    v = torch.randn(1, kv_heads, context, dim, generator=generator)
    return q, k, v


def naive_mask(q, k, scale, config: SparsePrefillConfig) -> torch.Tensor:
    """The vertical-slash mask [heads, queries, context], key by key, from the last
    queries' attention, as the MInference paper describes it."""
    heads, queries, context = q.shape[1], q.shape[2], k.shape[2]
    keys = k[0].repeat_interleave(heads // k.shape[1], 0)
    first = context - queries
    last = min(config.last_queries, queries)
    column = torch.zeros(heads, context)
    distance = torch.zeros(heads, context)
    for h in range(heads):
        for i in range(queries - last, queries):
            position = first + i
            scores = keys[h, : position + 1] @ q[0, h, i] * scale
            probs = scores.softmax(0)
            for j in range(position + 1):
                column[h, j] += probs[j]
                distance[h, position - j] += probs[j]
    column[:, : config.sink] = float("inf")
    distance[:, : config.local] = float("inf")
    kept_columns = column.topk(min(config.vertical + config.sink, context), 1).indices
    kept_distances = distance.topk(min(config.slash + config.local, context), 1).indices
    mask = torch.zeros(heads, queries, context, dtype=torch.bool)
    for h in range(heads):
        columns, distances = set(kept_columns[h].tolist()), set(kept_distances[h].tolist())
        for i in range(queries):
            position = first + i
            for j in range(position + 1):
                mask[h, i, j] = j in columns or (position - j) in distances
    return mask


@pytest.mark.parametrize(
    ("heads", "kv_heads", "context", "queries", "block"),
    [(4, 2, 150, 150, 32), (4, 1, 200, 64, 16), (2, 2, 97, 40, 128)],
)
def test_kept_keys_are_exactly_the_vertical_slash_pattern(heads, kv_heads, context, queries, block):
    config = SparsePrefillConfig(
        min_context=1, last_queries=12, vertical=10, slash=8, sink=3, local=5, query_block=block
    )
    q, k, v = random_qkv(heads, kv_heads, context, queries)
    mask = naive_mask(q, k, 0.3, config)
    assert 0.05 < mask.float().mean() < 0.6  # sparse, but not trivially so
    expected = F.scaled_dot_product_attention(
        q,
        k.repeat_interleave(heads // kv_heads, 1),
        v.repeat_interleave(heads // kv_heads, 1),
        attn_mask=mask[None],
        scale=0.3,
    )
    out = vertical_slash_attention(q, k, v, 0.3, config)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_a_pattern_that_keeps_everything_is_dense_attention():
    q, k, v = random_qkv(4, 2, 300, 120)
    config = SparsePrefillConfig(min_context=1, vertical=300, slash=300, query_block=32)
    mask = torch.ones(120, 300, dtype=torch.bool).tril(300 - 120)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(vertical_slash_attention(q, k, v, 0.25, config), dense)


def test_the_engine_with_a_covering_pattern_equals_transformers(tiny_llama):
    prompts = [[(7 * i + 3) % 5000 + 10 for i in range(length)] for length in (300, 90)]
    covering = SparsePrefillConfig(min_context=64, vertical=1024, slash=1024, query_block=64)
    llm = LLM(
        str(tiny_llama),
        sparse_prefill=covering,
        max_num_batched_tokens=128,
        kv_cache_memory=8 << 20,
    )
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    ours = [out.token_ids for out in llm.generate(prompts, params)]
    reference = load_reference(tiny_llama)
    assert ours == [reference_greedy(reference, prompt, 6)[0] for prompt in prompts]


@pytest.mark.parametrize(
    "fields", [{"vertical": 0}, {"min_context": 0}, {"sink": -1}, {"query_block": 0}]
)
def test_bad_settings_are_one_clear_error(fields):
    with pytest.raises(InvalidRequestError, match="sparse prefill"):
        SparsePrefillConfig(**fields)


def test_the_flag_takes_on_or_json():
    assert parse_sparse_prefill(None) is None
    assert parse_sparse_prefill("on") == SparsePrefillConfig()
    assert parse_sparse_prefill('{"vertical": 64}') == SparsePrefillConfig(vertical=64)
    for text, words in [
        ("{vertical}", "neither 'on' nor JSON"),
        ('{"verticals": 3}', "some of:"),
        ('{"vertical": 1.5}', "whole number"),
        ("[1]", "some of:"),
    ]:
        with pytest.raises(InvalidRequestError, match=words):
            parse_sparse_prefill(text)
