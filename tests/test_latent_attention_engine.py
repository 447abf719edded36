"""The engine's features over a latent (MLA) cache, on a tiny random DeepSeek-V3 saved by
transformers: each attention backend (torch ops, the C++ decode kernel, the Triton kernels
under TRITON_INTERPRET) gives transformers' greedy tokens; a quantized latent cache reads
the same through each of them; preemption, blocks evicted to host memory and sparse
prefill with a pattern that covers every key leave outputs as transformers gives them."""

import pytest
import torch

from tests.reference import load_reference, reference_greedy
from tests.test_deepseek_models import save_tiny_deepseek
from tests.test_engine_equality import random_prompts
from tome import LLM, SamplingParams
from tome.layers.attention_backends import BACKEND_ENV
from tome.layers.sparse_prefill import SparsePrefillConfig

MAX_NEW = 6
PROMPTS = random_prompts([3, 37, 70], seed=11)
# 16 tokens of 3 layers, each one 40-wide latent vector (32 + 8 rotary) of float32.
BLOCK_BYTES = 16 * 3 * 40 * 4


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory, hf_tokenizer_dir):
    return save_tiny_deepseek("v3", tmp_path_factory.mktemp("v3"), hf_tokenizer_dir)


@pytest.fixture(scope="module")
def expected(deepseek) -> list[list[int]]:
    reference = load_reference(deepseek)
    return [reference_greedy(reference, prompt, MAX_NEW)[0] for prompt in PROMPTS]


def greedy(logprobs: int | None = None) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=logprobs)


def engine(path, **engine_args) -> LLM:
    defaults = {"kv_cache_memory": 4 << 20, "max_num_batched_tokens": 16, "max_num_seqs": 4}
    return LLM(str(path), block_size=16, **{**defaults, **engine_args})


def backend_names(llm: LLM) -> set[str]:
    return {
        type(layer.self_attn.attn.backend).__name__
        for layer in llm.engine.runner.model.model.layers
    }


@pytest.mark.parametrize(
    "backend, name",
    [
        ("torch", "TorchAttentionBackend"),
        ("cpu", "CpuAttentionBackend"),
        ("triton", "TritonAttentionBackend"),
    ],
)
def test_every_backend_equals_transformers(deepseek, expected, monkeypatch, backend, name):
    monkeypatch.setenv(BACKEND_ENV, backend)
    llm = engine(deepseek)
    assert backend_names(llm) == {name}
    assert [out.token_ids for out in llm.generate(PROMPTS, greedy())] == expected


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("kv_cache_dtype", ["int8", "fp8"])
def test_a_quantized_latent_cache_reads_the_same_through_every_backend(
    deepseek, monkeypatch, kv_cache_dtype, backend
):
    monkeypatch.setenv(BACKEND_ENV, "torch")
    expected = engine(deepseek, kv_cache_dtype=kv_cache_dtype).generate(PROMPTS, greedy(0))
    monkeypatch.setenv(BACKEND_ENV, backend)
    outputs = engine(deepseek, kv_cache_dtype=kv_cache_dtype).generate(PROMPTS, greedy(0))
    for ours, theirs in zip(outputs, expected, strict=True):
        assert ours.token_ids == theirs.token_ids
        mine = torch.tensor([token.logprob for token in ours.logprobs])
        reference = torch.tensor([token.logprob for token in theirs.logprobs])
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=0)


def test_preemption_leaves_outputs_as_transformers_gives_them(deepseek):
    # Three prompts that fill two blocks each, in a pool of six: the first decode step
    # needs a seventh block, and a sequence is preempted and later recomputed.
    prompts = random_prompts([32, 32, 32], seed=13)
    reference = load_reference(deepseek)
    expected = [reference_greedy(reference, prompt, MAX_NEW)[0] for prompt in prompts]
    llm = engine(deepseek, kv_cache_memory=6 * BLOCK_BYTES, max_num_batched_tokens=96)
    outputs = llm.generate(prompts, greedy())
    assert llm.engine.scheduler.num_preemptions > 0
    assert [out.token_ids for out in outputs] == expected


def test_a_prefix_evicted_to_host_memory_comes_back(deepseek, expected):
    llm = engine(deepseek, kv_cache_memory=8 * BLOCK_BYTES, host_kv_cache_memory=16 * BLOCK_BYTES)
    assert llm.generate([PROMPTS[2]], greedy())[0].token_ids == expected[2]
    llm.generate(random_prompts([120], seed=12), greedy())  # takes all 8 blocks
    again = llm.generate([PROMPTS[2]], greedy())[0]
    assert again.num_cached_tokens == 64
    assert llm.engine.kv_tier_stats().host_hit_tokens == 64
    assert again.token_ids == expected[2]


def test_sparse_prefill_with_a_covering_pattern_equals_transformers(deepseek, expected):
    covering = SparsePrefillConfig(min_context=32, vertical=1024, slash=1024, query_block=16)
    llm = engine(deepseek, sparse_prefill=covering)
    assert [out.token_ids for out in llm.generate(PROMPTS, greedy())] == expected
