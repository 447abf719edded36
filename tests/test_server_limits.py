"""Keys, tiers and limits of a live `tome serve` with API keys: unknown and revoked keys get
401; requests-per-minute, tokens-per-minute, concurrency and the daily quota each get 429
with Retry-After naming the limit; a tier's context limit gets 400; with the engine
saturated by free-tier requests a pro request is served first (its time to first token
stays a small multiple of its unloaded value) and a tier with a queue-wait bound is
turned away with 503; the usage ledger and `tome usage` add up what the API reported."""

import statistics
import threading
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from tests.live_server import LiveServer
from tome.cli import app
from tome.store import Database, KeyStore, UsageStore

MODEL = "tiny"
TIERS = """
[prices]
prompt = 2.0
cached_prompt = 0.5
completion = 4.0

[tiers.free]
priority = 10

[tiers.pro]
priority = 0

[tiers.shed]
priority = 10
max_queue_wait_seconds = 0.001

[tiers.rpm]
requests_per_minute = 3

[tiers.tpm]
tokens_per_minute = 150

[tiers.concurrency]
concurrent_requests = 1

[tiers.quota]
daily_token_quota = 120

[tiers.small]
max_context_tokens = 64

[tiers.billed]
"""
# A small KV pool (512 bytes a token: about 2,000 tokens) that a flood of free-tier
# requests overfills, so that some of them wait.
KV_POOL = "1MiB"
FLOOD = 24
FLOOD_PROMPT_WORDS = 150
FLOOD_TOKENS = 80
TTFT_RATIO_BOUND = 10  # generous: two shared cores, the flood's clients in this process


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("limits")


@pytest.fixture(scope="module")
def config_path(data_dir):
    path = data_dir / "tiers.toml"
    path.write_text(TIERS)
    return path


@pytest.fixture(scope="module")
def keys(data_dir) -> dict[str, str]:
    """One key per tier, made before the server starts (so it requires keys), plus a
    revoked one and one whose tier the config does not know."""
    store = KeyStore(Database(f"sqlite:///{data_dir / 'tome.db'}"))
    made = {tier: store.create(tier, name=tier)[0] for tier in TIERS_IN_USE}
    made["revoked"] = store.create("pro", name="revoked")[0]
    made["gold"] = store.create("gold", name="unconfigured")[0]
    return made


TIERS_IN_USE = ["free", "pro", "shed", "rpm", "tpm", "concurrency", "quota", "small", "billed"]


@pytest.fixture(scope="module")
def server(tiny_llama, data_dir, config_path, keys):
    args = ["--kv-cache-memory", KV_POOL, "--config", str(config_path)]
    live = LiveServer(tiny_llama, data_dir, *args)
    yield live
    live.stop()


def client_for(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def ask(server, key: str, max_tokens: int = 4, content: str = "hi", **extra):
    return client_for(server, key).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        **extra,
    )


def assert_limited(exc: pytest.ExceptionInfo, code: str) -> float:
    """A 429 naming the limit, with a Retry-After in whole seconds; returns it."""
    response = exc.value.response
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == code
    assert code in error["message"]
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def test_unknown_missing_and_revoked_keys_get_401(server, keys, data_dir):
    with pytest.raises(openai.AuthenticationError, match="not valid"):
        ask(server, "tome-not-a-key")
    assert ask(server, keys["revoked"]).choices
    KeyStore(Database(server.database_url)).revoke(keys["revoked"])
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        ask(server, keys["revoked"])
    reply = httpx.get(f"{server.base_url}/models")
    assert reply.status_code == 401
    assert "Authorization: Bearer" in reply.json()["error"]["message"]
    with pytest.raises(openai.PermissionDeniedError, match="gold"):
        ask(server, keys["gold"])


def test_requests_per_minute(server, keys):
    for _ in range(3):
        ask(server, keys["rpm"])
    with pytest.raises(openai.RateLimitError) as exc:
        ask(server, keys["rpm"])
    assert assert_limited(exc, "requests_per_minute") <= 60


def test_tokens_per_minute(server, keys):
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(6):  # each: about 31 prompt and 20 answer tokens, 150 a minute
            ask(server, keys["tpm"], max_tokens=20, extra_body={"ignore_eos": True})
    assert assert_limited(exc, "tokens_per_minute") <= 60


def test_concurrent_requests(server, keys):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
    }
    headers = {"Authorization": f"Bearer {keys['concurrency']}"}
    url = f"{server.base_url}/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as reply:
        lines = reply.iter_lines()  # kept: dropping it would close the connection
        assert next(lines).startswith("data: ")
        with pytest.raises(openai.RateLimitError) as exc:
            ask(server, keys["concurrency"])
        assert_limited(exc, "concurrent_requests")
    deadline = time.monotonic() + 30
    while True:  # the slot comes back once the server notices the disconnect
        try:
            assert ask(server, keys["concurrency"]).choices
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_daily_quota(server, keys):
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(4):  # about 50 tokens each, 120 a day
            ask(server, keys["quota"], max_tokens=20, extra_body={"ignore_eos": True})
    assert assert_limited(exc, "daily_token_quota") <= 24 * 3600


