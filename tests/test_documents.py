"""Document extraction on real files made here with reportlab, pypdf, python-docx and
ebooklib: text and structure come out right, and bad files give one clear typed error."""

import io
import zipfile

import docx
import pytest
from ebooklib import epub
from pypdf import PdfReader, PdfWriter
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from tome.assistant.documents import (
    CorruptDocumentError,
    DocumentTooLargeError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ExtractionLimits,
    UnsupportedDocumentError,
    extract,
)
from tome.errors import InvalidRequestError

pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))

ENGLISH_PAGES = [
    ["The quick brown fox jumps over the lazy dog.", "A second line on page one."],
    ["Page two holds the answer: forty-two."],
]
CHINESE_PAGES = [
    ["长上下文模型可以一次读完整本书。", "第一页的第二行。"],
    ["第二页：答案是四十二。"],
]


def make_pdf(pages: list[list[str]], font: str = "Helvetica", title: str | None = None) -> bytes:
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    if title:
        pdf.setTitle(title)
    for lines in pages:
        pdf.setFont(font, 12)
        for row, line in enumerate(lines):
            pdf.drawString(50, 800 - 16 * row, line)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_image_only_pdf() -> bytes:
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    pdf.rect(50, 500, 300, 200, fill=1)  # drawn shapes, as in a scan: no text layer
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Contract of Sale", level=0)
    document.add_paragraph("Preamble before any heading.")
    document.add_heading("Parties", level=1)
    document.add_paragraph("Alice sells to Bob.")
    document.add_heading("价格", level=1)
    document.add_paragraph("价格为一百元。")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "item"
    table.rows[0].cells[1].text = "price"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_epub() -> bytes:
    book = epub.EpubBook()
    book.set_identifier("tome-test-book")
    book.set_title("A Tale of Two Chapters")
    book.set_language("en")
    chapters = []
    for number, (heading, body) in enumerate(
        [("Chapter One", "It was the best of times."), ("第二章", "那是最坏的时代。")], start=1
    ):
        chapter = epub.EpubHtml(title=heading, file_name=f"chap_{number}.xhtml", lang="en")
        chapter.content = f"<html><body><h1>{heading}</h1><p>{body}</p></body></html>"
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    buffer = io.BytesIO()
    epub.write_epub(buffer, book)
    return buffer.getvalue()


HTML_PAGE = """<!DOCTYPE html><html><head><title>Reading Whole Books</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<article><h1>Reading Whole Books</h1>
<p>Long-context models can read an entire novel in one prompt, which changes how people
ask questions about long documents and contracts.</p>
<h2>Why it matters</h2>
<p>Nothing is lost to chunking when the whole text fits in the window of the model, so
every answer can draw on every page of the book at once.</p></article>
<footer>Copyright 2026, all rights reserved.</footer></body></html>"""

MARKDOWN = """# Guide

Intro text.

## Install

Run the installer.

```bash
# not a heading
pip install tome
```

## 使用

读一本书。
"""

CHINESE_TEXT = "第一章 總論\n長上下文模型可以一次讀完整本書。"
SIMPLIFIED_TEXT = "第一章 总论\n长上下文模型可以一次读完整本书。"


def test_english_pdf_keeps_pages() -> None:
    document = extract(make_pdf(ENGLISH_PAGES, title="Fox Report"), "fox.pdf")
    assert document.title == "Fox Report"
    assert document.media_type == "application/pdf"
    assert [section.page for section in document.sections] == [1, 2]
    assert "The quick brown fox jumps over the lazy dog." in document.sections[0].text
    assert "answer: forty-two" in document.sections[1].text
    assert document.text.index("lazy dog") < document.text.index("forty-two")


def test_chinese_pdf_keeps_text_and_pages() -> None:
    document = extract(make_pdf(CHINESE_PAGES, font="STSong-Light"), "书.pdf")
    assert document.title == "书"
    assert document.sections[0].text == "长上下文模型可以一次读完整本书。\n第一页的第二行。"
    assert document.sections[1].page == 2
    assert "答案是四十二" in document.sections[1].text


def test_pdf_from_path(tmp_path) -> None:
    path = tmp_path / "fox.pdf"
    path.write_bytes(make_pdf(ENGLISH_PAGES))
    document = extract(path)
    assert document.filename == "fox.pdf"
    assert document.title == "fox"
    assert len(document.sections) == 2


def test_docx_headings_become_sections() -> None:
    document = extract(make_docx(), "contract.docx")
    assert document.title == "Contract of Sale"
    titles = [section.title for section in document.sections]
    assert titles == [None, "Parties", "价格"]
    assert document.sections[1].text == "Alice sells to Bob."
    assert "价格为一百元。" in document.sections[2].text
    assert "item | price" in document.sections[2].text
    assert "Parties\n\nAlice sells to Bob." in document.text


def test_epub_chapters_kept_in_order() -> None:
    document = extract(make_epub(), "tale.epub")
    assert document.title == "A Tale of Two Chapters"
    chapters = document.sections  # the navigation document is not a chapter
    assert [chapter.title for chapter in chapters] == ["Chapter One", "第二章"]
    assert chapters[0].text == "It was the best of times."
    assert chapters[1].text == "那是最坏的时代。"
    assert document.media_type == "application/epub+zip"


