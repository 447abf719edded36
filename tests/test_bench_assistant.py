"""`tome bench assistant` at tiny sizes: every row of the table and of the JSON is there with a
positive number, the books it writes read back with pypdf and ebooklib, and the planted facts
are in the Chinese book. No timing assertions."""

import json

import pypdf
from ebooklib import ITEM_DOCUMENT, epub
from typer.testing import CliRunner

from tome.bench.assistant_books import EPUB_CHAPTERS, write_epub, write_pdf
from tome.bench.assistant_retrieval import chinese_book
from tome.cli import app

EXTRACTION_MEASURES = ["seconds", "{unit}/s", "MB/s (of the file)"]
BOOKS = [("English PDF", "pages"), ("Chinese PDF", "pages"), ("EPUB", "chapters")]
RETRIEVAL_MEASURES = [
    "chunking (s)",
    "index build (s)",
    "query, median (ms)",
    "query, p95 (ms)",
    "recall@5",
]
FOLLOW_UP_MEASURES = [
    "question 1: prompt tokens",
    "question 1: time to first token (s)",
    "question 2: prompt tokens",
    "question 2: cached tokens",
    "question 2: time to first token (s)",
    "question 2 / question 1",
]


def test_cli_reports_every_row_with_a_positive_number(tiny_llama, tmp_path):
    args = ["bench", "assistant", "--model", str(tiny_llama), "--out", str(tmp_path)]
    args += ["--pdf-pages", "2", "--epub-mb", "0.05", "--chinese-chars", "5000"]
    args += ["--document-tokens", "200"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench_assistant.json").read_text(encoding="utf-8"))["rows"]
    expected = [
        ("extraction", measure.format(unit=unit))
        for _, unit in BOOKS
        for measure in EXTRACTION_MEASURES
    ]
    expected += [("retrieval", measure) for measure in RETRIEVAL_MEASURES]
    expected += [("follow-up", measure) for measure in FOLLOW_UP_MEASURES]
    assert [(row["part"], row["measure"]) for row in rows] == expected
    assert all(row["value"] > 0 for row in rows)
    for name, _ in BOOKS:
        assert any(row["input"].startswith(f"{name}: ") for row in rows)
    for _, measure in expected:
        assert measure in result.output
    # The second question finds the document in the prefix cache.
    cached = next(row["value"] for row in rows if row["measure"] == "question 2: cached tokens")
    assert cached >= 200


def test_books_read_back_with_pypdf_and_ebooklib(tmp_path):
    write_pdf(tmp_path / "zh.pdf", 3, "zh")
    pages = pypdf.PdfReader(tmp_path / "zh.pdf").pages
    assert len(pages) == 3
    assert all("的" in page.extract_text() for page in pages)
    write_epub(tmp_path / "book.epub", 0.5)
    size = (tmp_path / "book.epub").stat().st_size
    assert 0.4e6 < size < 0.6e6
    book = epub.read_epub(str(tmp_path / "book.epub"))
    chapters = [
        item for item in book.get_items_of_type(ITEM_DOCUMENT) if "chapter" in item.file_name
    ]
    assert len(chapters) == EPUB_CHAPTERS


def test_each_planted_fact_is_in_the_book_once():
    book, facts = chinese_book(20_000, 10, seed=3)
    text = "".join(section.text for section in book.sections)
    assert 20_000 <= len(text) < 21_000
    assert len({fact.question for fact in facts}) == 10
    for fact in facts:
        assert text.count(fact.sentence) == 1
        # The question names the fact's key, the 「…」 part of its sentence.
        assert fact.question.split("」")[0] == fact.sentence.split("」")[0]
