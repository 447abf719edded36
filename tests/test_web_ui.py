"""The reading assistant's web UI in a real headless Chromium against a live `tome serve`
(a tiny Llama, a 1,024-token window, keyed mode): the page asks for the key, a PDF uploaded
through the button is answered about whole and the answer streams in with its mode and
window gauge, survives a reload and can be regenerated; a document dropped on the page that
is past the window is answered by retrieval; citations open their source; conversations are
renamed, exported and deleted; the interface speaks Chinese; the server's errors show in
the alert banner and keep the typed question; Stop keeps the partial answer."""

import io
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from reportlab.pdfgen import canvas

from tests.browser import chromium
from tests.live_server import LiveServer, create_keys

UPLOAD_LIMIT = 100_000
SETTINGS = f"""
[tiers.reader]
max_upload_bytes = {UPLOAD_LIMIT}

[web]
allowed_private_hosts = ["127.0.0.1"]
"""
PDF_SENTENCE = "The lighthouse on Skellig Point burned for nine nights without rest."
FILLER = [
    "Farmers in the valley grew barley and rye, and sold them at the autumn market.",
    "The river flooded twice that decade, and the bridge was rebuilt in grey stone.",
    "Merchants brought salt and cloth from the coast along the old drovers' road.",
]
NEEDLE = "The vault under the old mill opens with the brass key numbered 7431."
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(64)
CITATIONS = [
    {
        "number": 1,
        "source_id": "file-moby",
        "source_title": "Moby-Dick",
        "section_title": "Chapter 1. Loomings",
        "page": 3,
        "excerpt": "Call me Ishmael. Some years ago, never mind how long precisely.",
    }
]

# Records every value the upload progress bar shows.
WATCH_UPLOAD_PROGRESS = """() => {
  const bar = document.querySelector('[data-testid="upload-progress"]');
  window.uploadProgress = [];
  const record = () => window.uploadProgress.push(bar.value);
  new MutationObserver(record).observe(bar, {attributes: true});
}"""

# Whether the answer being streamed shows some text of its own (no longer the placeholder).
FIRST_WORDS_STREAMED = """() => {
  const body = document.querySelector('.message.streaming [data-testid="message-body"]');
  return body !== null && body.textContent.trim() !== '' && body.textContent !== '…';
}"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("web_ui")


@pytest.fixture(scope="module")
def key(data_dir) -> str:
    return create_keys(data_dir, "reader", "reader")["reader"]


@pytest.fixture(scope="module")
def server(tiny_llama, data_dir, key):
    config = data_dir / "tome.toml"
    config.write_text(SETTINGS)
    live = LiveServer(tiny_llama, data_dir, "--config", str(config), "--kv-cache-memory", "4MiB")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def api(server, key):
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@contextmanager
def browsing(browser: Browser, key: str | None, locale: str = "en-US") -> Iterator[Page]:
    """A page in a fresh browser profile, holding the API key when given. The page's own
    scripts must not throw."""
    context = browser.new_context(locale=locale)
    if key is not None:
        context.add_init_script(f"localStorage.setItem('tome.apiKey', {key!r})")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert errors == []


@pytest.fixture
def page(browser, key):
    with browsing(browser, key) as page:
        yield page


@pytest.fixture
def keyless_page(browser):
    with browsing(browser, key=None) as page:
        yield page


@pytest.fixture
def chinese_page(browser, key):
    """A browser whose language is Chinese (navigator.language zh-CN)."""
    with browsing(browser, key, locale="zh-CN") as page:
        yield page


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def error_message(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def make_pdf(lines: list[str]) -> bytes:
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    for row, line in enumerate(lines):
        pdf.drawString(50, 800 - 16 * row, line)
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def long_document() -> str:
    """Twenty headed parts of filler, the needle in part 12: several windows long."""
    parts = []
    for part in range(1, 21):
        body = [FILLER[(part + i) % len(FILLER)] for i in range(8)]
        if part == 12:
            body.insert(4, NEEDLE)
        parts.append(f"# Part {part}\n\n" + " ".join(body))
    return "\n\n".join(parts)


def upload_via_api(api: httpx.Client, name: str, data: bytes) -> dict:
    files = {"file": (name, data)}
    return ok(api.post("/files", files=files, data={"purpose": "file-extract"}))


def conversation_via_api(api: httpx.Client, title: str, *turns: dict) -> str:
    conversation_id = ok(api.post("/conversations", json={"title": title}))["id"]
    for turn in turns:
        ok(api.post(f"/conversations/{conversation_id}/messages", json=turn))
    return conversation_id


def open_conversation(page: Page, server: LiveServer, conversation_id: str) -> None:
    page.goto(f"{server.root}/#{conversation_id}")
    current = page.locator('[data-testid="conversation-item"][aria-current="true"]')
    expect(current).to_have_attribute("data-id", conversation_id)


def messages_of(api: httpx.Client, conversation_id: str) -> list[dict]:
    return ok(api.get(f"/conversations/{conversation_id}"))["messages"]


def assistant_messages(page: Page):
    return page.locator('[data-testid="message"][data-role="assistant"]')


def same_html(page: Page, locator, html: str) -> bool:
    """Whether an element shows exactly the server's HTML, both as the browser parses it."""
    return locator.evaluate(
        "(el, html) => { const d = document.createElement('div'); d.innerHTML = html;"
        " return el.innerHTML === d.innerHTML; }",
        html,
    )


