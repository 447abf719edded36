"""Context caching over HTTP (/v1/caching, the long-text platform's shape) on a live
`tome serve`: a cached document continued by chats that start with a `cache` message
answers as the same chat sent in full, with the cache's tokens reported as cached and
billed so in the usage ledger; refresh, list, get and delete; tags name caches and chats
use them; unknown and deleted ids, and tags of deleted caches, get 404; with keys, one key
never sees or uses another's cache or tag, and a tier's pinned-token limit holds; a
conversation's documents stay pinned until it is deleted. The official openai client sends
role "cache" as is."""

import time

import httpx
import openai
import pytest

from tests.live_server import LiveServer, create_keys
from tome.store import Database, UsageEntry, UsageStore

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
PINNED_LIMIT = 700  # more than one cache of CACHED_MESSAGES, less than two


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


def assert_not_found(response: httpx.Response, *names: str) -> None:
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found_error"
    assert all(name in error["message"] for name in names) and "\n" not in error["message"]


def tagging(tag: str, reset_ttl: int | None = None) -> list[dict]:
    content = f"tag={tag}" + (f";reset_ttl={reset_ttl}" if reset_ttl else "")
    return [{"role": "cache", "content": content}, {"role": "user", "content": QUESTIONS[0]}]


def tag(server: LiveServer, name: str, cache_id: str, key: str = "unused") -> httpx.Response:
    body = {"tag": name, "cache_id": cache_id}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{server.base_url}/caching/refs/tags", json=body, headers=headers)


def ledger_entry(server: LiveServer, request_id: str) -> UsageEntry:
    """The request's usage row; the ledger writes in the background."""
    store = UsageStore(Database(server.database_url))
    deadline = time.monotonic() + 30
    while (entry := store.entry(request_id)) is None:
        assert time.monotonic() < deadline, f"no ledger row for {request_id}"
        time.sleep(0.05)
    return entry


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


def test_chats_using_a_cache_are_billed_its_tokens_as_cached(server, client):
    cache = create(server).json()
    made = ledger_entry(server, cache["id"])
    assert (made.endpoint, made.status) == ("caching", "finished")
    assert (made.prompt_tokens, made.cached_tokens, made.completion_tokens) == (
        cache["tokens"],
        0,
        0,
    )
    answer = ask(client, using(cache["id"], QUESTIONS[0]))
    billed = ledger_entry(server, answer.id)
    assert billed.endpoint == "chat"
    assert billed.prompt_tokens == answer.usage.prompt_tokens > cache["tokens"]
    assert billed.cached_tokens == answer.usage.prompt_tokens_details.cached_tokens
    assert billed.cached_tokens >= cache["tokens"]  # and what earlier chats left cached
    httpx.delete(f"{server.base_url}/caching/{cache['id']}", timeout=30)


def test_tags_name_caches_and_chats_use_them(server, client):
    first, second = create(server).json(), create(server).json()
    made = tag(server, "lighthouse.book-1", first["id"])
    assert made.status_code == 200, made.text
    assert made.json() == {
        "tag": "lighthouse.book-1",
        "cache_id": first["id"],
        "object": "cache_object.tag",
        "owned_by": "local",
        "created_at": made.json()["created_at"],
    }
    url = f"{server.base_url}/caching/refs/tags/lighthouse.book-1"
    assert httpx.get(url).json() == made.json()
    content = httpx.get(f"{url}/content").json()
    assert content["id"] == first["id"] and content["tokens"] == first["tokens"]
    by_tag = ask(client, tagging("lighthouse.book-1", reset_ttl=1200))
    by_id = ask(client, using(first["id"], QUESTIONS[0]))
    assert by_tag.choices[0].message.content == by_id.choices[0].message.content
    assert by_tag.usage.prompt_tokens_details.cached_tokens >= first["tokens"]

    moved = tag(server, "lighthouse.book-1", second["id"]).json()  # the tag moves
    assert moved["cache_id"] == second["id"]
    assert httpx.get(f"{url}/content").json()["id"] == second["id"]
    tag(server, "other", second["id"])
    listed = httpx.get(f"{server.base_url}/caching/refs/tags").json()
    assert listed["object"] == "list"
    assert [t["tag"] for t in listed["data"]][:2] == ["other", "lighthouse.book-1"]
    oldest = httpx.get(f"{server.base_url}/caching/refs/tags", params={"order": "asc"}).json()
    names = [t["tag"] for t in oldest["data"]]
    after = {"order": "asc", "after": names[0], "limit": 1}
    page = httpx.get(f"{server.base_url}/caching/refs/tags", params=after).json()
    assert [t["tag"] for t in page["data"]] == names[1:2]

    deleted = httpx.delete(url).json()
    assert deleted == {
        "tag": "lighthouse.book-1",
        "object": "cache_object.tag.deleted",
        "deleted": True,
    }
    assert httpx.delete(url).status_code == 200  # as the platform: gone either way
    assert_not_found(httpx.get(url), "lighthouse.book-1")
    with pytest.raises(openai.NotFoundError, match=r"lighthouse\.book-1"):
        ask(client, tagging("lighthouse.book-1"))
    for cache in (first, second):
        httpx.delete(f"{server.base_url}/caching/{cache['id']}")