def test_html_readable_text_without_boilerplate() -> None:
    document = extract(HTML_PAGE.encode(), "page.html")
    assert document.title == "Reading Whole Books"
    assert "entire novel in one prompt" in document.text
    assert "every page of the book" in document.text
    assert "Copyright" not in document.text
    assert "Why it matters" in [section.title for section in document.sections]


def test_html_recognized_without_extension() -> None:
    document = extract(HTML_PAGE.encode(), "download")
    assert document.media_type == "text/html"
    assert "<p>" not in document.text


def test_markdown_headings_and_code_fences() -> None:
    document = extract(MARKDOWN.encode(), "guide.md")
    assert document.title == "Guide"
    assert [section.title for section in document.sections] == ["Guide", "Install", "使用"]
    assert "# not a heading" in document.sections[1].text
    assert document.sections[2].text == "读一本书。"


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("utf-8", CHINESE_TEXT),
        ("utf-16", CHINESE_TEXT),
        ("gb18030", SIMPLIFIED_TEXT),
        ("gb18030", CHINESE_TEXT),
        ("big5", CHINESE_TEXT),
    ],
)
def test_plain_text_encodings(encoding: str, text: str) -> None:
    document = extract(text.encode(encoding), "chapter.txt")
    assert document.text == text
    assert document.media_type == "text/plain"
    assert document.title == "chapter"


@pytest.mark.parametrize("text", ["中文", "你好，世界。", "天下大勢，分久必合，合久必分。", "台灣"])
@pytest.mark.parametrize("encoding", ["gb18030", "big5"])
def test_short_chinese_gb18030_and_big5_told_apart(encoding: str, text: str) -> None:
    # charset-normalizer alone reads several of these as UTF-16, cp949 or cp1006.
    assert extract(text.encode(encoding), "short.txt").text == text


class WordTokenizer:
    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


def test_token_count_covers_headings_and_body() -> None:
    document = extract(MARKDOWN.encode(), "guide.md")
    # "Guide Intro text. Install Run the installer. ```bash # not a heading pip install tome
    # ``` 使用 读一本书。"
    assert document.token_count(WordTokenizer()) == 18


def test_encrypted_pdf_is_refused() -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(ENGLISH_PAGES))))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(EncryptedDocumentError, match="password"):
        extract(buffer.getvalue(), "locked.pdf")


def test_pdf_with_empty_user_password_is_read() -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(ENGLISH_PAGES))))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    assert "lazy dog" in extract(buffer.getvalue(), "no-print.pdf").text


def test_image_only_pdf_reports_no_text_layer() -> None:
    with pytest.raises(EmptyDocumentError, match="no text layer"):
        extract(make_image_only_pdf(), "scan.pdf")


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (make_pdf(ENGLISH_PAGES)[:400], "truncated.pdf"),
        (b"%PDF-1.7\n" + bytes(range(256)) * 4, "garbage.pdf"),
        (b"this is not a pdf", "fake.pdf"),
        (make_docx()[:2000], "truncated.docx"),
        (make_epub()[:1500], "truncated.epub"),
    ],
)
def test_corrupt_files_are_refused(data: bytes, filename: str) -> None:
    with pytest.raises((CorruptDocumentError, EmptyDocumentError)) as caught:
        extract(data, filename)
    assert filename in caught.value.message
    assert "\n" not in caught.value.message


def test_truncated_pdf_is_corrupt() -> None:
    with pytest.raises(CorruptDocumentError, match="damaged"):
        extract(make_pdf(ENGLISH_PAGES)[:400], "truncated.pdf")


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "photo.png"),
        (bytes(range(256)) * 8, "blob.bin"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "old.doc"),
    ],
)
def test_unsupported_binary_is_refused(data: bytes, filename: str) -> None:
    with pytest.raises(UnsupportedDocumentError) as caught:
        extract(data, filename)
    assert caught.value.status_code == 415


def test_plain_zip_archive_is_unsupported() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(UnsupportedDocumentError, match="zip archive"):
        extract(buffer.getvalue(), "notes.zip")


def test_empty_file_is_refused() -> None:
    with pytest.raises(EmptyDocumentError):
        extract(b"  \n\n ", "blank.txt")


def test_over_the_byte_limit_is_refused(tmp_path) -> None:
    limits = ExtractionLimits(max_bytes=1000)
    with pytest.raises(DocumentTooLargeError, match="limit of 1000") as caught:
        extract(b"x" * 1001, "big.txt", limits=limits)
    assert caught.value.status_code == 413
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(DocumentTooLargeError):
        extract(path, limits=limits)


def test_over_the_page_limit_is_refused() -> None:
    with pytest.raises(DocumentTooLargeError, match="2 pages"):
        extract(make_pdf(ENGLISH_PAGES), "long.pdf", limits=ExtractionLimits(max_pages=1))


def test_zip_bomb_is_refused_before_unpacking() -> None:
    with pytest.raises(DocumentTooLargeError, match="unpacks"):
        extract(make_docx(), "bomb.docx", limits=ExtractionLimits(max_unpacked_bytes=1000))


def test_document_errors_are_invalid_request_errors() -> None:
    assert issubclass(UnsupportedDocumentError, InvalidRequestError)
    with pytest.raises(InvalidRequestError):
        ExtractionLimits(max_pages=0)
