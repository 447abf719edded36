"""The Triton kernels (tome/kernels) give what the PyTorch reference backend gives: KV
stores byte for byte, decode and prefill attention to float tolerance, over GQA ratios,
head sizes, block sizes, ragged contexts that cross block boundaries, and float, int8 and
fp8 caches. In CI they run on the CPU in Triton's interpreter at small sizes; on a GPU
(tests/conftest.py's KERNEL_DEVICE) compiled, with full-size cases added: head_dim 128,
GQA 4 to 8, contexts to 32k tokens, a batch of 32 decodes."""

import os
import subprocess
import sys
from itertools import accumulate

import pytest
import torch

from tests.conftest import KERNEL_DEVICE, make_tiny_model
from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.errors import InvalidRequestError
from tome.kernels.kv_store import store_kv
from tome.kernels.paged_decode_attention import DEFAULT_BLOCK_N, paged_decode_attention
from tome.layers.attention import Attention
from tome.layers.attention_backends import BACKEND_ENV, backend_for
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.cpu_attention_backend import CpuAttentionBackend
from tome.layers.kv_quantization import SCALE_DTYPE, is_quantized
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.layers.torch_attention_backend import TorchAttentionBackend, write_kv
from tome.layers.triton_attention_backend import TritonAttentionBackend

KV_HEADS = 2
ON_GPU = KERNEL_DEVICE == "cuda"
SHORT_CONTEXTS = [1, 17, 33, 100]  # across block boundaries of 16 and 32
# 32 decodes up to 32k tokens, across block, tile and partition boundaries.
LONG_CONTEXTS = [1, 15, 16, 17, 511, 512, 513, 4095, 4096, 4097, 32768]
LONG_CONTEXTS += [1500 * i + 7 for i in range(1, 22)]
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def random_normal(*shape, generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=KERNEL_DEVICE)


def make_cache(num_blocks, block_size, head_dim, dtype, read_dtype) -> LayerKVCache:
    shape = (num_blocks, block_size, KV_HEADS, head_dim)
    k, v = (torch.zeros(shape, dtype=dtype, device=KERNEL_DEVICE) for _ in range(2))
    if not is_quantized(dtype):
        return LayerKVCache(k, v)
    scales = [torch.zeros(shape[:-1], dtype=SCALE_DTYPE, device=KERNEL_DEVICE) for _ in range(2)]
    return LayerKVCache(k, v, *scales, read_dtype=read_dtype)


def clone(cache: LayerKVCache) -> LayerKVCache:
    tensors = [t.clone() for t in cache.tensors()]
    return LayerKVCache(*tensors, read_dtype=cache.read_dtype)


