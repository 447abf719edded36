"""A prefill chunk's attention over its cached context and itself, as two flash-attention
calls merged by log-sum-exp, against SDPA with the chunk's causal mask computed in float64:
GQA groups of 1 to 4, chunks of 1 to 300 queries over contexts up to 1,000 tokens, keys
as strided views of a paged pool, float32 and bfloat16."""

import pytest
import torch
import torch.nn.functional as F

from tome.layers.chunk_attention import continue_chunk_attention


def reference(query, keys, values, scale):
    n, length = query.shape[2], keys.shape[2]
    mask = torch.ones(n, length, dtype=torch.bool).tril(length - n)
    return F.scaled_dot_product_attention(
        query.double(), keys.double(), values.double(), attn_mask=mask, scale=scale, enable_gqa=True
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (9, 3), (8, 2)])
@pytest.mark.parametrize(("n", "length"), [(1, 2), (7, 40), (300, 301), (256, 1000)])
def test_equals_masked_attention_over_the_context(dtype, heads, kv_heads, n, length):
    generator = torch.Generator().manual_seed(n + length + heads)
    head_dim = 64
    # A pool of [slots, kv_heads, d] read as [1, kv_heads, length, d]: strided, as the cache.
    pool = torch.randn(length + 5, kv_heads, head_dim, generator=generator).to(dtype)
    keys = pool[:length].transpose(0, 1)[None]
    values = (2 * pool[5:]).transpose(0, 1)[None]
    query = torch.randn(1, heads, n, head_dim, generator=generator).to(dtype)
    out = continue_chunk_attention(query, keys, values, scale=0.125)
    assert out.shape == query.shape and out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        out.double(), reference(query, keys, values, 0.125), rtol=tolerance, atol=tolerance
    )
