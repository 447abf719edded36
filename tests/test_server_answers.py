"""The reading assistant on a live `tome serve` (a tiny Llama, a 1,024-token window):
documents reach the engine whole when they fit and the next question finds them cached;
past the window, retrieval finds the passage that holds the answer, in English and Chinese,
and its citation names the right section and page; answers stream and are saved, can be
regenerated, and an answer stopped midway is kept as far as it got. URLs and web search
go to a local HTTP server; private addresses, unreachable hosts and a search provider that
is down get one clear error and leave the conversation as it was."""

import io
import json
import time

import httpx
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from tests.live_server import LiveServer
from tests.web_pages_server import ENGLISH_PARAGRAPHS

WINDOW = 1024
SHORT_STORY = (
    "The lighthouse keeper of Skellig Point kept a logbook. Each evening she wrote down the "
    "colour of the sea, the number of ships that passed and the name of the wind. In the "
    "winter of the great storm she noted that the lamp burned for nine nights without rest."
)
NEEDLE_EN = "The vault under the old mill opens with the brass key numbered 7431."
NEEDLE_ZH = "藏宝图被锁在钟楼第三层的红色木箱里。"
FILLER_EN = [
    "Farmers in the valley grew barley and rye, and sold them at the autumn market.",
    "The river flooded twice that decade, and the bridge was rebuilt in grey stone.",
    "Children learned their letters from the parish clerk, who also kept the registers.",
    "Merchants brought salt and cloth from the coast along the old drovers' road.",
]
FILLER_ZH = [
    "村里的农民在春天播种小麦，秋天把粮食运到镇上的集市去卖。",
    "那条河每隔几年就会泛滥一次，石桥在洪水之后被重新修建。",
    "孩子们跟着私塾先生读书写字，先生也负责记录村里的大事。",
    "商人沿着古老的驿道从海边运来食盐和布匹。",
]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory, pages):
    data_dir = tmp_path_factory.mktemp("answers")
    config = data_dir / "tome.toml"
    config.write_text(
        f'[web]\nsearch_url = "{pages.base_url}/local"\nallowed_private_hosts = ["127.0.0.1"]\n'
    )
    live = LiveServer(tiny_llama, data_dir, "--config", str(config), "--kv-cache-memory", "4MiB")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def upload(client: httpx.Client, name: str, data: bytes) -> dict:
    files = {"file": (name, data)}
    return ok(client.post("/files", files=files, data={"purpose": "file-extract"}))


def conversation_with(client: httpx.Client, *file_ids: str) -> str:
    conversation_id = ok(client.post("/conversations"))["id"]
    for file_id in file_ids:
        attachment = {"kind": "file", "file_id": file_id}
        ok(client.post(f"/conversations/{conversation_id}/attachments", json=attachment))
    return conversation_id


def ask(client: httpx.Client, conversation_id: str, question: str, **fields) -> dict:
    body = {"question": question, "stream": False, "temperature": 0, "max_tokens": 8, **fields}
    return ok(client.post(f"/conversations/{conversation_id}/answers", json=body))


def messages_of(client: httpx.Client, conversation_id: str) -> list[dict]:
    return ok(client.get(f"/conversations/{conversation_id}"))["messages"]