def slots_of(table: torch.Tensor, positions: range, block_size: int) -> torch.Tensor:
    """The cache slots of a sequence's context positions, through its block table."""
    at = torch.arange(positions.start, positions.stop, device=table.device)
    return table[at // block_size] * block_size + at % block_size


def make_batch(contexts, query_lens, block_size, num_decodes, generator):
    """Metadata of a batch whose sequence i ends at contexts[i] after its query_lens[i] new
    tokens, its blocks scattered over the pool in random order."""
    counts = [-(-n // block_size) for n in contexts]
    free = torch.randperm(sum(counts) + 3, generator=generator, device=KERNEL_DEVICE).cpu()
    block_tables = torch.zeros(len(contexts), max(counts), dtype=torch.long)
    for i, table in enumerate(free[: sum(counts)].split(counts)):
        block_tables[i, : len(table)] = table
    slots = [
        slots_of(block_tables[i], range(n - new, n), block_size)
        for i, (n, new) in enumerate(zip(contexts, query_lens, strict=True))
    ]
    starts = list(accumulate(query_lens, initial=0))
    return AttentionMetadata(
        slot_mapping=torch.cat(slots).to(KERNEL_DEVICE),
        block_tables=block_tables.to(KERNEL_DEVICE),
        context_lens=torch.tensor(contexts, device=KERNEL_DEVICE),
        query_start_loc=torch.tensor(starts, device=KERNEL_DEVICE),
        rope_seq_lens=torch.zeros(starts[-1], dtype=torch.long, device=KERNEL_DEVICE),
        num_decodes=num_decodes,
        query_start_loc_cpu=starts,
        context_lens_cpu=list(contexts),
        block_tables_cpu=block_tables,
        block_size=block_size,
    )


def fill_prefixes(cache, meta, query_lens, block_size, dtype, generator) -> None:
    """Random K/V in every slot before each sequence's new tokens, written by the reference."""
    slots = torch.cat(
        [
            slots_of(meta.block_tables[i], range(n - new), block_size)
            for i, (n, new) in enumerate(zip(meta.context_lens_cpu, query_lens, strict=True))
        ]
    )
    if len(slots):
        shape = (len(slots), KV_HEADS, cache.k.shape[-1])
        k = random_normal(*shape, generator=generator).to(dtype)
        v = random_normal(*shape, generator=generator).to(dtype)
        write_kv(cache, k, v, slots)


def random_step(contexts, query_lens, num_decodes, gqa, head_dim, block_size, kv_dtype, dtype):
    """A cache holding every prefix, and one step's q, k, v and metadata."""
    seed = sum(contexts) + gqa + head_dim + block_size
    generator = torch.Generator(KERNEL_DEVICE).manual_seed(seed)
    meta = make_batch(contexts, query_lens, block_size, num_decodes, generator)
    cache = make_cache(int(meta.block_tables.max()) + 1, block_size, head_dim, kv_dtype, dtype)
    fill_prefixes(cache, meta, query_lens, block_size, dtype, generator)
    tokens = sum(query_lens)
    q = random_normal(tokens, KV_HEADS * gqa, head_dim, generator=generator).to(dtype)
    k = random_normal(tokens, KV_HEADS, head_dim, generator=generator).to(dtype)
    v = random_normal(tokens, KV_HEADS, head_dim, generator=generator).to(dtype)
    return cache, q, k, v, meta


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize(
    "kv_dtype, dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.int8, torch.float32),
        (torch.float8_e4m3fn, torch.float32),
        (torch.int8, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_store_kv_writes_what_the_reference_writes(kv_dtype, dtype, head_dim):
    generator = torch.Generator(KERNEL_DEVICE).manual_seed(head_dim)
    reference = make_cache(8, 16, head_dim, kv_dtype, dtype)
    ours = clone(reference)
    # Rows of very different magnitudes, one all zero, a head with outlier channels.
    magnitudes = torch.logspace(-3, 3, 40, device=KERNEL_DEVICE)
    k = random_normal(40, KV_HEADS, head_dim, generator=generator) * magnitudes[:, None, None]
    k[5] = 0
    k[7, 1, :3] = 50.0
    v = random_normal(40, KV_HEADS, head_dim, generator=generator)
    slots = torch.randperm(128, generator=generator, device=KERNEL_DEVICE)[:40]
    write_kv(reference, k.to(dtype), v.to(dtype), slots)
    store_kv(ours, k.to(dtype), v.to(dtype), slots)
    for theirs, mine in zip(reference.tensors(), ours.tensors(), strict=True):
        assert same_bytes(theirs, mine)


def test_store_kv_skips_negative_slots():
    cache = make_cache(2, 16, 64, torch.float32, torch.float32)
    new = torch.ones(3, KV_HEADS, 64, device=KERNEL_DEVICE)
    store_kv(cache, new, new, torch.tensor([4, -1, 9], device=KERNEL_DEVICE))
    assert cache.k.view(-1, KV_HEADS, 64).sum(dim=(1, 2)).nonzero().flatten().tolist() == [4, 9]


# The sizes of real models (head_dim 128, GQA 4 of Llama-3.1-8B, 7 of Qwen2.5-7B, 8) over
# long contexts: on the GPU only, where they take seconds, not the interpreter's hours.
FULL_SIZE_CASES = [  # gqa, head_dim, block_size, kv_dtype, dtype
    (4, 128, 16, torch.bfloat16, torch.bfloat16),
    (8, 128, 32, torch.bfloat16, torch.bfloat16),
    (7, 128, 16, torch.bfloat16, torch.bfloat16),
    (4, 128, 32, torch.float16, torch.float16),
    (4, 128, 16, torch.float32, torch.float32),
    (8, 128, 16, torch.int8, torch.bfloat16),
    (4, 128, 32, torch.float8_e4m3fn, torch.bfloat16),
]
DECODE_CASES = [  # gqa, head_dim, block_size, kv_dtype, dtype, contexts
    (1, 64, 16, torch.float32, torch.float32, SHORT_CONTEXTS),
    (2, 128, 32, torch.float32, torch.float32, SHORT_CONTEXTS),
    (4, 64, 32, torch.bfloat16, torch.bfloat16, SHORT_CONTEXTS),
    (2, 64, 16, torch.float16, torch.float16, SHORT_CONTEXTS),
    (4, 128, 16, torch.int8, torch.float32, SHORT_CONTEXTS),
    (2, 64, 32, torch.float8_e4m3fn, torch.float32, SHORT_CONTEXTS),
    (1, 128, 32, torch.int8, torch.bfloat16, SHORT_CONTEXTS),
    (2, 96, 16, torch.int8, torch.float32, SHORT_CONTEXTS),  # padded head dims, non-Hadamard
    (3, 64, 16, torch.float32, torch.float32, SHORT_CONTEXTS),  # a group not a power of two
]
if ON_GPU:
    DECODE_CASES += [(*case, LONG_CONTEXTS) for case in FULL_SIZE_CASES]
# 16: every sequence past 16 tokens is split and merged; 512: one partition of a short
# context; None: the engine's choice for the batch.
PARTITION_SIZES = [16, 512, None] if ON_GPU else [16, 512]


@pytest.mark.parametrize("gqa, head_dim, block_size, kv_dtype, dtype, contexts", DECODE_CASES)
@pytest.mark.parametrize("partition_size", PARTITION_SIZES)
def test_decode_matches_the_torch_backend(
    gqa, head_dim, block_size, kv_dtype, dtype, contexts, partition_size
):
    cache, q, k, v, meta = random_step(
        contexts, [1] * len(contexts), len(contexts), gqa, head_dim, block_size, kv_dtype, dtype
    )
    scale = head_dim**-0.5
    expected = TorchAttentionBackend().forward(q, k, v, cache, meta, scale)  # writes k, v too
    # Short contexts in tiles of 16 tokens, so that one partition spans several.
    tile = 16 if contexts == SHORT_CONTEXTS else DEFAULT_BLOCK_N
    out = paged_decode_attention(
        q, cache, meta.block_tables, meta.context_lens, max(contexts), scale, partition_size, tile
    )
    assert out.dtype == q.dtype
    torch.testing.assert_close(out, expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_decode_merges_more_partitions_than_one_merge_step_holds():
    # 700 tokens in partitions of 16: 44 partitions, merged 32 at a time.
    cache, q, k, v, meta = random_step([700, 5], [1, 1], 2, 2, 64, 32, torch.float32, torch.float32)
    expected = TorchAttentionBackend().forward(q, k, v, cache, meta, 0.125)
    out = paged_decode_attention(q, cache, meta.block_tables, meta.context_lens, 700, 0.125, 16, 16)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


# Two decodes, then chunks: a whole prompt, chunks continuing 16, 63 and 180 cached tokens
# (past one key tile, so some keys need no causal mask); at full size a 4k prompt and
# chunks of 1k and 2k tokens after 8k and 30k.
SHORT_BATCH = ([17, 33, 40, 49, 100, 200], [1, 1, 40, 33, 37, 20])
LONG_BATCH = ([4097, 32768, 4096, 9000, 32768], [1, 1, 4096, 1000, 2048])
PREFILL_CASES = [  # gqa, head_dim, block_size, kv_dtype, dtype, (contexts, query_lens)
    (1, 64, 16, torch.float32, torch.float32, SHORT_BATCH),
    (2, 128, 32, torch.float32, torch.float32, SHORT_BATCH),
    (4, 64, 16, torch.bfloat16, torch.bfloat16, SHORT_BATCH),
    (2, 64, 32, torch.int8, torch.float32, SHORT_BATCH),
    (4, 128, 16, torch.float8_e4m3fn, torch.float32, SHORT_BATCH),
    (2, 96, 16, torch.float32, torch.float32, SHORT_BATCH),
    (3, 64, 32, torch.float32, torch.float32, SHORT_BATCH),
]
if ON_GPU:
    PREFILL_CASES += [(*case, LONG_BATCH) for case in FULL_SIZE_CASES]


@pytest.mark.parametrize("gqa, head_dim, block_size, kv_dtype, dtype, batch", PREFILL_CASES)
def test_mixed_batch_matches_the_torch_backend(gqa, head_dim, block_size, kv_dtype, dtype, batch):
    contexts, query_lens = batch
    cache, q, k, v, meta = random_step(
        contexts, query_lens, 2, gqa, head_dim, block_size, kv_dtype, dtype
    )
    scale = head_dim**-0.5
    reference_cache = clone(cache)
    expected = TorchAttentionBackend().forward(q, k, v, reference_cache, meta, scale)
    out = TritonAttentionBackend().forward(q, k, v, cache, meta, scale)
    torch.testing.assert_close(out, expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    for theirs, mine in zip(reference_cache.tensors(), cache.tensors(), strict=True):
        assert same_bytes(theirs, mine)


def test_sparse_prefill_chunks_beside_dense_ones_match_the_torch_backend():
    contexts, query_lens = [17, 40, 100], [1, 40, 37]
    cache, q, k, v, meta = random_step(contexts, query_lens, 1, 2, 64, 16, *[torch.float32] * 2)
    # Only the 100-token context reaches min_context; its pattern keeps a fraction of keys.
    meta.sparse_prefill = SparsePrefillConfig(
        min_context=64, last_queries=8, vertical=8, slash=8, sink=4, local=8, query_block=16
    )
    reference_cache = clone(cache)
    expected = TorchAttentionBackend().forward(q, k, v, reference_cache, meta, 0.125)
    out = TritonAttentionBackend().forward(q, k, v, cache, meta, 0.125)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    meta.sparse_prefill = None
    dense = TorchAttentionBackend().forward(q, k, v, clone(cache), meta, 0.125)
    assert not torch.allclose(out[41:], dense[41:], atol=1e-3)  # the sparse path really ran


def test_backend_is_chosen_by_device_unless_named(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert isinstance(backend_for(cpu, torch.float32), CpuAttentionBackend)
    assert isinstance(backend_for(cuda, torch.bfloat16), TritonAttentionBackend)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert isinstance(backend_for(cpu, torch.float32), TritonAttentionBackend)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert type(backend_for(cuda, torch.bfloat16)) is TorchAttentionBackend
    assert type(backend_for(cpu, torch.float32)) is TorchAttentionBackend
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(InvalidRequestError, match=BACKEND_ENV):
        backend_for(cpu, torch.float32)


@pytest.mark.parametrize(
    "capability, backend", [((8, 0), TorchAttentionBackend), ((9, 0), TritonAttentionBackend)]
)
def test_fp8_caches_take_triton_only_where_it_has_the_type(monkeypatch, capability, backend):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    assert isinstance(backend_for(torch.device("cuda"), torch.float8_e4m3fn), backend)
    assert isinstance(backend_for(torch.device("cuda"), torch.int8), TritonAttentionBackend)


@pytest.mark.parametrize("capability", [90, 80])  # H100, A100
def test_kernels_compile_for_real_gpus(capability):
    # Triton's real compiler and ptxas, which need no GPU, in a process without the
    # interpreter: they refuse what the interpreter lets through.
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "tome.kernels.compile_check", str(capability)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def uses_triton(llm: LLM) -> bool:
    layers = [m for m in llm.engine.runner.model.modules() if isinstance(m, Attention)]
    return all(isinstance(layer.backend, TritonAttentionBackend) for layer in layers)


PROMPTS = [
    [5, 9, 200, 3000, 17, 42, 7, 11, 300, 12, 99, 1000, 8, 21, 2222, 31, 47, 58, 6],
    [77, 88],
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, hf_tokenizer_dir):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama"), hf_tokenizer_dir)


def engine(path, **engine_args) -> LLM:
    # A 16-token budget: the long prompt prefills in two chunks, the second over a cached prefix.
    # On the kernels' device, in float32 there too (a GPU's default would be bfloat16), with a
    # small KV pool rather than most of the device's memory.
    return LLM(
        str(path),
        device=KERNEL_DEVICE,
        dtype="float32",
        kv_cache_memory=8 << 20,
        block_size=16,
        max_num_batched_tokens=16,
        max_num_seqs=4,
        **engine_args,
    )


def test_engine_with_triton_kernels_equals_transformers(llama, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "triton")
    llm = engine(llama)
    assert uses_triton(llm)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    reference = load_reference(llama)
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params), strict=True):
        assert out.token_ids == reference_greedy(reference, prompt, 6)[0]


@pytest.mark.parametrize("kv_cache_dtype", ["int8", "fp8"])
def test_engine_with_a_quantized_cache_equals_the_torch_backend(llama, monkeypatch, kv_cache_dtype):
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=0)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    expected = engine(llama, kv_cache_dtype=kv_cache_dtype).generate(PROMPTS, params)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    llm = engine(llama, kv_cache_dtype=kv_cache_dtype)
    assert uses_triton(llm)
    for ours, theirs in zip(llm.generate(PROMPTS, params), expected, strict=True):
        assert ours.token_ids == theirs.token_ids
        mine = torch.tensor([token.logprob for token in ours.logprobs])
        reference = torch.tensor([token.logprob for token in theirs.logprobs])
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=0)