def test_a_tag_of_a_deleted_cache_answers_404(server, client):
    cache = create(server).json()
    tag(server, "gone", cache["id"])
    httpx.delete(f"{server.base_url}/caching/{cache['id']}")
    url = f"{server.base_url}/caching/refs/tags/gone"
    assert httpx.get(url).json()["cache_id"] == cache["id"]  # the tag itself remains
    assert_not_found(httpx.get(f"{url}/content"), "gone", cache["id"], "deleted")
    with pytest.raises(openai.NotFoundError, match=cache["id"]):
        ask(client, tagging("gone"))
    assert_not_found(tag(server, "again", cache["id"]), cache["id"])


@pytest.mark.parametrize("name", ["1st", "-x", "a b", "x" * 129, ""])
def test_bad_tag_names_get_400(server, name):
    response = tag(server, name, "cache-nope")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("tag:")


def test_a_conversation_keeps_its_documents_pinned_until_deleted(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        upload = {"file": ("log.txt", DOCUMENT.encode())}
        file = http.post("/files", files=upload, data={"purpose": "file-extract"}).json()
        conversation = http.post("/conversations").json()["id"]
        attachment = {"kind": "file", "file_id": file["id"]}
        http.post(f"/conversations/{conversation}/attachments", json=attachment)

        def pins() -> list[dict]:
            caches = http.get("/caching").json()["data"]
            return [c for c in caches if c["metadata"].get("conversation_id") == conversation]

        body = {"stream": False, "temperature": 0, "max_tokens": 4, "pin_ttl": 600}
        pinned = []
        for question in QUESTIONS:
            url = f"/conversations/{conversation}/answers"
            response = http.post(url, json={**body, "question": question})
            assert response.status_code == 200, response.text
            metadata = response.json()["message"]["metadata"]
            [pin] = pins()
            assert metadata["mode"] == "full"
            assert metadata["usage"]["cached_tokens"] >= pin["tokens"] > len(DOCUMENT) // 8
            pinned.append(pin["id"])
        assert pinned[0] == pinned[1]  # kept, its time to live reset, not made again
        assert http.delete(f"/conversations/{conversation}").status_code == 200
        assert pins() == []


@pytest.fixture(scope="module")
def keyed(tiny_llama, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("caching_keys")
    config = data_dir / "tiers.toml"
    config.write_text(
        f"[tiers.free]\npriority = 0\n[tiers.capped]\nmax_pinned_tokens = {PINNED_LIMIT}\n"
    )
    keys = create_keys(data_dir, "free", "alice", "bob")
    keys |= create_keys(data_dir, "capped", "carol")
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


def test_another_key_cannot_see_or_use_a_tag(keyed):
    server, keys = keyed
    cache = create(server, keys["alice"]).json()
    assert tag(server, "shared-name", cache["id"], keys["alice"]).status_code == 200
    url = f"{server.base_url}/caching/refs/tags/shared-name"
    alice, bob = ({"Authorization": f"Bearer {keys[n]}"} for n in ("alice", "bob"))
    assert_not_found(httpx.get(url, headers=bob), "shared-name")
    assert_not_found(httpx.get(f"{url}/content", headers=bob), "shared-name")
    assert httpx.get(f"{server.base_url}/caching/refs/tags", headers=bob).json()["data"] == []
    assert_not_found(tag(server, "mine", cache["id"], keys["bob"]), cache["id"])
    bob_client = openai.OpenAI(base_url=server.base_url, api_key=keys["bob"], max_retries=0)
    with pytest.raises(openai.NotFoundError, match="shared-name"):
        ask(bob_client, tagging("shared-name"))
    assert httpx.delete(url, headers=bob).status_code == 200  # deletes nothing of alice's
    assert httpx.get(url, headers=alice).json()["cache_id"] == cache["id"]


def test_the_pinned_token_limit_refuses_with_429_and_frees_on_delete(keyed):
    server, keys = keyed
    first = create(server, keys["carol"], ttl=600)
    assert first.status_code == 200, first.text
    tokens = first.json()["tokens"]
    assert tokens <= PINNED_LIMIT < 2 * tokens
    refused = create(server, keys["carol"])
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "max_pinned_tokens")
    assert f"{PINNED_LIMIT} tokens" in error["message"]
    assert f"has {tokens} pinned" in error["message"] and "\n" not in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 600
    headers = {"Authorization": f"Bearer {keys['carol']}"}
    httpx.delete(f"{server.base_url}/caching/{first.json()['id']}", headers=headers)
    assert create(server, keys["carol"]).status_code == 200
    assert create(server, keys["alice"]).status_code == 200  # alice's tier has no limit
