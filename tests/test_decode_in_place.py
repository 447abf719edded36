"""The CPU decode path reads each sequence's context in place, as views of its runs of
consecutive blocks: the runs cover exactly the context's slots, and attention over them
equals torch's SDPA over the context gathered token by token, whether it is read as views or,
scattered over too many runs, as one gathered copy."""

from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tome.layers import torch_attention_backend
from tome.layers.attention_metadata import context_runs
from tome.layers.kv_quantization import is_quantized
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import decode_attention, decode_context, read_kv, write_kv

BLOCK_SIZE = 8


def slots_of(table: list[int], length: int) -> list[int]:
    return [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(length)]


@pytest.mark.parametrize(
    ("table", "length"),
    [
        ([3, 4, 5], 20),  # one run, the last block part full
        ([3, 4, 9, 10, 0], 33),  # three runs
        ([7, 2, 5, 6], 25),  # a one-block run first
        ([4], 1),
        ([1, 2, 0, 0], 16),  # padding past the context is ignored
    ],
)
def test_runs_cover_exactly_the_contexts_slots(table, length):
    runs = context_runs(torch.tensor([table]), [length], BLOCK_SIZE)[0]
    covered = [slot for first, tokens in runs for slot in range(first, first + tokens)]
    assert covered == slots_of(table, length)
    # Maximal: no run starts where the one before it ends.
    assert all(a[0] + a[1] != b[0] for a, b in pairwise(runs))


@pytest.mark.parametrize(
    ("table", "length", "stretches"),
    [
        # A freed region taken tail first: its full blocks are one stretch, the part-filled
        # last block (the lowest id) another.
        ([12, 11, 10, 9], 30, 2),
        ([5, 3, 4, 6], 32, 1),
        ([9, 10, 4, 11], 27, 2),
        ([9, 11, 10], 20, 2),  # the part-filled block 10 ends its stretch
    ],
)
def test_a_decodes_runs_cover_its_slots_in_block_order(table, length, stretches):
    runs = context_runs(torch.tensor([table]), [length], BLOCK_SIZE, num_decodes=1)[0]
    covered = sorted(slot for first, tokens in runs for slot in range(first, first + tokens))
    assert covered == sorted(slots_of(table, length))
    assert len(runs) == stretches


# Read as views of its runs, or gathered (more runs than views allowed).
@pytest.mark.parametrize("max_views", [16, 1])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 4, 16), (9, 3, 64), (8, 1, 32)])
def test_decode_equals_sdpa_over_the_gathered_context(
    kv_dtype, heads, kv_heads, head_dim, max_views, monkeypatch
):
    generator = torch.Generator().manual_seed(heads * 7 + head_dim)
    num_blocks, length = 24, 61
    table = torch.randperm(num_blocks, generator=generator)[:8].tolist()
    table[2:5] = [22, 21, 20]  # a run of three, tail first, among scattered blocks
    shape = (num_blocks, BLOCK_SIZE, kv_heads, head_dim)
    if is_quantized(kv_dtype):
        scales = [torch.zeros(shape[:-1]) for _ in range(2)]
        cache = LayerKVCache(
            torch.zeros(shape, dtype=kv_dtype), torch.zeros(shape, dtype=kv_dtype), *scales
        )
    else:
        cache = LayerKVCache(torch.zeros(shape), torch.zeros(shape))
    k = torch.randn(length, kv_heads, head_dim, generator=generator)
    v = torch.randn(length, kv_heads, head_dim, generator=generator)
    slots = torch.tensor(slots_of(table, length))
    write_kv(cache, k, v, slots)
    q = torch.randn(heads, head_dim, generator=generator)
    runs = context_runs(torch.tensor([table]), [length], BLOCK_SIZE, num_decodes=1)[0]
    assert 1 < len(runs) < len(table)

    meta = SimpleNamespace(
        block_tables=torch.tensor([table]), context_lens_cpu=[length], context_runs_cpu=[runs]
    )
    monkeypatch.setattr(torch_attention_backend, "MAX_CONTEXT_VIEWS", max_views)
    ours = decode_attention(q, decode_context(cache, meta, 0), scale=head_dim**-0.5)

    keys, values = read_kv(cache, lambda t: t.view(-1, *t.shape[2:])[slots].transpose(0, 1)[None])
    expected = F.scaled_dot_product_attention(
        q[None, :, None], keys, values, scale=head_dim**-0.5, enable_gqa=True
    )[0, :, 0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
