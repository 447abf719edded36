"""The C++ CPU decode kernel (tome/kernels/cpu) gives what torch's SDPA gives over the same
context, read back from the cache by the torch backend and attended in float64: over GQA
ratios (the ones compiled for their size and others), head sizes, block sizes, ragged
contexts that cross block and chunk boundaries, scattered block tables, float32, bfloat16,
int8 and fp8 caches, and any split of the work. The engine picks it on the CPU, and where
it cannot be built says why and falls back to torch ops."""

import logging

import pytest
import torch
import torch.nn.functional as F

from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.errors import InvalidRequestError
from tome.kernels import cpu_decode_attention as kernel_module
from tome.kernels import cpu_kernels
from tome.kernels.cpu_decode_attention import cpu_decode_attention
from tome.layers.attention import Attention
from tome.layers.attention_backends import BACKEND_ENV, backend_for
from tome.layers.cpu_attention_backend import CpuAttentionBackend
from tome.layers.kv_quantization import SCALE_DTYPE, is_quantized
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import TorchAttentionBackend, read_kv, write_kv

# Crossing blocks of 8, 16 and 32 and the kernel's 256-token chunks.
CONTEXTS = [1, 9, 17, 255, 256, 257, 700, 1500]
CACHE_DTYPES = [torch.float32, torch.bfloat16, torch.int8, torch.float8_e4m3fn]
# (heads, kv heads, head size): compiled shapes (groups 3, 1, 7, 8 at 64 and 128) and
# ones that take the general loops (group 5, head size 32 and 80).
SHAPES = [(9, 3, 64), (8, 8, 128), (7, 1, 64), (16, 2, 128), (10, 2, 64), (4, 2, 32), (6, 3, 80)]


def make_cache(num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype):
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k, v = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    if not is_quantized(dtype):
        return LayerKVCache(k, v)
    scales = [torch.zeros(shape[:-1], dtype=SCALE_DTYPE) for _ in range(2)]
    return LayerKVCache(k, v, *scales)


