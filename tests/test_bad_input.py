"""Bad input costs one typed error with a one-line message, never a crash, a hang or the
engine: broken model folders, impossible configs, bad sampling parameters, prompts that
do not fit; and in a batch a bad request fails alone."""

import json
import shutil

import pytest
import transformers

from tome import LLM, EngineConfig, SamplingParams
from tome.errors import (
    InvalidRequestError,
    KVCacheCapacityError,
    ModelLoadError,
    PromptTooLongError,
    TomeError,
    UnsupportedArchitectureError,
)

MAX_MODEL_LEN = 64
# The tiny Llama's KV bytes per block of 16 tokens, from its config: K and V, 2 layers,
# 2 KV heads of 64 / 4 = 16 dims, float32 on CPU.
BLOCK_BYTES = 2 * 2 * 2 * 16 * 4 * 16


def assert_one_line(exc_info, error_type) -> None:
    assert exc_info.type is error_type
    message = str(exc_info.value)
    assert message and "\n" not in message
    assert exc_info.value.message == message


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), max_model_len=MAX_MODEL_LEN, kv_cache_memory=64 << 20)


def greedy(max_tokens: int = 6) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def copy_model(tiny_llama, path):
    shutil.copytree(tiny_llama, path)
    return path


def edit_config(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


# --- model folders ---------------------------------------------------------------------


def test_unknown_architecture_gpt2(tmp_path):
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    config.bos_token_id = config.eos_token_id = 0
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(TomeError) as exc_info:
        LLM(str(tmp_path))
    assert_one_line(exc_info, UnsupportedArchitectureError)
    assert "GPT2LMHeadModel" in str(exc_info.value)


def test_unknown_architecture_name(tiny_llama, tmp_path):
    path = copy_model(tiny_llama, tmp_path / "model")
    edit_config(path, architectures=["FooForCausalLM"])
    with pytest.raises(TomeError) as exc_info:
        LLM(str(path))
    assert_one_line(exc_info, UnsupportedArchitectureError)
    assert "FooForCausalLM" in str(exc_info.value)


@pytest.mark.parametrize("architecture", ["Glm4MoeForCausalLM", "GptOssForCausalLM"])
def test_families_not_yet_supported_are_named(tiny_llama, tmp_path, architecture):
    path = copy_model(tiny_llama, tmp_path / "model")
    edit_config(path, architectures=[architecture])
    with pytest.raises(TomeError) as exc_info:
        LLM(str(path))
    assert_one_line(exc_info, UnsupportedArchitectureError)
    assert architecture in str(exc_info.value)


def test_unknown_model_type(tiny_llama, tmp_path):
    path = copy_model(tiny_llama, tmp_path / "model")
    edit_config(path, model_type="foo", architectures=["FooForCausalLM"])
    with pytest.raises(TomeError) as exc_info:
        LLM(str(path))
    assert_one_line(exc_info, UnsupportedArchitectureError)


def test_missing_model_path(tmp_path):
    with pytest.raises(TomeError) as exc_info:
        LLM(str(tmp_path / "no-such-model"))
    assert_one_line(exc_info, ModelLoadError)


def test_directory_without_config_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TomeError) as exc_info:
        LLM(str(tmp_path))
    assert_one_line(exc_info, ModelLoadError)
    assert "config.json" in str(exc_info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors(tiny_llama, tmp_path, damage):
    path = copy_model(tiny_llama, tmp_path / "model")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 4096)
    with pytest.raises(TomeError) as exc_info:
        LLM(str(path))
    assert_one_line(exc_info, ModelLoadError)


# --- configs and parameters --------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"block_size": 7},
        {"dtype": "int3"},
        {"max_model_len": 0},
        {"kv_cache_memory": 0},
        {"max_num_batched_tokens": 8},
        {"max_num_seqs": 0},
        {"max_num_batched_tokens": 32, "max_num_seqs": 64},
        {"max_num_partial_prefills": 0},
        {"long_prefill_token_threshold": 0},
        {"prefill_min_share": 1.5},
        {"prefill_min_share": "half"},
        {"load_format": "pickle"},
        {"device": "abacus"},
    ],
)
def test_invalid_engine_config(fields):
    with pytest.raises(TomeError) as exc_info:
        EngineConfig(**fields)
    assert_one_line(exc_info, InvalidRequestError)


def test_max_model_len_beyond_the_model_window(tiny_llama):
    with pytest.raises(TomeError) as exc_info:
        LLM(str(tiny_llama), max_model_len=1025, kv_cache_memory=1 << 20)  # window: 1024
    assert_one_line(exc_info, InvalidRequestError)


