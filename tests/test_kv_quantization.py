"""Quantized KV caches (int8, fp8 e4m3 with a float32 scale per token and head): round-trip
error within the formats' precision, the pool stores and reads back the right slots, blocks
still move by rows, bytes per token, greedy agreement with the float cache, and typed errors."""

import random
from types import SimpleNamespace

import pytest
import torch
import transformers

from tests.conftest import make_tiny_model, tiny_config
from tome import LLM, SamplingParams
from tome.engine import kv_cache
from tome.engine.config import EngineConfig
from tome.engine.kv_cache import KVPool, kv_bytes_per_token, resolve_kv_cache_dtype
from tome.errors import InvalidRequestError
from tome.layers.attention_metadata import context_runs
from tome.layers.kv_quantization import dequantize, quantize, rotation, round_trip
from tome.layers.torch_attention_backend import context_kv, gather_kv, read_kv, write_kv
from tome.models.config import ModelConfig

FP8 = torch.float8_e4m3fn


def token_heads(tokens: int = 64, heads: int = 4, head_dim: int = 32) -> torch.Tensor:
    """Random K/V rows whose magnitudes differ by up to 10^6 between token-heads, so a
    shared scale would crush the small ones."""
    gen = torch.Generator().manual_seed(0)
    magnitudes = 10 ** (torch.rand(tokens, heads, 1, generator=gen) * 6 - 3)
    return torch.randn(tokens, heads, head_dim, generator=gen) * magnitudes


def test_int8_error_is_at_most_half_a_step_per_token_head():
    x = token_heads()
    values, scales = quantize(x, torch.int8)
    assert values.dtype == torch.int8 and scales.shape == x.shape[:-1]
    error = (dequantize(values, scales, torch.float32) - x).abs()
    # Rounding to the nearest of 127 steps up to the row's max abs: within half a step,
    # amax / 254, comfortably inside the amax / 127 an int8 cache may cost.
    amax = x.abs().amax(dim=-1, keepdim=True)
    assert (error <= amax / 254 * (1 + 1e-5)).all()


def test_fp8_error_is_within_e4m3_precision():
    x = token_heads()
    values, scales = quantize(x, FP8)
    assert values.dtype == FP8
    error = (dequantize(values, scales, torch.float32) - x).abs()
    # e4m3 keeps 3 mantissa bits: a normal value is off by at most half a unit in the last
    # place, 2^-4 of itself; below the smallest normal (2^-6, in scaled units) the spacing
    # is 2^-9, so at most 2^-10 of the scale.
    bound = torch.maximum(x.abs() * 2**-4, scales[..., None] * 2**-10)
    assert (error <= bound * (1 + 1e-5)).all()
    # The row's largest value maps onto e4m3's largest, 448, which is exact.
    assert (values.float().abs().amax(dim=-1) == 448).all()


@pytest.mark.parametrize("head_dim", [64, 96])
def test_the_cache_rotation_is_orthogonal(head_dim):
    matrix = rotation(head_dim, torch.device("cpu"))
    assert torch.allclose(matrix @ matrix.T, torch.eye(head_dim), atol=1e-5)


def test_rotation_shrinks_int8_error_on_keys_with_outlier_channels():
    # Real models' keys carry a few channels many times larger than the rest (SmolLM2's
    # rows: max / rms of 5-6); one scale per row then leaves the rest few levels.
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(256, 4, 64, generator=gen)
    keys[..., [3, 17]] *= 12
    plain = (dequantize(*quantize(keys, torch.int8), torch.float32) - keys).norm()
    rotated = (round_trip(keys, torch.int8, torch.float32) - keys).norm()
    assert rotated < plain / 2


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
def test_zero_rows_stay_zero(dtype):
    x = torch.zeros(3, 2, 8)
    assert (dequantize(*quantize(x, dtype), torch.float32) == 0).all()


def tiny_model_config(**overrides) -> ModelConfig:
    return ModelConfig.from_hf(tiny_config("llama", vocab_size=256, **overrides))


