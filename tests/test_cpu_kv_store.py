"""The C++ KV store (tome/kernels/cpu/kv_store.cpp) writes into the paged cache exactly the
bytes the torch backend's write_kv writes: float32 and bfloat16 caches, int8 ones with
their scales, from float32 and bfloat16 models, rows of very different magnitudes, all-zero
rows and outlier channels, head sizes 32 to 128, K and V as views of a fused QKV projection,
a few decode tokens and a prompt long enough to be stored in parallel; each built for every
instruction set the CPU runs."""

import pytest
import torch

from tome.kernels.cpu_kv_store import cpu_store_kv, supports_cache
from tome.layers.kv_quantization import SCALE_DTYPE, is_quantized, rotation
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import write_kv

KV_HEADS = 3
BLOCK_SIZE = 16

pytestmark = pytest.mark.usefixtures("each_cpu_isa")


def make_cache(num_blocks: int, head_dim: int, dtype: torch.dtype) -> LayerKVCache:
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, head_dim)
    # Filled with a pattern, not zeros: a slot the store skips must keep what it held.
    k, v = (torch.full(shape, 3).to(dtype) for _ in range(2))
    if not is_quantized(dtype):
        return LayerKVCache(k, v)
    scales = [torch.full(shape[:-1], 5.0, dtype=SCALE_DTYPE) for _ in range(2)]
    return LayerKVCache(k, v, *scales)


def clone(cache: LayerKVCache) -> LayerKVCache:
    return LayerKVCache(*[t.clone() for t in cache.tensors()], read_dtype=cache.read_dtype)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def fused_kv(tokens: int, head_dim: int, dtype: torch.dtype, seed: int):
    """K and V as views of one [tokens, q + k + v] projection, as the attention layer has
    them: rows of magnitudes from 1e-3 to 1e3, one all-zero token, outlier channels."""
    generator = torch.Generator().manual_seed(seed)
    width = (2 * KV_HEADS + 4) * head_dim
    magnitudes = torch.logspace(-3, 3, tokens)[:, None]
    fused = torch.randn(tokens, width, generator=generator) * magnitudes
    fused[tokens // 2] = 0
    fused[tokens // 3, :3] = 50.0
    fused = fused.to(dtype)
    k = fused[:, 4 * head_dim : (4 + KV_HEADS) * head_dim].view(tokens, KV_HEADS, head_dim)
    v = fused[:, (4 + KV_HEADS) * head_dim :].view(tokens, KV_HEADS, head_dim)
    return k, v


@pytest.mark.parametrize(
    "kv_dtype, dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.int8, torch.float32),
        (torch.int8, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("head_dim", [32, 64, 80, 128])
@pytest.mark.parametrize("tokens", [1, 5, 300])
def test_store_writes_what_write_kv_writes(kv_dtype, dtype, head_dim, tokens):
    reference = make_cache(24, head_dim, kv_dtype)
    ours = clone(reference)
    assert supports_cache(ours)
    k, v = fused_kv(tokens, head_dim, dtype, seed=tokens + head_dim)
    slots = torch.randperm(24 * BLOCK_SIZE, generator=torch.Generator().manual_seed(0))[:tokens]
    write_kv(reference, k, v, slots)
    cpu_store_kv(ours, k, v, slots)
    for theirs, mine in zip(reference.tensors(), ours.tensors(), strict=True):
        assert same_bytes(theirs, mine)


def test_int8_codes_divide_by_the_scale_not_multiply_by_its_reciprocal():
    """Where x / scale lies a rounding step past a half and x * (1 / scale) on it, the two
    round to different codes: torch divides, and so must the store (under -ffast-math
    GCC multiplied on some CPUs, one code in 10^5 off)."""
    tokens, head_dim = 4096, 64
    k, v = fused_kv(tokens, head_dim, torch.float32, seed=7)
    rotated = torch.stack((k, v)) @ rotation(head_dim, k.device)
    scale = rotated.abs().amax(-1, keepdim=True) / 127
    apart = (rotated / scale).round() != (rotated * (1 / scale)).round()
    assert apart.sum() >= 3  # the data holds such values: the test can fail
    reference = make_cache(tokens // BLOCK_SIZE, head_dim, torch.int8)
    ours = clone(reference)
    slots = torch.arange(tokens)
    write_kv(reference, k, v, slots)
    cpu_store_kv(ours, k, v, slots)
    assert same_bytes(reference.k, ours.k) and same_bytes(reference.v, ours.v)


def test_bfloat16_rounding_keeps_nan_and_infinities():
    reference = make_cache(1, 64, torch.bfloat16)
    ours = clone(reference)
    k, v = fused_kv(4, 64, torch.float32, seed=1)
    k[0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    slots = torch.tensor([0, 3, 7, 15])
    write_kv(reference, k, v, slots)
    cpu_store_kv(ours, k, v, slots)
    assert same_bytes(reference.k, ours.k) and same_bytes(reference.v, ours.v)


def test_negative_slots_are_not_stored():
    cache = make_cache(2, 64, torch.float32)
    before = clone(cache)
    k, v = fused_kv(3, 64, torch.float32, seed=2)
    cpu_store_kv(cache, k, v, torch.tensor([4, -1, 9]))
    changed = (cache.k.view(-1, KV_HEADS * 64) != before.k.view(-1, KV_HEADS * 64)).any(1)
    assert changed.nonzero().flatten().tolist() == [4, 9]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn])
def test_other_cache_dtypes_are_left_to_write_kv(dtype):
    assert not supports_cache(make_cache(1, 64, dtype))