def alert_text(page: Page):
    return page.get_by_role("alert").get_by_test_id("error-text")


def gauge_text(metadata: dict) -> str:
    return f"{metadata['window_tokens']:,} / {metadata['window_size']:,} tokens"


def ask(page: Page, question: str) -> httpx.Response:
    """Types a question, sends it with Enter, and waits until the streamed answer ends."""
    page.get_by_test_id("question").fill(question)
    with page.expect_response(lambda r: r.url.endswith("/answers")) as answered:
        page.get_by_test_id("question").press("Enter")
    expect(page.get_by_test_id("question")).to_have_value("")
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=60_000)
    return answered.value


def test_first_visit_asks_for_the_key_then_answers_about_an_uploaded_pdf(
    keyless_page, server, api, key
):
    page = keyless_page
    page.goto(server.root)
    expect(page.get_by_test_id("key-form")).to_be_visible()
    no_key = error_message(httpx.get(f"{server.base_url}/models"), 401)
    expect(alert_text(page)).to_have_text(no_key)
    page.get_by_test_id("api-key").fill(key)
    page.get_by_test_id("api-key").press("Enter")
    expect(page.get_by_test_id("model-name")).to_have_text(ok(api.get("/models"))["data"][0]["id"])
    expect(page.get_by_test_id("key-form")).to_be_hidden()
    expect(page.get_by_role("alert")).to_be_hidden()

    page.evaluate(WATCH_UPLOAD_PROGRESS)
    pdf = make_pdf(["Logbook of the keeper", PDF_SENTENCE])
    with page.expect_file_chooser() as chooser:
        page.get_by_test_id("upload-button").click()
    chooser.value.set_files({"name": "skellig.pdf", "mimeType": "application/pdf", "buffer": pdf})
    expect(page.get_by_test_id("attachment")).to_have_count(1)
    expect(page.get_by_test_id("upload-status")).to_be_hidden()
    assert 100 in page.evaluate("window.uploadProgress")
    conversation_id = page.evaluate("location.hash.slice(1)")
    attachment = ok(api.get(f"/conversations/{conversation_id}"))["attachments"][0]
    text = api.get(f"/files/{attachment['file_id']}/content").text
    assert PDF_SENTENCE in " ".join(text.split())
    expect(page.get_by_test_id("attachment-tokens")).to_have_text(
        f"{attachment['tokens']:,} tokens"
    )

    question = "How many nights did the lighthouse burn?"
    response = ask(page, question)
    assert response.headers["content-type"].startswith("text/event-stream")
    user, answer = messages_of(api, conversation_id)
    assert user["content"] == question and answer["metadata"]["mode"] == "full"
    shown = assistant_messages(page)
    expect(shown.get_by_test_id("mode-badge")).to_have_text("Full document")
    expect(shown.get_by_test_id("window-gauge")).to_have_text(gauge_text(answer["metadata"]))
    assert same_html(page, shown.get_by_test_id("message-body"), answer["html"])

    page.get_by_test_id("regenerate").click()
    expect(shown).not_to_have_attribute("data-message-id", answer["id"], timeout=60_000)
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=60_000)
    user_again, answer_again = messages_of(api, conversation_id)
    assert user_again["id"] == user["id"] and answer_again["id"] != answer["id"]

    page.reload()
    current = page.locator('[data-testid="conversation-item"][aria-current="true"]')
    expect(current).to_have_attribute("data-id", conversation_id)
    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("message")).to_have_count(0)
    first = page.get_by_test_id("conversation-item").first
    expect(first).to_have_attribute("data-id", conversation_id)
    first.get_by_test_id("conversation-open").click()
    expect(page.get_by_test_id("message")).to_have_count(2)
    expect(page.get_by_test_id("message-body").first).to_have_text(question)
    expect(shown).to_have_attribute("data-message-id", answer_again["id"])
    expect(shown.get_by_test_id("mode-badge")).to_have_text("Full document")