def metadata(block_table: list[int], length: int, block_size: int) -> SimpleNamespace:
    """The two AttentionMetadata fields context_kv reads."""
    tables = torch.tensor([block_table])
    return SimpleNamespace(
        block_tables=tables, context_runs_cpu=context_runs(tables, [length], block_size)
    )


def write_sequence(cache, block_table: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
    block_size = cache.k.shape[1]
    positions = torch.arange(k.shape[0])
    blocks = torch.tensor(block_table)[positions // block_size]
    write_kv(cache, k, v, blocks * block_size + positions % block_size)


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
def test_pool_reads_back_what_was_written(dtype):
    """Through the backend's write and both read paths (a view over consecutive blocks, a
    gathered copy otherwise), K and V come back within the format's rounding of what went
    in. Rows are stored rotated, and a rotation keeps lengths: a row's error, measured as a
    length, is bounded through its length, which also bounds the rotated row's max abs."""
    config = tiny_model_config()
    pool = KVPool(config, num_blocks=8, block_size=8, dtype=dtype, device=torch.device("cpu"))
    cache = pool.layers[1]
    k, v = token_heads(20, 2, config.head_dim), token_heads(20, 2, config.head_dim) * 3
    for table in ([2, 3, 4], [6, 0, 5]):
        write_sequence(cache, table, k, v)
        meta = metadata(table, 20, block_size=8)
        keys, values = read_kv(cache, lambda t, meta=meta: context_kv(t, meta, 0, 20))
        assert keys.dtype == torch.float32 and keys.shape == (1, 2, 20, config.head_dim)
        for read, original in ((keys[0].transpose(0, 1), k), (values[0].transpose(0, 1), v)):
            length, dims = original.norm(dim=-1), config.head_dim
            if dtype == torch.int8:  # half a step per element, a step being amax / 127
                bound = dims**0.5 * length / 254
            else:  # 2^-4 of each value, or 2^-10 of the scale (amax / 448) below normals
                bound = length * 2**-4 + dims**0.5 * length / 448 * 2**-10
            assert ((read - original).norm(dim=-1) <= bound * (1 + 1e-5)).all()


def test_a_block_moves_by_copying_its_row_of_every_tensor():
    """The host-tier contract: scales lead with the block like K and V, and tensors()
    lists them, so copying row b of each tensor copies block b whole."""
    config = tiny_model_config()
    pool = KVPool(config, num_blocks=4, block_size=8, dtype=torch.int8, device=torch.device("cpu"))
    assert len(pool.tensors()) == 4 * config.num_hidden_layers
    assert all(t.shape[:2] == (4, 8) for t in pool.tensors())
    cache = pool.layers[0]
    k = token_heads(8, 2, config.head_dim)
    write_sequence(cache, [1], k, k * 2)
    for tensor in pool.tensors():
        tensor[3] = tensor[1]
    tables = torch.tensor([[1], [3]])
    keys, values = read_kv(cache, lambda t: gather_kv(t, tables, 8))
    assert keys[0].abs().sum() > 0
    assert torch.equal(keys[0], keys[1]) and torch.equal(values[0], values[1])


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_int8_pool_holds_a_token_in_half_the_float16_bytes_plus_scales(head_dim):
    config = tiny_model_config(hidden_size=4 * head_dim, head_dim=head_dim)
    cpu = torch.device("cpu")
    int8 = KVPool(config, num_blocks=2, block_size=16, dtype=torch.int8, device=cpu)
    half = KVPool(config, num_blocks=2, block_size=16, dtype=torch.float16, device=cpu)
    # Per token, layer, K or V, and KV head: head_dim bytes and a 4-byte scale, against
    # 2 * head_dim bytes: a ratio of (head_dim + 4) / (2 * head_dim), 0.53 at head_dim 64.
    per_token_head = {"int8": head_dim + 4, "float16": 2 * head_dim}
    for pool, name in ((int8, "int8"), (half, "float16")):
        expected = 2 * 2 * 2 * per_token_head[name]  # layers, K and V, KV heads
        assert pool.bytes_per_block == 16 * expected
        assert kv_bytes_per_token(config, pool.layers[0].k.dtype) == expected
    assert int8.bytes_per_block / half.bytes_per_block == (head_dim + 4) / (2 * head_dim)


def test_unknown_kv_dtype_is_one_clear_error():
    with pytest.raises(InvalidRequestError, match="kv_cache_dtype must be auto or one of"):
        EngineConfig(kv_cache_dtype="int4")


def test_a_kv_dtype_the_device_lacks_is_one_clear_error(monkeypatch):
    def no_fp8(*args):
        raise NotImplementedError('"index_copy" not implemented for Float8_e4m3fn')

    monkeypatch.setattr(kv_cache, "_try_attention", no_fp8)
    with pytest.raises(InvalidRequestError) as exc_info:
        resolve_kv_cache_dtype("fp8", torch.float32, torch.device("cpu"))
    assert "kv_cache_dtype fp8 is not supported on cpu" in exc_info.value.message
    assert "\n" not in exc_info.value.message


@pytest.fixture(scope="module")
def peaked_attention_llama(tmp_path_factory, hf_tokenizer_dir):
    """A tiny Llama whose attention is peaked, as a trained model's is: q/k weights large
    enough that scores spread over a few units, so which cached keys a token attends to
    matters, while the rest stays small. Random models with large weights everywhere are
    chaotic (a 1% change anywhere flips later tokens), and ones with small q/k attend
    uniformly, where K hardly matters."""
    path = make_tiny_model(
        "llama", tmp_path_factory.mktemp("peaked"), hf_tokenizer_dir, initializer_range=0.005
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30)
            layer.self_attn.k_proj.weight.mul_(30)
    model.save_pretrained(path)
    return path


def agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """Share of tokens equal to the reference's up to each sequence's first divergence."""
    matched = 0
    for ours, theirs in zip(reference, other, strict=True):
        same = [a == b for a, b in zip(ours, theirs, strict=True)]
        matched += same.index(False) if False in same else len(same)
    return matched / sum(len(tokens) for tokens in reference)


def greedy(path, prompts, **engine_args) -> list[list[int]]:
    llm = LLM(str(path), kv_cache_memory=16 * 2**20, **engine_args)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    return [out.token_ids for out in llm.generate(prompts, params)]


def test_quantized_caches_agree_with_the_float_cache(peaked_attention_llama):
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 49152) for _ in range(rng.randrange(4, 80))] for _ in range(64)]
    reference = greedy(peaked_attention_llama, prompts)
    # Not degenerate: a model that repeats one token would agree with anything.
    assert all(len(set(tokens)) >= 4 for tokens in reference)
    for kv_dtype in ("int8", "fp8"):
        outputs = greedy(peaked_attention_llama, prompts, kv_cache_dtype=kv_dtype)
        assert agreement(reference, outputs) >= 0.95, kv_dtype