def long_document(needle: str, filler: list[str], sentences: int) -> str:
    """Headed sections of filler, the needle in the middle of section 12."""
    parts = []
    for section in range(1, 25):
        body = [filler[(section + i) % len(filler)] for i in range(sentences)]
        if section == 12:
            body.insert(sentences // 2, needle)
        parts.append(f"# Part {section}\n\n" + " ".join(body))
    return "\n\n".join(parts)


def paged_pdf(pages: list[str]) -> bytes:
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4)
    for text in pages:
        y = 800
        for line in [text[i : i + 90] for i in range(0, len(text), 90)]:
            pdf.drawString(40, y, line)
            y -= 14
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def test_a_document_that_fits_goes_whole_and_is_cached_next_time(client, hf_tokenizer):
    file = upload(client, "skellig.txt", SHORT_STORY.encode())
    document_tokens = len(hf_tokenizer.encode(SHORT_STORY, add_special_tokens=False))
    assert file["tokens"] == document_tokens
    conversation_id = conversation_with(client, file["id"])

    first = ask(client, conversation_id, "How many nights did the lamp burn?")
    metadata = first["message"]["metadata"]
    assert metadata["mode"] == "full"
    assert metadata["window_size"] == WINDOW
    assert metadata["window_tokens"] == metadata["usage"]["prompt_tokens"] > document_tokens
    assert first["user_message"]["content"] == "How many nights did the lamp burn?"

    second = ask(client, conversation_id, "And what did she write each evening?")
    usage = second["message"]["metadata"]["usage"]
    assert second["message"]["metadata"]["mode"] == "full"
    assert usage["cached_tokens"] >= document_tokens
    roles = [m["role"] for m in messages_of(client, conversation_id)]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_past_the_window_retrieval_cites_the_section_holding_the_answer(client, hf_tokenizer):
    text = long_document(NEEDLE_EN, FILLER_EN, sentences=6)
    assert len(hf_tokenizer.encode(text)) > 2 * WINDOW
    file = upload(client, "history.md", text.encode())
    conversation_id = conversation_with(client, file["id"])
    answer = ask(client, conversation_id, "Which brass key opens the vault under the old mill?")
    metadata = answer["message"]["metadata"]
    assert metadata["mode"] == "retrieval"
    assert metadata["window_tokens"] + 8 <= WINDOW
    top = [c for c in metadata["citations"] if c["number"] <= 3]
    holding = [c for c in top if NEEDLE_EN in c["excerpt"]]
    assert holding, [c["excerpt"][:80] for c in top]
    assert holding[0]["section_title"] == "Part 12"
    assert holding[0]["source_id"] == file["id"]


def test_retrieval_in_chinese_names_the_page(client, hf_tokenizer):
    pages = [" ".join(FILLER_ZH[(n + i) % 4] for i in range(3)) for n in range(12)]
    pages[7] = pages[7] + NEEDLE_ZH
    # reportlab's built-in fonts have no Chinese glyphs, so the PDF is plain text here.
    text = "\n\n".join(f"# 第{n + 1}页\n\n{page}" for n, page in enumerate(pages))
    text = "\n\n".join([text] * 3)
    assert len(hf_tokenizer.encode(text)) > WINDOW
    file = upload(client, "村志.md", text.encode("gb18030"))
    conversation_id = conversation_with(client, file["id"])
    answer = ask(client, conversation_id, "藏宝图被锁在哪里？")
    metadata = answer["message"]["metadata"]
    assert metadata["mode"] == "retrieval"
    top = [c for c in metadata["citations"] if c["number"] <= 3]
    assert any(NEEDLE_ZH in c["excerpt"] and c["section_title"] == "第8页" for c in top)


def test_a_pdf_citation_names_its_page(client):
    filler = " ".join(FILLER_EN * 3)
    pages = [filler] * 8
    pages[5] = NEEDLE_EN + " " + filler
    file = upload(client, "mill.pdf", paged_pdf(pages))
    assert file["pages"] == 8
    conversation_id = conversation_with(client, file["id"])
    answer = ask(client, conversation_id, "Which brass key opens the vault under the old mill?")
    citations = answer["message"]["metadata"]["citations"]
    best = min(citations, key=lambda c: c["number"])
    assert best["page"] == 6 and "7431" in best["excerpt"]


