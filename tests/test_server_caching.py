"""Context caching over HTTP (/v1/caching, the long-text platform's shape) on a live
`tome serve`: a cached document continued by chats that start with a `cache` message
answers as the same chat sent in full, with the cache's tokens reported as cached;
refresh, list, get and delete; unknown and deleted ids get 404; with keys, one key never
sees or uses another's cache. The official openai client sends role "cache" as is."""

import httpx
import openai
import pytest

from tests.live_server import LiveServer, create_keys

MODEL = "tiny"
DOCUMENT = " ".join(
    f"Chapter {i}: the lighthouse keeper counted {i * 7} ships and wrote their names down."
    for i in range(1, 25)
)
CACHED_MESSAGES = [
    {"role": "system", "content": "Answer from the document."},
    {"role": "user", "content": DOCUMENT},
]
QUESTIONS = ["How many ships in chapter 3?", "Who wrote the names down?"]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    live = LiveServer(tiny_llama, tmp_path_factory.mktemp("caching"), "--kv-cache-memory", "16MiB")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def create(server: LiveServer, key: str = "unused", **fields) -> httpx.Response:
    body = {"model": MODEL, "messages": CACHED_MESSAGES, **fields}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{server.base_url}/caching", json=body, headers=headers, timeout=120)


def ask(client: openai.OpenAI, messages: list[dict]):
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, temperature=0
    )


def using(cache_id: str, question: str, reset_ttl: int | None = None) -> list[dict]:
    content = f"cache_id={cache_id}" + (f";reset_ttl={reset_ttl}" if reset_ttl else "")
    return [{"role": "cache", "content": content}, {"role": "user", "content": question}]


def assert_not_found(response: httpx.Response, cache_id: str) -> None:
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found_error"
    assert cache_id in error["message"] and "\n" not in error["message"]


def test_cached_chats_answer_as_the_full_chats(server, client):
    response = create(server, name="lighthouse", metadata={"book": "log"}, ttl=600)
    assert response.status_code == 200, response.text
    cache = response.json()
    assert cache["object"] == "context_cache_object"
    assert cache["status"] == "ready" and cache["id"].startswith("cache-")
    assert cache["name"] == "lighthouse" and cache["metadata"] == {"book": "log"}
    assert 200 < cache["tokens"] < 1000
    assert cache["expired_at"] - cache["created_at"] in (599, 600, 601)
    for question in QUESTIONS:
        cached = ask(client, using(cache["id"], question))
        full = ask(client, [*CACHED_MESSAGES, {"role": "user", "content": question}])
        assert cached.choices[0].message.content == full.choices[0].message.content
        assert cached.usage.prompt_tokens == full.usage.prompt_tokens > cache["tokens"]
        assert cached.usage.prompt_tokens_details.cached_tokens == cache["tokens"]


def test_refresh_list_get_delete(server, client):
    cache = create(server, ttl=60).json()
    url = f"{server.base_url}/caching/{cache['id']}"
    refreshed = httpx.put(url, json={"ttl": 3000}, timeout=30).json()
    assert refreshed["expired_at"] >= cache["expired_at"] + 2900
    listed = httpx.get(f"{server.base_url}/caching", timeout=30).json()
    assert listed["object"] == "list"
    assert cache["id"] in [c["id"] for c in listed["data"]]
    assert httpx.get(url, timeout=30).json()["tokens"] == cache["tokens"]
    answer = ask(client, using(cache["id"], "What did the keeper count?", reset_ttl=1200))
    assert answer.usage.prompt_tokens_details.cached_tokens == cache["tokens"]
    assert httpx.get(url, timeout=30).json()["expired_at"] < refreshed["expired_at"]
    deleted = httpx.delete(url, timeout=30).json()
    assert deleted == {"id": cache["id"], "object": "context_cache_object.deleted", "deleted": True}
    assert_not_found(httpx.get(url, timeout=30), cache["id"])
    assert_not_found(httpx.delete(url, timeout=30), cache["id"])
    with pytest.raises(openai.NotFoundError, match=cache["id"]):
        ask(client, using(cache["id"], QUESTIONS[0]))
    assert cache["id"] not in [
        c["id"] for c in httpx.get(f"{server.base_url}/caching", timeout=30).json()["data"]
    ]


@pytest.mark.parametrize(
    ("messages", "phrase"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "cache", "content": "cache_id=x"}], "first"),
        ([{"role": "cache", "content": "id=x"}], "cache_id=<id>"),
    ],
)
def test_bad_cache_messages_get_400(client, messages, phrase):
    with pytest.raises(openai.BadRequestError, match=phrase):
        ask(client, messages)


def test_unknown_id_gets_404(server, client):
    with pytest.raises(openai.NotFoundError, match="cache-nope"):
        ask(client, using("cache-nope", QUESTIONS[0]))
    assert_not_found(httpx.get(f"{server.base_url}/caching/cache-nope", timeout=30), "cache-nope")


@pytest.fixture(scope="module")
def keyed(tiny_llama, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("caching_keys")
    config = data_dir / "tiers.toml"
    config.write_text("[tiers.free]\npriority = 0\n")
    keys = create_keys(data_dir, "free", "alice", "bob")
    args = ["--kv-cache-memory", "16MiB", "--config", str(config)]
    live = LiveServer(tiny_llama, data_dir, *args)
    yield live, keys
    live.stop()


def test_another_key_cannot_see_or_use_a_cache(keyed):
    server, keys = keyed
    cache = create(server, keys["alice"]).json()
    url = f"{server.base_url}/caching/{cache['id']}"
    alice, bob = ({"Authorization": f"Bearer {keys[n]}"} for n in ("alice", "bob"))
    assert httpx.get(url, headers=alice, timeout=30).status_code == 200
    assert_not_found(httpx.get(url, headers=bob, timeout=30), cache["id"])
    assert_not_found(httpx.put(url, json={"ttl": 9}, headers=bob, timeout=30), cache["id"])
    assert_not_found(httpx.delete(url, headers=bob, timeout=30), cache["id"])
    listed = httpx.get(f"{server.base_url}/caching", headers=bob, timeout=30).json()
    assert listed["data"] == []
    bob_client = openai.OpenAI(base_url=server.base_url, api_key=keys["bob"], max_retries=0)
    with pytest.raises(openai.NotFoundError, match=cache["id"]) as refused:
        ask(bob_client, using(cache["id"], QUESTIONS[0]))
    assert DOCUMENT[:40] not in refused.value.response.text
    alice_client = openai.OpenAI(base_url=server.base_url, api_key=keys["alice"], max_retries=0)
    answer = ask(alice_client, using(cache["id"], QUESTIONS[0]))
    assert answer.usage.prompt_tokens_details.cached_tokens == cache["tokens"]
    assert httpx.get(f"{server.base_url}/caching", timeout=30).status_code == 401
