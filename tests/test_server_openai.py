"""The OpenAI-compatible API of a live `tome serve` (open local mode), through the official
`openai` client: greedy answers equal transformers', streamed and not, usage (in streams
too, cached tokens on a shared prefix), stop strings, seeds, logprobs, n > 1, 32
concurrent streams, a client that disconnects, and bad input answered with one clear 4xx."""

import asyncio

import httpx
import openai
import pytest
import torch

from tests.live_server import LiveServer
from tests.reference import load_reference, reference_greedy

MODEL = "tiny"
EOS = 2  # the tiny models' eos_token_id (<|im_end|> of the SmolLM2 vocabulary)


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    live = LiveServer(tiny_llama, tmp_path_factory.mktemp("server"), "--kv-cache-memory", "16MiB")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return load_reference(tiny_llama)


@pytest.fixture(scope="module")
def expect(reference, hf_tokenizer):
    """transformers' greedy answer to a chat (messages) or a plain prompt (str): text,
    finish reason and token count, stopping after EOS as the server does."""

    def answer(prompt, max_tokens: int) -> tuple[str, str, int]:
        if isinstance(prompt, str):
            ids = hf_tokenizer.encode(prompt)
        else:
            ids = chat_ids(hf_tokenizer, prompt)
        tokens, _ = reference_greedy(reference, ids, max_tokens)
        finish = "length"
        if EOS in tokens:
            tokens, finish = tokens[: tokens.index(EOS) + 1], "stop"
        return hf_tokenizer.decode(tokens, skip_special_tokens=True), finish, len(tokens)

    return answer


def chat_ids(hf_tokenizer, messages) -> list[int]:
    return list(
        hf_tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_chat_greedy_equals_transformers(client, expect, hf_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        *user("Name a colour."),
        {"role": "assistant", "content": "Blue."},
        *user("Another?"),
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0
    )
    text, finish, count = expect(messages, 12)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == text
    assert answer.choices[0].finish_reason == finish
    usage = answer.usage
    assert usage.prompt_tokens == len(chat_ids(hf_tokenizer, messages))
    assert usage.completion_tokens == count
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_carries_the_same_answer_and_usage(client, expect):
    messages = user("Tell me about rivers.")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_completion_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text, finish, count = expect(messages, 10)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == count
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + count


def test_completions_streamed_and_not(client, expect, hf_tokenizer):
    prompt = "The capital of France is"
    text, finish, count = expect(prompt, 8)
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (text, finish)
    assert answer.usage.prompt_tokens == len(hf_tokenizer.encode(prompt))
    assert answer.usage.completion_tokens == count
    stream = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == count


def test_stop_string_ends_the_answer_before_it(client, expect):
    messages = user("Count slowly.")
    full, _, _ = expect(messages, 12)
    words = full.split()
    stop = words[2] if len(words) > 2 else full[len(full) // 2 :]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, stop=[stop]
    )
    assert answer.choices[0].message.content == full[: full.index(stop)]
    assert answer.choices[0].finish_reason == "stop"


def test_seed_reproduces_a_sampled_answer(client):
    def sample(seed: int) -> str:
        answer = client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=seed
        )
        return answer.choices[0].text

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_logprobs_equal_transformers(client, reference, hf_tokenizer):
    messages = user("Say something.")
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    tokens, logprobs = reference_greedy(reference, chat_ids(hf_tokenizer, messages), 4)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == len(tokens)
    for entry, token, row in zip(entries, tokens, logprobs, strict=True):
        assert entry.token == hf_tokenizer.decode([token])
        assert entry.logprob == pytest.approx(row[token].item(), abs=1e-3)
        top = torch.topk(row, 3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            top.values.tolist(), abs=1e-3
        )
        assert [t.token for t in entry.top_logprobs] == [
            hf_tokenizer.decode([i]) for i in top.indices.tolist()
        ]
    completion = client.completions.create(
        model=MODEL, prompt="One two", max_tokens=3, temperature=0, logprobs=2
    )
    tokens, logprobs = reference_greedy(reference, hf_tokenizer.encode("One two"), 3)
    expected = [row[token].item() for token, row in zip(tokens, logprobs, strict=True)]
    assert completion.choices[0].logprobs.token_logprobs == pytest.approx(expected, abs=1e-3)
    assert all(len(top) == 2 for top in completion.choices[0].logprobs.top_logprobs)


def test_n_choices(client, expect):
    messages = user("Pick a number.")
    text, _, count = expect(messages, 6)
    greedy = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, n=3
    )
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert [c.message.content for c in greedy.choices] == [text] * 3
    assert greedy.usage.completion_tokens == 3 * count
    sampled = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=1.0, seed=3, n=2, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in sampled:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] and texts[1] and texts[0] != texts[1]


def test_shared_long_prefix_reports_cached_tokens(client, hf_tokenizer):
    book = " ".join(f"Chapter {i} tells of the river and the mill." for i in range(30))
    first = [{"role": "system", "content": book}, *user("Who owns the mill?")]
    second = [{"role": "system", "content": book}, *user("Where is the river?")]
    answers = [
        client.chat.completions.create(model=MODEL, messages=m, max_tokens=2, temperature=0)
        for m in (first, second)
    ]
    a, b = chat_ids(hf_tokenizer, first), chat_ids(hf_tokenizer, second)
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    cached = answers[1].usage.prompt_tokens_details.cached_tokens
    assert shared > 300
    assert shared - 16 <= cached <= shared  # whole 16-token blocks of the shared prefix


