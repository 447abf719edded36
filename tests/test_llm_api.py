"""The offline API, `from tome import LLM, SamplingParams`, checked against transformers:
prompt forms, RequestOutput fields, seeds, stop strings and ids, EOS, Chinese text, chat."""

import json
import random
import shutil

import pytest

from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams

KV_MEMORY = 64 << 20  # plenty for these prompts, and quick to allocate
PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3,"]
CHINESE = "请用中文写一首关于秋天的诗。你好，世界！长文本阅读。"


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), kv_cache_memory=KV_MEMORY)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return load_reference(tiny_llama)


def greedy(max_tokens: int = 8, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def random_ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(n)]


def test_every_prompt_form_gives_transformers_greedy_tokens(llm, hf_tokenizer, reference):
    encoded = [hf_tokenizer.encode(p) for p in PROMPTS]
    expected = [reference_greedy(reference, ids, 8)[0] for ids in encoded]

    single_text = llm.generate(PROMPTS[0], greedy())
    text_batch = llm.generate(PROMPTS, greedy())
    single_ids = llm.generate(encoded[0], greedy())
    ids_batch = llm.generate(encoded, greedy())

    assert len(single_text) == 1 and len(single_ids) == 1
    assert len(text_batch) == 3 and len(ids_batch) == 3
    for outputs in (single_text, single_ids):
        assert outputs[0].prompt_token_ids == encoded[0]
        assert outputs[0].token_ids == expected[0]
    for outputs in (text_batch, ids_batch):
        assert [o.prompt_token_ids for o in outputs] == encoded
        assert [o.token_ids for o in outputs] == expected


def test_request_output_fields(llm, hf_tokenizer):
    outputs = llm.generate(PROMPTS, greedy(max_tokens=7))
    assert len({o.request_id for o in outputs}) == 3
    assert all(isinstance(o.request_id, str) for o in outputs)
    for out in outputs:
        assert out.finished and out.finish_reason == "length"
        assert len(out.token_ids) == 7
        assert out.text == hf_tokenizer.decode(out.token_ids, skip_special_tokens=True)
        assert out.error is None
        assert out.logprobs is None  # not asked for


def test_num_cached_tokens_counts_full_blocks_of_a_repeated_prompt(llm):
    prompt = random_ids(40, seed=11)  # unique to this test: nothing cached yet
    first = llm.generate(prompt, greedy(max_tokens=2))[0]
    assert first.num_cached_tokens == 0
    again = llm.generate(prompt, greedy(max_tokens=2))[0]
    assert again.num_cached_tokens == 32  # (40 - 1) // 16 full blocks of 16
    assert again.token_ids == first.token_ids


def test_logprobs_have_one_entry_per_token_with_alternatives(llm, hf_tokenizer, reference):
    ids = hf_tokenizer.encode(PROMPTS[1])
    out = llm.generate(ids, greedy(max_tokens=6, logprobs=5))[0]
    _, reference_logprobs = reference_greedy(reference, ids, 6)
    assert len(out.logprobs) == len(out.token_ids) == 6
    for token, lp, theirs in zip(out.token_ids, out.logprobs, reference_logprobs, strict=True):
        assert lp.token_id == token
        assert len(lp.top) == 5
        assert list(lp.top) == theirs.topk(5).indices.tolist()
        assert lp.logprob == pytest.approx(float(theirs[token]), abs=1e-4)
        assert lp.top[token] == pytest.approx(lp.logprob)  # greedy: the best alternative


def test_logprobs_of_sampled_tokens(llm):
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=6, ignore_eos=True, logprobs=2)
    out = llm.generate(PROMPTS[2], params)[0]
    assert len(out.logprobs) == 6
    for token, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.token_id == token
        best = max(lp.top.values())
        assert len(lp.top) == 2 and lp.logprob <= best + 1e-6


def sampled(seed: int | None) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=12, ignore_eos=True)


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(llm):
    alone = llm.generate(PROMPTS[0], sampled(1234))[0].token_ids
    assert llm.generate(PROMPTS[0], sampled(1234))[0].token_ids == alone
    batch = llm.generate(
        ["Another prompt, longer than the first one by a bit", PROMPTS[0], "x"],
        [sampled(None), sampled(1234), greedy()],
    )
    assert batch[1].token_ids == alone
    assert llm.generate(PROMPTS[0], sampled(4321))[0].token_ids != alone