def test_quantized_outputs_do_not_depend_on_chunking_or_prefix_hits(peaked_attention_llama):
    """Attention always sees K/V as stored and read back: a prompt prefilled in one piece,
    in chunks or over a cached prefix gives the same tokens and logprobs, equal to float
    rounding (1e-6 here), far below the ~1e-4 by which fp8's rounding moves them."""
    rng = random.Random(1)
    shared = [rng.randrange(3, 49152) for _ in range(40)]
    prompts = [shared + [rng.randrange(3, 49152) for _ in range(n)] for n in (5, 30)]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=1)

    def fp8_llm(**engine_args) -> LLM:
        path = str(peaked_attention_llama)
        return LLM(path, kv_cache_memory=16 * 2**20, kv_cache_dtype="fp8", **engine_args)

    whole = fp8_llm().generate(prompts, params)
    chunked = fp8_llm(max_num_batched_tokens=16, max_num_seqs=4).generate(prompts, params)
    llm = fp8_llm()
    llm.generate(prompts[0], params)
    cached = llm.generate(prompts[1], params)[0]
    assert cached.num_cached_tokens == 32
    for out, reference in zip([*chunked, cached], [*whole, whole[1]], strict=True):
        assert out.token_ids == reference.token_ids
        ours = torch.tensor([entry.logprob for entry in out.logprobs])
        theirs = torch.tensor([entry.logprob for entry in reference.logprobs])
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