def test_tier_context_limit(server, keys):
    with pytest.raises(openai.BadRequestError, match="'small' tier's context limit of 64"):
        ask(server, keys["small"], max_tokens=40)
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded"):
        ask(server, keys["small"], content="word " * 80)
    assert ask(server, keys["small"], max_tokens=8).choices


def time_to_first_token(server, key: str, index: int) -> float:
    """Seconds from sending a streamed request to its first event (its first token)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Question {index}"}],
        "max_tokens": 2,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    url = f"{server.base_url}/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as reply:
        assert reply.status_code == 200
        next(reply.iter_lines())
        return time.perf_counter() - start


def flood(server, key: str, errors: list) -> list[threading.Thread]:
    """FLOOD free-tier requests with long prompts, from threads: more than the KV pool
    holds, so that many wait for their first token."""

    def one(i: int) -> None:
        content = f"flood {i} " + "word " * FLOOD_PROMPT_WORDS
        try:
            ask(server, key, FLOOD_TOKENS, content, extra_body={"ignore_eos": True})
        except Exception as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(FLOOD)]
    for thread in threads:
        thread.start()
    return threads


def test_pro_is_served_first_and_shed_tier_is_refused_when_saturated(server, keys):
    unloaded = statistics.median(time_to_first_token(server, keys["pro"], i) for i in range(3))
    errors: list = []
    threads = flood(server, keys["free"], errors)
    deadline = time.monotonic() + 60
    while server.metrics()["tome_waiting_requests"] == 0:  # saturated: requests queue
        assert time.monotonic() < deadline, "the flood never filled the KV pool"
        time.sleep(0.02)
    with pytest.raises(openai.InternalServerError) as shed:
        ask(server, keys["shed"])
    loaded = statistics.median(time_to_first_token(server, keys["pro"], i) for i in range(3, 6))
    free = time_to_first_token(server, keys["free"], 6)
    for thread in threads:
        thread.join()
    assert not errors
    print(f"TTFT: pro {unloaded * 1e3:.0f} ms unloaded, {loaded * 1e3:.0f} ms saturated; ", end="")
    print(f"free {free * 1e3:.0f} ms saturated")
    assert loaded <= TTFT_RATIO_BOUND * unloaded
    assert loaded < free  # the pro request did not wait in line
    metrics = server.metrics()
    for tier in ("pro", "free"):  # per tier, as the engine measured them
        assert metrics[f'tome_time_to_first_token_seconds_count{{tier="{tier}"}}'] >= 3
        assert metrics[f'tome_queue_time_seconds_count{{tier="{tier}"}}'] >= 3
    # Free requests queued behind the flood; pro ones did not.
    assert (
        metrics['tome_queue_time_seconds_sum{tier="free"}']
        / metrics['tome_queue_time_seconds_count{tier="free"}']
        > metrics['tome_queue_time_seconds_sum{tier="pro"}']
        / metrics['tome_queue_time_seconds_count{tier="pro"}']
    )
    response = shed.value.response
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "overloaded_error"
    assert int(response.headers["retry-after"]) >= 1


def test_usage_ledger_and_report(server, keys, config_path):
    answers = [ask(server, keys["billed"], max_tokens=5) for _ in range(2)]
    prompt = sum(a.usage.prompt_tokens for a in answers)
    cached = sum(a.usage.prompt_tokens_details.cached_tokens for a in answers)
    completion = sum(a.usage.completion_tokens for a in answers)
    store = UsageStore(Database(server.database_url))
    deadline = time.monotonic() + 30
    while True:  # the ledger writes in the background, a request's final row last
        rows = [row for row in store.totals() if row.key_name == "billed"]
        tokens = rows and (rows[0].prompt_tokens, rows[0].cached_tokens, rows[0].completion_tokens)
        if tokens == (prompt, cached, completion):
            break
        assert time.monotonic() < deadline, tokens
        time.sleep(0.05)
    row = rows[0]
    assert row.requests == 2
    cost = ((prompt - cached) * 2.0 + cached * 0.5 + completion * 4.0) / 1e6
    args = ["usage", "--config", str(config_path), "--database-url", server.database_url]
    result = CliRunner().invoke(app, [*args, "--key", str(row.key_id), "--since", "1h"])
    assert result.exit_code == 0, result.output
    assert "billed" in result.output
    assert f"${cost:.4f}" in result.output
