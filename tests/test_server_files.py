"""The files API of a live `tome serve` with two API keys, through the official `openai`
client: upload (plain text, GB18030 Chinese, a PDF made with reportlab), list, retrieve,
read the extracted text back, delete; identical uploads are one file per key and one copy
on disk; a key never sees another's files; bad files get a 4xx with the extractor's
message and the server goes on serving."""

import hashlib
import io

import openai
import pytest
from reportlab.pdfgen import canvas

from tests.live_server import LiveServer, create_keys

UPLOAD_LIMIT = 200_000
TIERS = f"""
[tiers.reader]
max_upload_bytes = {UPLOAD_LIMIT}
"""
ENGLISH = "Chapter One\n\nIt was a bright cold day in April, and the clocks were striking thirteen."
CHINESE = (
    "第一章 长夜\n\n长上下文模型可以一次读完整本书，不必把书切成碎片。"
    "读者把整本小说交给它，然后提问：谁在第三章里离开了村庄？答案是老王。"
)
PDF_PAGES = [
    ["The quick brown fox jumps over the lazy dog.", "A second line on page one."],
    ["Page two holds the answer: forty-two."],
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def keys(data_dir) -> dict[str, str]:
    return create_keys(data_dir, "reader", "alice", "bob")


@pytest.fixture(scope="module")
def server(tiny_llama, data_dir, keys):
    config = data_dir / "tiers.toml"
    config.write_text(TIERS)
    live = LiveServer(tiny_llama, data_dir, "--kv-cache-memory", "1MiB", "--config", str(config))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def alice(server, keys) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=keys["alice"], max_retries=0)


@pytest.fixture(scope="module")
def bob(server, keys) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=keys["bob"], max_retries=0)


def make_pdf(pages: list[list[str]]) -> bytes:
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    for lines in pages:
        pdf.setFont("Helvetica", 12)
        for row, line in enumerate(lines):
            pdf.drawString(50, 800 - 16 * row, line)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def upload(client: openai.OpenAI, name: str, data: bytes, media_type: str = "text/plain"):
    return client.files.create(file=(name, data, media_type), purpose="file-extract")


def test_text_file_round_trip(alice, hf_tokenizer):
    data = ENGLISH.encode()
    uploaded = upload(alice, "book.txt", data)
    assert uploaded.id.startswith("file-")
    assert uploaded.object == "file"
    assert (uploaded.bytes, uploaded.filename, uploaded.purpose) == (
        len(data),
        "book.txt",
        "file-extract",
    )
    assert uploaded.status == "processed"
    extra = uploaded.model_extra
    assert extra["sha256"] == hashlib.sha256(data).hexdigest()
    assert extra["tokens"] == len(hf_tokenizer.encode(ENGLISH, add_special_tokens=False))
    assert (extra["title"], extra["sections"], extra["pages"]) == ("book", 1, None)

    assert alice.files.retrieve(uploaded.id) == uploaded
    assert uploaded.id in [file.id for file in alice.files.list()]
    assert alice.files.content(uploaded.id).text == ENGLISH

    deleted = alice.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    assert uploaded.id not in [file.id for file in alice.files.list()]
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(uploaded.id)


def test_gb18030_text_comes_back_as_unicode(alice):
    uploaded = upload(alice, "长夜.txt", CHINESE.encode("gb18030"))
    assert alice.files.content(uploaded.id).text == CHINESE
    assert uploaded.model_extra["characters"] == len(CHINESE)


def test_pdf_keeps_its_pages(alice):
    uploaded = upload(alice, "paper.pdf", make_pdf(PDF_PAGES), "application/pdf")
    assert (uploaded.model_extra["pages"], uploaded.model_extra["sections"]) == (2, 2)
    text = alice.files.content(uploaded.id).text
    lines = [line for page in PDF_PAGES for line in page]
    positions = [text.index(line) for line in lines]
    assert positions == sorted(positions)


def test_identical_uploads_are_one_file_per_key_and_one_copy_on_disk(alice, bob, data_dir):
    data = b"The same bytes, uploaded three times by two keys."
    blob = data_dir / "files" / hashlib.sha256(data).hexdigest()
    first, again = upload(alice, "a.txt", data), upload(alice, "b.txt", data)
    assert again.id == first.id
    assert [file.id for file in alice.files.list()].count(first.id) == 1
    theirs = upload(bob, "c.txt", data)
    assert theirs.id != first.id
    assert theirs.model_extra["sha256"] == first.model_extra["sha256"]
    assert blob.read_bytes() == data

    alice.files.delete(first.id)
    assert blob.exists()  # bob's file still names the bytes
    assert bob.files.content(theirs.id).text == data.decode()
    bob.files.delete(theirs.id)
    assert not blob.exists()


def test_a_key_never_sees_another_keys_files(alice, bob):
    mine = upload(alice, "private.txt", b"Only alice may read this note.")
    assert mine.id not in [file.id for file in bob.files.list()]
    for attempt in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError):
            attempt(mine.id)
    assert alice.files.content(mine.id).text == "Only alice may read this note."


@pytest.mark.parametrize(
    ("name", "data", "status", "phrase"),
    [
        ("empty.txt", b"", 400, "no text"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 415, "photo.png"),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog", 400, "broken.pdf"),
        ("huge.txt", b"a" * (UPLOAD_LIMIT + 1), 413, str(UPLOAD_LIMIT)),
    ],
)
def test_bad_files_get_one_clear_error(alice, name, data, status, phrase):
    with pytest.raises(openai.APIStatusError) as exc:
        upload(alice, name, data)
    assert exc.value.status_code == status
    message = exc.value.body["message"]
    assert phrase in message and "\n" not in message
    assert upload(alice, "after.txt", b"The server still serves.").status == "processed"


def test_wrong_purpose_and_unknown_id(alice):
    with pytest.raises(openai.BadRequestError, match="file-extract"):
        alice.files.create(file=("a.txt", b"text", "text/plain"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError, match="file-nothing"):
        alice.files.retrieve("file-nothing")
