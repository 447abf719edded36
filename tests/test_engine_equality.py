"""The engine's greedy outputs and logprobs equal transformers' on every architecture,
also through prefix-cache hits, chunked prefill and preemption."""

import random

import pytest
import torch

from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams

MAX_NEW = 12
TOP = 20


def random_prompts(lengths: list[int], seed: int = 0, prefix: list[int] | None = None):
    rng = random.Random(seed)
    return [(prefix or []) + [rng.randrange(3, 49152) for _ in range(n)] for n in lengths]


def greedy_params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=TOP)


def assert_matches_reference(reference, prompts, outputs) -> None:
    for prompt, out in zip(prompts, outputs, strict=True):
        tokens, logprobs = reference_greedy(reference, prompt, MAX_NEW)
        assert out.token_ids == tokens
        for ours, theirs in zip(out.logprobs, logprobs, strict=True):
            ids = list(ours.top)
            assert ids == theirs.topk(TOP).indices.tolist()
            ours_values = torch.tensor([ours.top[i] for i in ids])
            torch.testing.assert_close(ours_values, theirs[ids], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def reference(tiny_model):
    return load_reference(tiny_model)


def test_batch_of_different_lengths_equals_transformers(tiny_model, reference):
    llm = LLM(str(tiny_model))
    prompts = random_prompts([5, 17, 33, 64, 1])
    assert_matches_reference(reference, prompts, llm.generate(prompts, greedy_params()))


def test_prefix_cache_hits_keep_outputs(tiny_model, reference):
    llm = LLM(str(tiny_model), block_size=16)
    shared = random_prompts([70], seed=1)[0]
    first = random_prompts([3, 9], seed=2, prefix=shared)
    outputs = llm.generate(first, greedy_params())  # shared within one batch
    second = random_prompts([5, 12], seed=3, prefix=shared)
    outputs_again = llm.generate(second, greedy_params())
    assert [out.num_cached_tokens for out in outputs_again] == [64, 64]  # 4 full blocks
    assert_matches_reference(reference, first + second, outputs + outputs_again)


def test_chunked_prefill_equals_transformers(tiny_model, reference):
    llm = LLM(str(tiny_model), max_num_batched_tokens=16)
    prompts = random_prompts([50, 7, 90], seed=4)
    assert_matches_reference(reference, prompts, llm.generate(prompts, greedy_params()))


def test_preemption_keeps_outputs(tiny_model, reference):
    # 12 blocks of 8 tokens: the three sequences cannot all grow to ~50 tokens at once.
    llm = LLM(
        str(tiny_model),
        block_size=8,
        kv_cache_memory=12 * kv_block_bytes(llm_config(tiny_model), 8),
    )
    prompts = random_prompts([30, 28, 26], seed=5)
    outputs = llm.generate(prompts, greedy_params())
    assert llm.engine.scheduler.num_preemptions > 0
    assert_matches_reference(reference, prompts, outputs)


def llm_config(path):
    import transformers

    return transformers.AutoConfig.from_pretrained(path)


def kv_block_bytes(config, block_size: int) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4 * block_size