def test_stop_string_cuts_the_text_before_it(llm, hf_tokenizer):
    free = llm.generate(PROMPTS[0], greedy(max_tokens=16))[0]
    # A stop string that spans the boundary between the 5th and 6th tokens.
    boundary = len(hf_tokenizer.decode(free.token_ids[:5], skip_special_tokens=True))
    stop = free.text[boundary - 2 : boundary + 2]
    assert len(stop) == 4 and stop.strip()
    expected = free.text[: free.text.find(stop)]

    out = llm.generate(PROMPTS[0], greedy(max_tokens=16, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == expected
    assert stop not in out.text
    assert out.token_ids == free.token_ids[: len(out.token_ids)]
    assert len(out.token_ids) < 16


def test_stop_token_ids_end_the_output_at_that_token(llm, hf_tokenizer):
    free = llm.generate(PROMPTS[1], greedy(max_tokens=10))[0].token_ids
    stop_id = free[2]
    end = free.index(stop_id) + 1
    out = llm.generate(PROMPTS[1], greedy(max_tokens=10, stop_token_ids=[stop_id]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free[:end]
    # the stop token is returned as a token, not as text (as in vLLM)
    assert out.text == hf_tokenizer.decode(free[: end - 1], skip_special_tokens=True)


def test_eos_from_generation_config_stops_unless_ignore_eos(llm, tiny_llama, tmp_path):
    free = llm.generate(PROMPTS[2], greedy(max_tokens=10))[0].token_ids
    eos = free[2]  # make the model's third greedy token an end-of-sequence token
    model_dir = tmp_path / "eos_model"
    shutil.copytree(tiny_llama, model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [2, eos]
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    eos_llm = LLM(str(model_dir), kv_cache_memory=KV_MEMORY)

    stopped = eos_llm.generate(PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=10))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free[: free.index(eos) + 1]
    ignored = eos_llm.generate(PROMPTS[2], greedy(max_tokens=10))[0]
    assert ignored.finish_reason == "length"
    assert ignored.token_ids == free


def test_chinese_prompt_round_trips_through_our_tokenizer(llm, hf_tokenizer):
    ids = llm.tokenizer.encode(CHINESE)
    assert ids == hf_tokenizer.encode(CHINESE)
    assert llm.tokenizer.decode(ids) == hf_tokenizer.decode(ids) == CHINESE
    assert llm.generate(CHINESE, greedy(max_tokens=2))[0].prompt_token_ids == ids


def run_streamed(engine, prompts, params) -> list[tuple[object, str]]:
    """Drive the engine step by step; each request's final output and its joined deltas."""
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"stream-{i}", prompt, p)
    streamed: dict[str, str] = {}
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            streamed[out.request_id] = streamed.get(out.request_id, "") + out.delta_text
            if out.finished:
                final[out.request_id] = out
    assert len(final) == len(prompts)
    return [(final[f"stream-{i}"], streamed[f"stream-{i}"]) for i in range(len(prompts))]


def test_sampled_text_equals_transformers_decode(llm, hf_tokenizer):
    prompts = [CHINESE, "日本語のテキスト", "Ünïcödé ✓ 🙂", CHINESE[:7], "中", "Привет"]
    params = [
        SamplingParams(temperature=1.0, seed=seed, max_tokens=32, ignore_eos=True)
        for seed in range(len(prompts))
    ]
    for out, streamed in run_streamed(llm.engine, prompts, params):
        expected = hf_tokenizer.decode(out.token_ids, skip_special_tokens=True)
        assert out.text == expected
        assert streamed == expected
        if "\ufffd" not in expected:
            assert "\ufffd" not in out.text


def test_text_of_split_multibyte_characters_equals_transformers_decode(llm, hf_tokenizer):
    """Byte-level BPE splits CJK and emoji across tokens. A repetition penalty below 1
    makes the model resample the prompt's tokens, most of them such pieces, in any
    order; whatever bytes that makes, the streamed text must equal a decode of all ids."""
    prompt = CHINESE + "🙂😀 日本語のテキスト"
    params = [
        SamplingParams(
            temperature=1.0, seed=seed, max_tokens=32, ignore_eos=True, repetition_penalty=0.01
        )
        for seed in range(3)
    ]
    pieces = 0
    for out, streamed in run_streamed(llm.engine, [prompt] * 3, params):
        expected = hf_tokenizer.decode(out.token_ids, skip_special_tokens=True)
        assert out.text == expected
        assert streamed == expected
        pieces += sum("\ufffd" in hf_tokenizer.decode([t]) for t in out.token_ids)
    assert pieces >= 30  # the test only means something if pieces came out


def chat_ids(hf_tokenizer, conversation) -> list[int]:
    return list(
        hf_tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def test_chat_with_one_and_with_several_conversations(llm, hf_tokenizer):
    one = [{"role": "user", "content": "What is a book?"}]
    several = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "另一个？"},
        ],
    ]
    single = llm.chat(one, greedy(max_tokens=4))
    assert len(single) == 1
    assert single[0].prompt_token_ids == chat_ids(hf_tokenizer, one)
    assert single[0].token_ids == llm.generate(chat_ids(hf_tokenizer, one), greedy(4))[0].token_ids

    batch = llm.chat(several, greedy(max_tokens=4))
    assert [o.prompt_token_ids for o in batch] == [chat_ids(hf_tokenizer, c) for c in several]
    assert all(len(o.token_ids) == 4 for o in batch)