def test_32_concurrent_streams_equal_each_alone(client, server, expect):
    prompts = [f"Story {i}: the {['fox', 'owl', 'cat', 'elk'][i % 4]} went" for i in range(32)]

    def alone(prompt: str) -> str:
        answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
        return answer.choices[0].text

    async def streamed(aclient: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await aclient.completions.create(
            model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True
        )
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def together() -> list[str]:
        aclient = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="unused", max_retries=0, timeout=120
        )
        async with aclient:
            return await asyncio.gather(*(streamed(aclient, p) for p in prompts))

    solo = [alone(p) for p in prompts]
    assert asyncio.run(together()) == solo
    assert solo == [expect(p, 6)[0] for p in prompts]


def completion_tokens(server: LiveServer) -> float:
    return server.metrics()['tome_tokens_total{kind="completion"}']


def test_disconnect_mid_stream_frees_the_kv_pool(server):
    idle = server.wait_until_idle()["tome_kv_cache_usage_ratio"]
    before = completion_tokens(server)
    body = {"model": MODEL, "prompt": "Keep going", "max_tokens": 1000, "stream": True}
    body["ignore_eos"] = True
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=60) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
        assert next(lines) == ""
        assert next(lines).startswith("data: ")
    metrics = server.wait_until_idle()
    assert metrics["tome_kv_cache_usage_ratio"] == idle
    assert metrics["tome_running_requests"] == 0
    assert completion_tokens(server) - before < 1000  # aborted, not run to the end


def test_disconnect_while_waiting_for_a_whole_answer_aborts_it(server):
    before = completion_tokens(server)
    body = {"model": MODEL, "prompt": "Keep going", "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    metrics = server.wait_until_idle()
    assert metrics["tome_kv_cache_usage_ratio"] == 0
    assert completion_tokens(server) - before < 1000


BAD_BODIES = [
    ("not json", '{"model": "tiny", "messages": [', "not valid JSON"),
    ("wrong type", {"model": MODEL, "messages": user("hi"), "max_tokens": "many"}, "max_tokens"),
    ("unknown model", {"model": "gpt-9", "messages": user("hi")}, "gpt-9"),
    ("negative max_tokens", {"model": MODEL, "messages": user("hi"), "max_tokens": -5}, "max_tok"),
    ("huge max_tokens", {"model": MODEL, "messages": user("hi"), "max_tokens": 10**9}, "window"),
    ("empty messages", {"model": MODEL, "messages": []}, "messages"),
    ("no model", {"messages": user("hi")}, "model is required"),
    ("bad role", {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ("over the window", {"model": MODEL, "messages": user("word " * 1100)}, "window"),
    ("temperature", {"model": MODEL, "messages": user("hi"), "temperature": -1}, "temperature"),
    ("empty stop", {"model": MODEL, "messages": user("hi"), "stop": [""]}, "stop"),
    ("array body", [1, 2], "JSON object"),
]


@pytest.mark.parametrize(("case", "body", "hint"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input_gets_one_clear_4xx_and_the_next_request_works(client, server, case, body, hint):
    url = f"{server.base_url}/chat/completions"
    if isinstance(body, str):
        reply = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        reply = httpx.post(url, json=body)
    assert 400 <= reply.status_code < 500, case
    error = reply.json()["error"]
    assert hint in error["message"]
    assert "\n" not in error["message"]
    assert error["type"]
    ok = client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=user("hi"))
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded"):
        client.completions.create(model=MODEL, prompt="word " * 1100)
    with pytest.raises(openai.BadRequestError, match="prompt token ids"):
        client.completions.create(model=MODEL, prompt=[10**7], stream=True)


def test_models_tokenize_health_and_metrics(client, server, hf_tokenizer):
    assert [m.id for m in client.models.list()] == [MODEL]
    messages = user("How many tokens is this?")
    counted = httpx.post(f"{server.base_url}/tokenize", json={"messages": messages}).json()
    assert counted["tokens"] == chat_ids(hf_tokenizer, messages)
    assert counted["count"] == len(counted["tokens"])
    assert counted["max_model_len"] == 1024
    plain = httpx.post(f"{server.base_url}/tokenize", json={"prompt": "Hello there"}).json()
    assert plain["tokens"] == hf_tokenizer.encode("Hello there")
    # The long-text platform's estimate: its shape, and the chat template's count.
    estimate = client.post(
        "/tokenizers/estimate-token-count",
        body={"model": MODEL, "messages": messages},
        cast_to=httpx.Response,
    ).json()
    assert estimate == {"data": {"total_tokens": len(chat_ids(hf_tokenizer, messages))}}
    empty = httpx.post(f"{server.base_url}/tokenizers/estimate-token-count", json={"messages": []})
    assert empty.status_code == 400 and "messages" in empty.json()["error"]["message"]
    assert httpx.get(f"{server.root}/health").json() == {"status": "ok"}
    metrics = server.metrics()
    assert metrics['tome_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert metrics['tome_requests_total{endpoint="/v1/chat/completions",status="400"}'] >= 1
    # Without keys every caller is the local tier.
    assert metrics['tome_time_to_first_token_seconds_count{tier="local"}'] >= 1
    assert metrics['tome_queue_time_seconds_count{tier="local"}'] >= 1
    steps = metrics["tome_prefills_per_step_count"]
    assert 0 < metrics['tome_prefills_per_step_bucket{le="1"}'] <= steps
    assert metrics['tome_prefills_per_step_bucket{le="+Inf"}'] == steps
    assert metrics["tome_time_per_output_token_seconds_count"] >= 1
    assert 0 < metrics["tome_prefix_cache_hit_rate"] <= 1
    assert "tome_kv_cache_usage_ratio" in metrics
    # The server runs without host or disk tiers: device hits only.
    assert metrics['tome_kv_tier{counter="device_hit_tokens"}'] > 0
    assert metrics['tome_kv_tier{counter="host_hit_tokens"}'] == 0
