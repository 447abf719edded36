"""Prompt logprobs equal transformers' log-softmax over its full forward, through chunked
prefill, prefix-cache hits and preemption, with logits never formed for many rows at once."""

import random

import pytest
import torch
from transformers import AutoConfig

from tests.reference import load_reference
from tome import LLM, SamplingParams
from tome.engine import prompt_logprobs as prompt_logprobs_module
from tome.engine.kv_cache import kv_bytes_per_token
from tome.errors import InvalidRequestError
from tome.models.config import ModelConfig

TOP = 5


def random_prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(length)]


def scored(top: int | None = TOP) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, prompt_logprobs=top)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return load_reference(tiny_llama)


@torch.inference_mode()
def reference_prompt_logprobs(model, prompt: list[int]) -> torch.Tensor:
    """Row p: the log-softmax that scores prompt token p + 1, from one full forward."""
    return model(torch.tensor([prompt])).logits[0, :-1].float().log_softmax(dim=-1)


def assert_matches_reference(reference, prompt: list[int], out, top: int = TOP) -> None:
    theirs = reference_prompt_logprobs(reference, prompt)
    assert len(out.prompt_logprobs) == len(prompt)
    assert out.prompt_logprobs[0] is None
    ours = out.prompt_logprobs[1:]
    assert [lp.token_id for lp in ours] == prompt[1:]
    chosen = torch.tensor([lp.logprob for lp in ours])
    torch.testing.assert_close(
        chosen, theirs[torch.arange(len(ours)), prompt[1:]], atol=1e-4, rtol=0
    )
    for lp, row in zip(ours, theirs, strict=True):
        assert len(lp.top) == top
        # Our alternatives carry the reference's values, and are its top values: near-ties
        # may swap places, nothing else may differ.
        ids = list(lp.top)
        values = torch.tensor([lp.top[i] for i in ids])
        torch.testing.assert_close(values, row[ids], atol=1e-4, rtol=0)
        torch.testing.assert_close(values, row.topk(top).values, atol=1e-4, rtol=0)


def test_prompt_logprobs_equal_transformers(tiny_llama, reference):
    llm = LLM(str(tiny_llama))
    prompts = [random_prompt(40, seed=0), random_prompt(9, seed=1)]
    outputs = llm.generate(prompts, scored())
    for prompt, out in zip(prompts, outputs, strict=True):
        assert_matches_reference(reference, prompt, out)


def test_zero_alternatives_and_not_asked(tiny_llama, reference):
    llm = LLM(str(tiny_llama))
    prompt = random_prompt(20, seed=2)
    only_tokens, not_asked = llm.generate([prompt, prompt], [scored(top=0), scored(top=None)])
    assert_matches_reference(reference, prompt, only_tokens, top=0)
    assert not_asked.prompt_logprobs is None


def test_chunked_prefill_and_sliced_logits(tiny_llama, reference, monkeypatch):
    monkeypatch.setattr(prompt_logprobs_module, "ROWS_PER_SLICE", 7)
    llm = LLM(str(tiny_llama), max_num_batched_tokens=16, max_num_seqs=4)
    model = llm.engine.runner.model
    compute_logits = model.compute_logits
    rows_seen = []

    def counting(hidden):
        rows_seen.append(hidden.shape[0])
        return compute_logits(hidden)

    monkeypatch.setattr(model, "compute_logits", counting)
    prompts = [random_prompt(50, seed=3), random_prompt(7, seed=4), random_prompt(33, seed=5)]
    outputs = llm.generate(prompts, scored())
    for prompt, out in zip(prompts, outputs, strict=True):
        assert_matches_reference(reference, prompt, out)
    assert max(rows_seen) <= 7
    # every prompt token but each first one scored once, plus one sampled row per request
    assert sum(rows_seen) == sum(len(p) - 1 for p in prompts) + len(prompts)


def test_cached_prefix_is_recomputed_for_prompt_logprobs(tiny_llama, reference):
    llm = LLM(str(tiny_llama), block_size=16)
    shared = random_prompt(70, seed=6)
    plain = SamplingParams(temperature=0.0, max_tokens=1)
    first = llm.generate(shared + random_prompt(5, seed=7), plain)[0]
    assert first.num_cached_tokens == 0
    prompt = shared + random_prompt(9, seed=8)
    out = llm.generate(prompt, scored())[0]
    assert out.num_cached_tokens == 0  # the 64 cached tokens were recomputed to be scored
    assert_matches_reference(reference, prompt, out)
    assert llm.generate(shared + random_prompt(3, seed=9), plain)[0].num_cached_tokens == 64


def test_preempted_mid_prefill_resumes_with_the_same_logprobs(tiny_llama, reference):
    # 12 blocks of 8 tokens, 16 tokens a step: the urgent request arrives while the first is
    # half through its prefill and needs every block, evicting the first's cached ones too,
    # so the first recomputes tokens it has already scored.
    config = ModelConfig.from_hf(AutoConfig.from_pretrained(tiny_llama))
    block_bytes = kv_bytes_per_token(config, torch.float32) * 8
    llm = LLM(
        str(tiny_llama),
        block_size=8,
        kv_cache_memory=12 * block_bytes,
        max_num_batched_tokens=16,
        max_num_seqs=4,
    )
    engine = llm.engine
    slow, urgent = random_prompt(60, seed=10), random_prompt(90, seed=11)
    engine.add_request("slow", slow, scored(), priority=1)
    engine.step()
    engine.step()
    engine.add_request("urgent", urgent, scored(), priority=0)
    finished = {}
    while engine.has_unfinished():
        finished.update({out.request_id: out for out in engine.step() if out.finished})
    assert engine.scheduler.num_preemptions == 1
    assert_matches_reference(reference, slow, finished["slow"])
    assert_matches_reference(reference, urgent, finished["urgent"])


@pytest.mark.parametrize("value", [-1, 21])
def test_prompt_logprobs_out_of_range_is_refused(value):
    with pytest.raises(InvalidRequestError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=value)