def test_a_dropped_document_past_the_window_is_answered_by_retrieval(page, server, api):
    page.goto(server.root)
    expect(page.get_by_test_id("model-name")).not_to_be_empty()
    document = long_document()
    transfer = page.evaluate_handle(
        "(text) => { const t = new DataTransfer();"
        " t.items.add(new File([text], 'valley.md', {type: 'text/markdown'})); return t; }",
        document,
    )
    page.dispatch_event("body", "dragover", {"dataTransfer": transfer})
    expect(page.get_by_test_id("drop-overlay")).to_be_visible()
    page.dispatch_event("body", "drop", {"dataTransfer": transfer})
    expect(page.get_by_test_id("drop-overlay")).to_be_hidden()
    expect(page.get_by_test_id("attachment")).to_have_count(1)
    conversation_id = page.evaluate("location.hash.slice(1)")
    attachment = ok(api.get(f"/conversations/{conversation_id}"))["attachments"][0]
    assert attachment["title"] and attachment["tokens"] > 1024

    ask(page, "Which key opens the vault under the old mill?")
    answer = messages_of(api, conversation_id)[-1]
    assert answer["metadata"]["mode"] == "retrieval"
    shown = assistant_messages(page)
    expect(shown.get_by_test_id("mode-badge")).to_have_text("Retrieval")
    expect(shown.get_by_test_id("window-gauge")).to_have_text(gauge_text(answer["metadata"]))


def test_a_citation_opens_its_source_and_conversations_are_managed(page, server, api, pages):
    answer = {
        "role": "assistant",
        "content": "Ishmael tells the story [1].",
        "metadata": {
            "mode": "retrieval",
            "window_tokens": 700,
            "window_size": 1024,
            "citations": CITATIONS,
        },
    }
    question = {"role": "user", "content": "Who tells the story?"}
    conversation_id = conversation_via_api(api, "Moby-Dick", question, answer)
    open_conversation(page, server, conversation_id)
    expect(page.get_by_test_id("citation-panel")).to_be_hidden()
    page.locator('a.citation[data-citation="1"]').click()
    expect(page.get_by_test_id("citation-source")).to_have_text("Moby-Dick")
    expect(page.get_by_test_id("citation-section")).to_have_text("Chapter 1. Loomings")
    expect(page.get_by_test_id("citation-page")).to_have_text("3")
    expect(page.get_by_test_id("citation-excerpt")).to_have_text(CITATIONS[0]["excerpt"])
    expect(page.get_by_test_id("window-gauge")).to_have_text("700 / 1,024 tokens")
    page.get_by_test_id("citation-panel").get_by_role("button").click()
    expect(page.get_by_test_id("citation-panel")).to_be_hidden()

    page.get_by_test_id("url-input").fill(f"{pages.base_url}/english")
    page.get_by_test_id("attach-url").click()
    expect(page.get_by_test_id("attachment")).to_have_count(1)
    attached = ok(api.get(f"/conversations/{conversation_id}"))["attachments"]
    assert attached[0]["kind"] == "url"
    page.get_by_test_id("remove-attachment").click()
    expect(page.get_by_test_id("attachment")).to_have_count(0)
    assert ok(api.get(f"/conversations/{conversation_id}"))["attachments"] == []

    item = page.locator(f'[data-testid="conversation-item"][data-id="{conversation_id}"]')
    exported = api.get(f"/conversations/{conversation_id}/export", params={"format": "markdown"})
    with page.expect_download() as download:
        item.get_by_test_id("export-markdown").click()
    with open(download.value.path(), encoding="utf-8") as saved:
        assert saved.read() == exported.text

    item.get_by_test_id("rename").click()
    page.get_by_test_id("rename-input").fill("Moby-Dick, chapter one")
    page.get_by_test_id("rename-input").press("Enter")
    expect(item.get_by_test_id("conversation-open")).to_have_text("Moby-Dick, chapter one")
    assert ok(api.get(f"/conversations/{conversation_id}"))["title"] == "Moby-Dick, chapter one"

    page.once("dialog", lambda dialog: dialog.accept())
    item.get_by_test_id("delete").click()
    expect(item).to_have_count(0)
    assert api.get(f"/conversations/{conversation_id}").status_code == 404