def fill_contexts(cache: LayerKVCache, lengths: list[int], generator) -> torch.Tensor:
    """Random K/V for each context, written through the torch backend into blocks taken in
    a shuffled order; returns the block tables."""
    num_blocks, block_size, kv_heads, head_dim = cache.k.shape
    blocks = torch.randperm(num_blocks, generator=generator).tolist()
    needed = [-(-length // block_size) for length in lengths]
    tables = torch.zeros(len(lengths), max(needed), dtype=torch.long)
    for row, (length, count) in enumerate(zip(lengths, needed, strict=True)):
        tables[row, :count] = torch.tensor([blocks.pop() for _ in range(count)])
        positions = torch.arange(length)
        slots = tables[row, positions // block_size] * block_size + positions % block_size
        k = torch.randn(length, kv_heads, head_dim, generator=generator)
        v = torch.randn(length, kv_heads, head_dim, generator=generator)
        write_kv(cache, k, v, slots)
    return tables


def expected_attention(q, cache: LayerKVCache, tables, lengths, scale) -> torch.Tensor:
    """Each query over its context as the torch backend reads it back, in float64."""
    block_size = cache.k.shape[1]
    rows = []
    for row, length in enumerate(lengths):
        positions = torch.arange(length)
        slots = tables[row, positions // block_size] * block_size + positions % block_size
        keys, values = read_kv(
            cache, lambda t, slots=slots: t.view(-1, *t.shape[2:])[slots].transpose(0, 1)
        )
        out = F.scaled_dot_product_attention(
            q[row, :, None].double(),
            keys.double(),
            values.double(),
            scale=scale,
            enable_gqa=True,
        )
        rows.append(out[:, 0])
    return torch.stack(rows).float()


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), SHAPES)
@pytest.mark.usefixtures("each_cpu_isa")
def test_decode_equals_sdpa_over_the_context(dtype, heads, kv_heads, head_dim):
    generator = torch.Generator().manual_seed(heads * 31 + head_dim)
    block_size = 16
    cache = make_cache(200, block_size, kv_heads, head_dim, dtype)
    lengths = [1, 257, 1500, 17]
    tables = fill_contexts(cache, lengths, generator)
    q = torch.randn(len(lengths), heads, head_dim, generator=generator)
    scale = head_dim**-0.5
    ours = cpu_decode_attention(q, cache, tables, torch.tensor(lengths), max(lengths), scale)
    expected = expected_attention(q, cache, tables, lengths, scale)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("length", CONTEXTS)
@pytest.mark.usefixtures("each_cpu_isa")
def test_every_context_length_and_block_size(block_size, length):
    generator = torch.Generator().manual_seed(length * block_size)
    cache = make_cache(-(-1500 // block_size) + 4, block_size, 3, 64, torch.float32)
    tables = fill_contexts(cache, [length], generator)
    q = torch.randn(1, 9, 64, generator=generator)
    ours = cpu_decode_attention(q, cache, tables, torch.tensor([length]), length, 0.125)
    torch.testing.assert_close(ours, expected_attention(q, cache, tables, [length], 0.125))


@pytest.mark.parametrize("blocks_per_item", [1, 3, 8, 1000])
@pytest.mark.usefixtures("each_cpu_isa")
def test_the_result_does_not_depend_on_how_the_work_is_split(blocks_per_item, monkeypatch):
    """Items of one block to one item per sequence: the partial results merge to the same
    attention, and a batch with many items merges them in parallel."""
    generator = torch.Generator().manual_seed(blocks_per_item)
    cache = make_cache(1200, 16, 2, 128, torch.float32)
    lengths = [3000, 5, 2000, 900, 4000, 16, 1, 2048]
    tables = fill_contexts(cache, lengths, generator)
    q = torch.randn(len(lengths), 16, 128, generator=generator)
    monkeypatch.setattr(kernel_module, "split_blocks", lambda *args: blocks_per_item)
    ours = cpu_decode_attention(q, cache, tables, torch.tensor(lengths), max(lengths), 0.1)
    torch.testing.assert_close(ours, expected_attention(q, cache, tables, lengths, 0.1))


@pytest.mark.usefixtures("each_cpu_isa")
def test_a_bfloat16_query_gets_a_bfloat16_answer():
    generator = torch.Generator().manual_seed(5)
    cache = make_cache(20, 16, 3, 64, torch.float32)
    tables = fill_contexts(cache, [100], generator)
    q = torch.randn(1, 9, 64, generator=generator).bfloat16()
    ours = cpu_decode_attention(q, cache, tables, torch.tensor([100]), 100, 0.125)
    assert ours.dtype == torch.bfloat16
    expected = expected_attention(q.float(), cache, tables, [100], 0.125)
    torch.testing.assert_close(ours.float(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
def test_the_engine_takes_the_kernel_on_the_cpu(dtype, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert isinstance(backend_for(torch.device("cpu"), dtype), CpuAttentionBackend)
    # float16 it does not read: torch ops serve it.
    assert type(backend_for(torch.device("cpu"), torch.float16)) is TorchAttentionBackend
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert type(backend_for(torch.device("cpu"), dtype)) is TorchAttentionBackend
    monkeypatch.setenv(BACKEND_ENV, "cpu")
    assert isinstance(backend_for(torch.device("cpu"), dtype), CpuAttentionBackend)
    with pytest.raises(InvalidRequestError, match="reads only"):
        backend_for(torch.device("cuda"), dtype)


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A machine where the kernel cannot be built: an empty cache and a compiler that fails."""
    monkeypatch.setenv(cpu_kernels.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    cpu_kernels.forget_loaded()
    yield
    cpu_kernels.forget_loaded()


def test_without_a_compiler_torch_ops_serve_and_the_log_says_why(no_compiler, caplog):
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        backend = backend_for(torch.device("cpu"), torch.float32)
    assert type(backend) is TorchAttentionBackend
    assert "could not compile paged_decode_attention.cpp" in caplog.text
    with pytest.raises(cpu_kernels.KernelBuildError, match="could not compile"):
        cpu_kernels.build("paged_decode_attention")


def test_asking_for_the_kernel_where_it_cannot_be_built_is_one_clear_error(
    no_compiler, monkeypatch
):
    monkeypatch.setenv(BACKEND_ENV, "cpu")
    with pytest.raises(InvalidRequestError, match="could not be built"):
        backend_for(torch.device("cpu"), torch.float32)


def test_a_built_kernel_is_reused_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_kernels.CACHE_ENV, str(tmp_path))
    first = cpu_kernels.build("paged_decode_attention")
    modified = first.stat().st_mtime_ns
    assert cpu_kernels.build("paged_decode_attention") == first
    assert first.stat().st_mtime_ns == modified
    assert list(tmp_path.iterdir()) == [first]  # no scratch folder left behind


def greedy(model_dir, prompts, **engine_args) -> tuple[list[list[int]], list]:
    llm = LLM(model=str(model_dir), block_size=16, **engine_args)
    layers = [m for m in llm.engine.runner.model.modules() if isinstance(m, Attention)]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    return [output.token_ids for output in outputs], [type(layer.backend) for layer in layers]


PROMPTS = [[(7 * i + 3) % 4000 + 10 for i in range(n)] for n in (5, 40, 300)]


def test_greedy_decoding_through_the_kernel_equals_transformers(tiny_llama, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    tokens, backends = greedy(tiny_llama, PROMPTS)
    assert set(backends) == {CpuAttentionBackend}
    reference = load_reference(tiny_llama)
    assert tokens == [reference_greedy(reference, prompt, 12)[0] for prompt in PROMPTS]


@pytest.mark.parametrize("kv_cache_dtype", ["int8", "fp8", "bfloat16"])
def test_a_low_precision_cache_decodes_as_the_torch_backend_does(
    tiny_llama, kv_cache_dtype, monkeypatch
):
    """Transformers has no such cache: the torch backend over the same stored values is the
    reference."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    tokens, backends = greedy(tiny_llama, PROMPTS, kv_cache_dtype=kv_cache_dtype)
    assert set(backends) == {CpuAttentionBackend}
    monkeypatch.setenv(BACKEND_ENV, "torch")
    expected, backends = greedy(tiny_llama, PROMPTS, kv_cache_dtype=kv_cache_dtype)
    assert set(backends) == {TorchAttentionBackend}
    assert tokens == expected
