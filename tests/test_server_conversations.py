"""Saved conversations on a live `tome serve` with two API keys: create, list (most recently
changed first), rename, append messages (Chinese too) with an answer's mode and citations,
attach files and URLs, export as Markdown and JSON, delete; another key's conversations are
404 to a key; bad input gets a 400 naming the field. The open mode's local user (no key) is
checked on the store itself."""

import json

import httpx
import pytest

from tests.live_server import LiveServer, create_keys
from tests.web_pages_server import PagesServer
from tome.store import ConversationNotFoundError, ConversationStore, Database, KeyStore

QUESTION_ZH = "这本书的主角是谁？请引用原文。"
ANSWER_ZH = "主角是贾宝玉 [1]，他住在大观园 [2]。"
CITATIONS = [
    {
        "number": 1,
        "source_id": "file-hongloumeng",
        "source_title": "红楼梦",
        "section_title": "第三回",
        "page": 12,
    },
    {"number": 2, "source_id": "https://example.org/garden", "source_title": "Grand View Garden"},
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("conversations")


@pytest.fixture(scope="module")
def keys(data_dir) -> dict[str, str]:
    return create_keys(data_dir, "pro", "alice", "bob")


@pytest.fixture(scope="module")
def server(tiny_llama, data_dir, keys):
    config = data_dir / "tome.toml"
    config.write_text('[web]\nallowed_private_hosts = ["127.0.0.1"]\n')
    live = LiveServer(tiny_llama, data_dir, "--config", str(config), "--kv-cache-memory", "1MiB")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def alice(server, keys):
    with httpx.Client(base_url=server.base_url, headers=_auth(keys["alice"]), timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def bob(server, keys):
    with httpx.Client(base_url=server.base_url, headers=_auth(keys["bob"]), timeout=30) as c:
        yield c


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


def listed_ids(client: httpx.Client) -> list[str]:
    body = ok(client.get("/conversations"))
    assert body["object"] == "list"
    return [c["id"] for c in body["data"]]


def filled_conversation(client: httpx.Client, pages: PagesServer) -> str:
    """A conversation with a system prompt, a Chinese question, a cited answer, a file and
    a URL attached."""
    conversation_id = ok(client.post("/conversations", json={"title": "读红楼梦"}))["id"]
    turns = [
        {"role": "system", "content": "Answer from the attached documents."},
        {"role": "user", "content": QUESTION_ZH},
        {
            "role": "assistant",
            "content": ANSWER_ZH,
            "metadata": {"mode": "retrieval", "window_tokens": 3100, "citations": CITATIONS},
        },
    ]
    for turn in turns:
        ok(client.post(f"/conversations/{conversation_id}/messages", json=turn))
    files = {"file": ("红楼梦.txt", "满纸荒唐言，一把辛酸泪。".encode("gb18030"))}
    uploaded = ok(client.post("/files", files=files, data={"purpose": "file-extract"}))
    attachments = [
        {"kind": "file", "file_id": uploaded["id"], "title": "红楼梦.pdf"},
        {"kind": "url", "url": f"{pages.base_url}/english", "title": "Grand View Garden"},
    ]
    for attachment in attachments:
        ok(client.post(f"/conversations/{conversation_id}/attachments", json=attachment))
    return conversation_id


def test_create_list_and_rename(alice):
    first = ok(alice.post("/conversations", json={"title": "Hamlet"}))
    second = ok(alice.post("/conversations"))
    assert first["title"] == "Hamlet" and first["object"] == "conversation"
    assert second["title"] == "New conversation"
    assert first["created_at"] <= second["created_at"]
    ids = listed_ids(alice)
    assert ids.index(second["id"]) < ids.index(first["id"])

    message = {"role": "user", "content": "Who is Ophelia?"}
    ok(alice.post(f"/conversations/{first['id']}/messages", json=message))
    ids = listed_ids(alice)
    assert ids.index(first["id"]) < ids.index(second["id"])  # the one just changed leads

    renamed = ok(alice.patch(f"/conversations/{second['id']}", json={"title": "  Contract  "}))
    assert renamed["title"] == "Contract"
    assert ok(alice.get(f"/conversations/{second['id']}"))["title"] == "Contract"
    assert listed_ids(alice)[0] == second["id"]


def test_messages_and_attachments_are_kept_in_order(alice, pages):
    conversation_id = filled_conversation(alice, pages)
    detail = ok(alice.get(f"/conversations/{conversation_id}"))
    assert detail["title"] == "读红楼梦"
    roles = [m["role"] for m in detail["messages"]]
    assert roles == ["system", "user", "assistant"]
    question, answer = detail["messages"][1], detail["messages"][2]
    assert question["content"] == QUESTION_ZH and question["metadata"] is None
    assert answer["content"] == ANSWER_ZH
    assert answer["metadata"]["mode"] == "retrieval"
    assert answer["metadata"]["window_tokens"] == 3100
    sent = {c["number"]: c for c in CITATIONS}
    for citation in answer["metadata"]["citations"]:
        assert {k: v for k, v in citation.items() if v not in (None, "")} == sent[
            citation["number"]
        ]

    file, url = detail["attachments"]
    assert (file["kind"], file["url"], file["title"]) == ("file", None, "红楼梦.pdf")
    assert file["file_id"].startswith("file-") and file["tokens"] > 0
    assert (url["kind"], url["url"]) == ("url", f"{pages.base_url}/english")
    assert url["file_id"].startswith("file-") and url["file_id"] != file["file_id"]
    assert "Call me Ishmael" in alice.get(f"/files/{url['file_id']}/content").text

    again = {"kind": "url", "url": f"{pages.base_url}/english"}
    assert (
        ok(alice.post(f"/conversations/{conversation_id}/attachments", json=again))["id"]
        == (url["id"])
    )
    removed = ok(alice.delete(f"/conversations/{conversation_id}/attachments/{file['id']}"))
    assert removed["deleted"] is True
    left = ok(alice.get(f"/conversations/{conversation_id}"))["attachments"]
    assert [a["id"] for a in left] == [url["id"]]
    gone = alice.delete(f"/conversations/{conversation_id}/attachments/{file['id']}")
    assert error_of(gone, 404)["code"] == "attachment_not_found"


def test_export_json_is_the_full_record(alice, pages):
    conversation_id = filled_conversation(alice, pages)
    response = alice.get(f"/conversations/{conversation_id}/export", params={"format": "json"})
    assert response.headers["content-type"].startswith("application/json")
    assert f"{conversation_id}.json" in response.headers["content-disposition"]
    exported = json.loads(response.text)
    assert exported == ok(alice.get(f"/conversations/{conversation_id}"))
    assert exported["messages"][1]["content"] == QUESTION_ZH


def test_export_markdown_has_title_turns_and_citations(alice, pages):
    conversation_id = filled_conversation(alice, pages)
    response = alice.get(f"/conversations/{conversation_id}/export")
    assert response.headers["content-type"].startswith("text/markdown")
    lines = response.text.splitlines()
    assert lines[0] == "# 读红楼梦"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings == ["## System", "## User", "## Assistant"]

    def section(heading: str) -> str:
        start = lines.index(heading) + 1
        rest = [i for i, line in enumerate(lines) if i > start and line.startswith("## ")]
        return "\n".join(lines[start : rest[0] if rest else len(lines)])

    assert section("## User").strip() == QUESTION_ZH
    answer = section("## Assistant")
    assert answer.strip().startswith(ANSWER_ZH)
    assert "retrieved passages" in answer and "3100 tokens" in answer
    assert "- [1] 红楼梦, 第三回, p. 12 (`file-hongloumeng`)" in answer.splitlines()
    assert "- [2] Grand View Garden (`https://example.org/garden`)" in answer.splitlines()
    preamble = "\n".join(lines[: lines.index("## System")])
    assert "红楼梦.pdf" in preamble and f"({pages.base_url}/english)" in preamble


def test_delete(alice, pages):
    conversation_id = filled_conversation(alice, pages)
    deleted = ok(alice.delete(f"/conversations/{conversation_id}"))
    assert deleted == {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
    assert conversation_id not in listed_ids(alice)
    assert error_of(alice.get(f"/conversations/{conversation_id}"), 404)["code"] == (
        "conversation_not_found"
    )
    error_of(alice.delete(f"/conversations/{conversation_id}"), 404)


def test_another_key_sees_nothing(alice, bob, pages):
    conversation_id = filled_conversation(alice, pages)
    path = f"/conversations/{conversation_id}"
    assert conversation_id not in listed_ids(bob)
    attempts = [
        bob.get(path),
        bob.patch(path, json={"title": "mine now"}),
        bob.post(f"{path}/messages", json={"role": "user", "content": "hi"}),
        bob.post(f"{path}/attachments", json={"kind": "url", "url": "https://example.org"}),
        bob.get(f"{path}/export"),
        bob.delete(path),
    ]
    for response in attempts:
        assert error_of(response, 404)["code"] == "conversation_not_found"
    detail = ok(alice.get(path))
    assert detail["title"] == "读红楼梦" and len(detail["messages"]) == 3
    assert len(detail["attachments"]) == 2
    bobs = ok(bob.post("/conversations", json={"title": "Bob's"}))["id"]
    assert bobs in listed_ids(bob) and bobs not in listed_ids(alice)


@pytest.mark.parametrize(
    ("method", "suffix", "body", "field"),
    [
        ("post", "", {"title": "   "}, "title"),
        ("post", "", {"title": "x" * 201}, "title"),
        ("patch", "/{id}", {}, "title"),
        ("post", "/{id}/messages", {"role": "tool", "content": "x"}, "role"),
        ("post", "/{id}/messages", {"role": "user"}, "content"),
        ("post", "/{id}/messages", {"role": "user", "content": "x", "metadata": {}}, "mode"),
        (
            "post",
            "/{id}/messages",
            {"role": "user", "content": "x", "metadata": {"mode": "full"}},
            "only assistant messages",
        ),
        (
            "post",
            "/{id}/messages",
            {"role": "assistant", "content": "x", "metadata": {"mode": "guess"}},
            "mode",
        ),
        ("post", "/{id}/attachments", {"kind": "url", "url": "ftp://example.org"}, "http"),
        ("post", "/{id}/attachments", {"kind": "file", "file_id": "../etc/passwd"}, "file_id"),
        ("post", "/{id}/attachments", {"kind": "file"}, "file_id"),
        ("post", "/{id}/attachments", {"url": "https://example.org"}, "kind"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(alice, method, suffix, body, field):
    conversation_id = ok(alice.post("/conversations"))["id"]
    path = "/conversations" + suffix.format(id=conversation_id)
    error = error_of(alice.request(method.upper(), path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert field in error["message"]
    assert ok(alice.get(f"/conversations/{conversation_id}"))["messages"] == []


def test_bad_requests_outside_the_body(alice, server):
    conversation_id = ok(alice.post("/conversations"))["id"]
    export = alice.get(f"/conversations/{conversation_id}/export", params={"format": "pdf"})
    assert "format" in error_of(export, 400)["message"]
    not_json = alice.post(
        f"/conversations/{conversation_id}/messages",
        content=b"{role: user",
        headers={"Content-Type": "application/json"},
    )
    assert "JSON" in error_of(not_json, 400)["message"]
    assert error_of(alice.get("/conversations/conv-doesnotexist"), 404)["type"] == (
        "invalid_request_error"
    )
    assert error_of(httpx.get(f"{server.base_url}/conversations"), 401)["code"] == (
        "invalid_api_key"
    )


def test_the_local_user_and_keys_are_kept_apart(tmp_path):
    """The open mode's one local user (owner None) and a key never see each other's."""
    database = Database(f"sqlite:///{tmp_path / 'tome.db'}")
    key_id = KeyStore(database).create("pro")[1].id
    store = ConversationStore(database)
    local = store.create(None, "local")
    keyed = store.create(key_id, "keyed")
    assert [c.id for c in store.list(None)] == [local.id]
    assert [c.id for c in store.list(key_id)] == [keyed.id]
    with pytest.raises(ConversationNotFoundError):
        store.get(None, keyed.id)
    with pytest.raises(ConversationNotFoundError):
        store.add_message(key_id, local.id, "user", "hi")
    store.delete(None, local.id)
    assert store.list(None) == [] and [c.id for c in store.list(key_id)] == [keyed.id]