def test_kv_cache_memory_smaller_than_one_block(tiny_llama):
    with pytest.raises(TomeError) as exc_info:
        LLM(str(tiny_llama), kv_cache_memory=BLOCK_BYTES - 1)
    assert_one_line(exc_info, InvalidRequestError)


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": -0.5},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 1.5},
        {"max_tokens": 0},
        {"max_tokens": 2.5},
        {"logprobs": 100},
        {"logprobs": -1},
        {"repetition_penalty": 0.0},
        {"presence_penalty": 3.0},
        {"frequency_penalty": -2.5},
        {"stop": [""]},
        {"stop_token_ids": [-4]},
    ],
)
def test_invalid_sampling_params(fields):
    with pytest.raises(TomeError) as exc_info:
        SamplingParams(**fields)
    assert_one_line(exc_info, InvalidRequestError)


def test_one_sampling_params_per_prompt_or_one_for_all(llm):
    with pytest.raises(TomeError) as exc_info:
        llm.generate(["a", "b"], [greedy(), greedy(), greedy()])
    assert_one_line(exc_info, InvalidRequestError)


# --- prompts -----------------------------------------------------------------------------


def test_prompt_over_max_model_len(llm):
    assert llm.generate([5] * (MAX_MODEL_LEN - 1), greedy(1))[0].finish_reason == "length"
    with pytest.raises(TomeError) as exc_info:
        llm.generate([5] * MAX_MODEL_LEN, greedy())  # no room left for an answer
    assert_one_line(exc_info, PromptTooLongError)


def test_generation_stops_at_max_model_len(llm):
    out = llm.generate([5] * (MAX_MODEL_LEN - 3), greedy(max_tokens=10))[0]
    assert out.finish_reason == "length"
    assert len(out.token_ids) == 3


@pytest.fixture(scope="module")
def small_pool_llm(tiny_llama):
    """A pool of 4 blocks of 16: 64 tokens, far less than the 1024-token window."""
    return LLM(str(tiny_llama), kv_cache_memory=4 * BLOCK_BYTES)


def test_prompt_over_the_kv_pool(small_pool_llm):
    assert small_pool_llm.engine.kv_capacity_tokens == 64
    with pytest.raises(TomeError) as exc_info:
        small_pool_llm.generate([5] * 64, greedy())
    assert_one_line(exc_info, KVCacheCapacityError)
    assert small_pool_llm.generate([5] * 63, greedy(1))[0].finish_reason == "length"


def test_generation_that_fills_the_kv_pool_ends_instead_of_hanging(small_pool_llm):
    out = small_pool_llm.generate([5] * 60, greedy(max_tokens=20))[0]
    assert out.finish_reason == "length"
    assert len(out.token_ids) == 4  # 60 + 4 = the pool's 64 slots


def test_requests_sharing_a_small_pool_all_complete(small_pool_llm):
    # Three 30-token prompts in 64 slots: they must take turns (preemption), and each
    # must equal its run alone.
    prompts = [[7 + i] * 30 for i in range(3)]
    preemptions = small_pool_llm.engine.scheduler.num_preemptions
    together = small_pool_llm.generate(prompts, greedy(max_tokens=8))
    assert small_pool_llm.engine.scheduler.num_preemptions > preemptions
    for prompt, out in zip(prompts, together, strict=True):
        assert out.token_ids == small_pool_llm.generate(prompt, greedy(max_tokens=8))[0].token_ids


@pytest.mark.parametrize(
    ("prompt", "error_type"),
    [
        ("", InvalidRequestError),
        ([1, 49152], InvalidRequestError),  # vocab is 49152
        ([1, -1], InvalidRequestError),
        ([1, "2"], InvalidRequestError),
    ],
)
def test_bad_single_prompt(llm, prompt, error_type):
    with pytest.raises(TomeError) as exc_info:
        llm.generate(prompt, greedy())
    assert_one_line(exc_info, error_type)


@pytest.mark.parametrize("prompt", [[], 1.5, None])
def test_malformed_prompt_in_a_batch(llm, prompt):
    outputs = llm.generate(["fine", prompt], greedy(2))
    assert outputs[0].finish_reason == "length"
    assert outputs[1].finish_reason == "error"
    assert outputs[1].error and "\n" not in outputs[1].error


def test_bad_request_in_a_batch_fails_alone(llm):
    good, good2 = "The first good prompt", [11, 22, 33, 44, 55]
    too_long = [9] * (MAX_MODEL_LEN + 10)
    outputs = llm.generate([good, too_long, good2], greedy())
    assert len(outputs) == 3
    assert outputs[1].finish_reason == "error"
    assert outputs[1].error and "\n" not in outputs[1].error
    assert str(MAX_MODEL_LEN) in outputs[1].error
    assert outputs[1].token_ids == []
    alone = [llm.generate(p, greedy())[0] for p in (good, good2)]
    for out, reference in zip([outputs[0], outputs[2]], alone, strict=True):
        assert out.finish_reason == "length"
        assert out.token_ids == reference.token_ids
        assert out.text == reference.text
    # and the engine serves a request normally afterwards
    after = llm.generate(good, greedy())[0]
    assert after.token_ids == alone[0].token_ids
    assert not llm.engine.has_unfinished()