def test_the_interface_speaks_chinese(chinese_page, server, api):
    answer = {"role": "assistant", "content": "全文回答。", "metadata": {"mode": "full"}}
    conversation_id = conversation_via_api(api, "中文", {"role": "user", "content": "问题"}, answer)
    page = chinese_page
    open_conversation(page, server, conversation_id)
    expect(page.get_by_test_id("new-chat")).to_have_text("新对话")
    expect(page.get_by_test_id("mode-badge")).to_have_text("全文")
    page.get_by_test_id("language-switch").select_option("en")
    expect(page.get_by_test_id("new-chat")).to_have_text("New chat")
    expect(page.get_by_test_id("mode-badge")).to_have_text("Full document")
    page.reload()
    expect(page.get_by_test_id("send")).to_have_text("Send")
    page.get_by_test_id("language-switch").select_option("zh")
    expect(page.get_by_test_id("send")).to_have_text("发送")
    expect(page.get_by_test_id("upload-button")).to_have_text("上传文件")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"


def test_the_servers_errors_show_in_the_banner_and_lose_nothing(page, server, api):
    small = upload_via_api(api, "note.txt", b"A short note about the harbour.")
    conversation_id = conversation_via_api(api, "Harbour")
    attachment = {"kind": "file", "file_id": small["id"]}
    ok(api.post(f"/conversations/{conversation_id}/attachments", json=attachment))
    open_conversation(page, server, conversation_id)
    draft = "What does the note say about the harbour?"
    page.get_by_test_id("question").fill(draft)

    oversize = b"harbour " * (UPLOAD_LIMIT // 8 + 1)
    for name, data, status in [("big.txt", oversize, 413), ("photo.txt", PNG_BYTES, 415)]:
        files = {"file": (name, data)}
        expected = error_message(
            api.post("/files", files=files, data={"purpose": "file-extract"}), status
        )
        page.get_by_test_id("file-input").set_input_files(
            {"name": name, "mimeType": "text/plain", "buffer": data}
        )
        expect(alert_text(page)).to_have_text(expected)
        expect(page.get_by_test_id("attachment")).to_have_count(1)
        expect(page.get_by_test_id("question")).to_have_value(draft)
        current = page.locator('[data-testid="conversation-item"][aria-current="true"]')
        expect(current).to_have_attribute("data-id", conversation_id)

    too_long = " ".join(["harbour"] * 1500)
    body = {"question": too_long}
    expected = error_message(api.post(f"/conversations/{conversation_id}/answers", json=body), 400)
    page.get_by_test_id("question").fill(too_long)
    page.get_by_test_id("question").press("Enter")
    expect(alert_text(page)).to_have_text(expected)
    expect(page.get_by_test_id("question")).to_have_value(too_long)
    assert messages_of(api, conversation_id) == []


def test_stop_keeps_the_partial_answer(page, server, api):
    conversation_id = conversation_via_api(api, "A long story")
    open_conversation(page, server, conversation_id)
    page.get_by_test_id("question").fill("Tell me a very long story.")
    page.get_by_test_id("question").press("Enter")
    page.wait_for_function(FIRST_WORDS_STREAMED)
    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("finish")).to_have_text("Stopped")
    expect(page.get_by_test_id("stop")).to_be_hidden()
    answer = messages_of(api, conversation_id)[-1]
    assert answer["metadata"]["finish_reason"] == "abort" and answer["content"]
    assert same_html(page, assistant_messages(page).get_by_test_id("message-body"), answer["html"])
