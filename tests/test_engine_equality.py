"""The engine's greedy outputs and logprobs equal transformers' on every architecture,
also through prefix-cache hits, chunked prefill and preemption."""

import random

import pytest
import torch
from transformers import AutoConfig

from tests.conftest import make_tiny_model
from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.engine.kv_cache import kv_bytes_per_token
from tome.layers import torch_attention_backend
from tome.models.config import ModelConfig

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
            # Our top alternatives carry the reference's values, and the reference's top
            # values are ours: near-ties may swap places, nothing else may differ.
            ids = list(ours.top)
            ours_values = torch.tensor([ours.top[i] for i in ids])
            torch.testing.assert_close(ours_values, theirs[ids], atol=1e-4, rtol=0)
            torch.testing.assert_close(ours_values, theirs.topk(TOP).values, atol=1e-4, rtol=0)


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
    llm = LLM(str(tiny_model), max_num_batched_tokens=16, max_num_seqs=4)
    prompts = random_prompts([50, 7, 90], seed=4)
    assert_matches_reference(reference, prompts, llm.generate(prompts, greedy_params()))


def test_prefill_in_mask_slices_equals_transformers(tiny_model, reference, monkeypatch):
    # A mask budget of 100 elements: a chunk continuing a 50-token context attends a row
    # or two at a time, the slicing a million-token context needs.
    monkeypatch.setattr(torch_attention_backend, "MASK_ELEMENTS", 100)
    llm = LLM(str(tiny_model), max_num_batched_tokens=32, max_num_seqs=4)
    prompts = random_prompts([75, 40], seed=6)
    assert_matches_reference(reference, prompts, llm.generate(prompts, greedy_params()))


def test_preemption_keeps_outputs(tiny_model, reference):
    # 12 blocks of 8 tokens: the three sequences cannot all grow to ~50 tokens at once.
    config = ModelConfig.from_hf(AutoConfig.from_pretrained(tiny_model))
    block_bytes = kv_bytes_per_token(config, torch.float32) * 8
    llm = LLM(str(tiny_model), block_size=8, kv_cache_memory=12 * block_bytes)
    prompts = random_prompts([30, 28, 26], seed=5)
    outputs = llm.generate(prompts, greedy_params())
    assert llm.engine.scheduler.num_preemptions > 0
    assert_matches_reference(reference, prompts, outputs)


def test_last_position_logits_within_float_tolerance(tiny_model, reference):
    llm = LLM(str(tiny_model))
    engine = llm.engine
    prompt = random_prompts([40], seed=6)[0]
    engine.add_request("logits", prompt, SamplingParams(max_tokens=1))
    input_ids, positions, meta, _ = engine.runner._prepare(engine.scheduler.schedule())
    with torch.inference_mode():
        hidden = engine.runner.model(input_ids, positions, meta)
        ours = engine.runner.model.compute_logits(hidden[-1:])[0]
        theirs = reference(torch.tensor([prompt])).logits[0, -1].float()
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    engine.abort("logits")


def test_sliding_window_model_is_capped_to_its_window(tmp_path, hf_tokenizer_dir):
    path = make_tiny_model("mistral", tmp_path, hf_tokenizer_dir, sliding_window=32)
    llm = LLM(str(path))
    assert llm.engine.max_model_len == 32  # beyond it the reference would slide, we would not
    prompts = random_prompts([12], seed=7)
    assert_matches_reference(load_reference(path), prompts, llm.generate(prompts, greedy_params()))