def stream_events(client: httpx.Client, conversation_id: str, body: dict) -> list[dict]:
    events = []
    url = f"/conversations/{conversation_id}/answers"
    with client.stream("POST", url, json={"temperature": 0, **body}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_a_streamed_answer_is_saved_and_can_be_regenerated(client):
    file = upload(client, "skellig-2.txt", (SHORT_STORY + " Twice.").encode())
    conversation_id = conversation_with(client, file["id"])
    events = stream_events(client, conversation_id, {"question": "Who kept the logbook?"})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "delta" in kinds
    assert events[0]["mode"] == "full" and events[0]["window_size"] == WINDOW
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    done = events[-1]["message"]
    assert done["content"] == text and done["metadata"]["finish_reason"] in ("stop", "length")
    saved = messages_of(client, conversation_id)
    assert [m["content"] for m in saved] == ["Who kept the logbook?", text]

    again = stream_events(client, conversation_id, {"regenerate": True, "temperature": 1.0})
    assert again[0]["user_message"]["content"] == "Who kept the logbook?"
    saved = messages_of(client, conversation_id)
    assert [m["role"] for m in saved] == ["user", "assistant"]
    assert saved[1]["id"] == again[-1]["message"]["id"] != done["id"]


def test_an_answer_stopped_midway_is_kept(client):
    conversation_id = conversation_with(client)
    url = f"/conversations/{conversation_id}/answers"
    body = {"question": "Tell me a very long story.", "max_tokens": 900, "temperature": 1.0}
    with client.stream("POST", url, json=body) as response:
        for line in response.iter_lines():
            if '"type": "delta"' in line:
                break  # the client goes away, as the Stop button does
    for _ in range(100):
        saved = messages_of(client, conversation_id)
        if len(saved) == 2:
            break
        time.sleep(0.1)
    answer = saved[1]
    assert answer["role"] == "assistant"
    assert answer["metadata"]["finish_reason"] == "abort"
    assert answer["metadata"]["usage"]["completion_tokens"] < 900


def test_a_url_is_fetched_once_at_attach_time(client, pages):
    conversation_id = conversation_with(client)
    url = f"{pages.base_url}/english"
    attachment = ok(
        client.post(
            f"/conversations/{conversation_id}/attachments", json={"kind": "url", "url": url}
        )
    )
    assert attachment["url"] == url and attachment["tokens"] > 0
    stored = client.get(f"/files/{attachment['file_id']}/content").text
    assert ENGLISH_PARAGRAPHS[0][:40] in stored
    fetched_before = pages.paths_requested().count("/english")
    answer = ask(client, conversation_id, "What should we call the narrator?")
    assert answer["message"]["metadata"]["mode"] == "full"
    assert pages.paths_requested().count("/english") == fetched_before


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("http://localhost:{port}/english", 400, "non-public address"),
        ("http://127.0.0.1:1/", 502, "connect"),
        ("http://127.0.0.1:{port}/data.json", 400, "not html, plain text or pdf"),
    ],
)
def test_a_url_that_cannot_be_had_is_one_clear_error(client, pages, url, status, words):
    conversation_id = conversation_with(client)
    target = url.format(port=pages.server_port)
    response = client.post(
        f"/conversations/{conversation_id}/attachments", json={"kind": "url", "url": target}
    )
    assert words in error_of(response, status)["message"].lower()
    assert ok(client.get(f"/conversations/{conversation_id}"))["attachments"] == []


def test_web_search_results_are_sources(client, pages):
    conversation_id = conversation_with(client)
    events = stream_events(
        client,
        conversation_id,
        {"question": "Who is Ishmael?", "web_search": True, "max_tokens": 4},
    )
    titles = [s["title"] for s in events[0]["sources"]]
    assert titles == ["Loomings", "A page that is gone"]
    assert "/local/search" in pages.paths_requested()


def test_a_search_provider_that_is_down_loses_nothing(client, pages):
    conversation_id = conversation_with(client)
    ask(client, conversation_id, "First question.")
    pages.search_down = True
    try:
        body = {"question": "Who is Ishmael?", "web_search": True, "stream": True}
        response = client.post(f"/conversations/{conversation_id}/answers", json=body)
        assert "503" in error_of(response, 502)["message"]
    finally:
        pages.search_down = False
    assert len(messages_of(client, conversation_id)) == 2


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"question": "   "}, 400, "empty"),
        ({"regenerate": True}, 400, "no question"),
        ({"question": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"question": "word " * 3000}, 400, "question alone"),
        ({"question": "x", "max_tokens": 5000}, 400, "answer budget"),
    ],
)
def test_bad_questions_are_one_clear_error(client, body, status, words):
    conversation_id = conversation_with(client)
    response = client.post(f"/conversations/{conversation_id}/answers", json=body)
    assert words in error_of(response, status)["message"]
    assert messages_of(client, conversation_id) == []


def test_an_unknown_conversation_is_a_404(client):
    response = client.post("/conversations/conv-nope/answers", json={"question": "hi"})
    assert error_of(response, 404)["code"] == "conversation_not_found"
