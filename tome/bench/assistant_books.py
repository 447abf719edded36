"""Books for the extraction benchmark, written at run time: a PDF of real text pages (English
in Helvetica, Chinese in reportlab's built-in CID font STSong-Light) and an EPUB of chapters.

reportlab is only needed here, so it is the `bench` extra rather than a dependency of Tome."""

import html
import random
import textwrap
import zlib
from pathlib import Path

from ebooklib import epub

from tome.bench.assistant_text import text_of_length
from tome.errors import InvalidRequestError

LINES_PER_PAGE = 48
# What fits one 10-point line between A4's margins: Helvetica's average glyph is about half
# an em, a CJK glyph a whole one.
LINE_CHARS = {"en": 95, "zh": 48}
FONT = {"en": "Helvetica", "zh": "STSong-Light"}
EPUB_CHAPTERS = 40
SENTENCES_PER_PARAGRAPH = 8


def write_pdf(path: Path, pages: int, language: str, seed: int = 0) -> None:
    """`pages` A4 pages of full text lines in `language` ("en" or "zh")."""
    canvas, pdfmetrics, cidfonts = _reportlab()
    if language == "zh":
        pdfmetrics.registerFont(cidfonts.UnicodeCIDFont(FONT["zh"]))
    rng = random.Random(f"pdf/{language}/{seed}")
    pdf = canvas.Canvas(str(path))
    for _ in range(pages):
        pdf.setFont(FONT[language], 10)
        text = text_of_length(language, LINES_PER_PAGE * LINE_CHARS[language], rng)
        lines = textwrap.wrap(text, LINE_CHARS[language])[:LINES_PER_PAGE]
        for row, line in enumerate(lines):
            pdf.drawString(56, 800 - 15 * row, line)
        pdf.showPage()
    pdf.save()


def write_epub(path: Path, megabytes: float, seed: int = 0) -> None:
    """An English EPUB of `EPUB_CHAPTERS` chapters whose file is about `megabytes` MB (10^6
    bytes): an EPUB is a zip, so the chapters hold as much text as deflates to that size."""
    rng = random.Random(f"epub/{seed}")
    sample = text_of_length("en", 100_000, random.Random(f"epub-sample/{seed}")).encode()
    deflated_share = len(zlib.compress(sample)) / len(sample)
    chapter_chars = int(megabytes * 1e6 / EPUB_CHAPTERS / deflated_share)
    book = epub.EpubBook()
    book.set_identifier(f"tome-bench-{seed}")
    book.set_title("The Benchmark Book")
    book.set_language("en")
    chapters = [_chapter(number, chapter_chars, rng) for number in range(1, EPUB_CHAPTERS + 1)]
    for chapter in chapters:
        book.add_item(chapter)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    epub.write_epub(str(path), book)


def _chapter(number: int, chars: int, rng: random.Random) -> epub.EpubHtml:
    heading = f"Chapter {number}"
    paragraph_chars = SENTENCES_PER_PARAGRAPH * 60
    paragraphs = [
        f"<p>{html.escape(text_of_length('en', paragraph_chars, rng))}</p>"
        for _ in range(max(1, chars // paragraph_chars))
    ]
    chapter = epub.EpubHtml(title=heading, file_name=f"chapter_{number}.xhtml", lang="en")
    chapter.content = f"<html><body><h1>{heading}</h1>{''.join(paragraphs)}</body></html>"
    return chapter


def _reportlab():
    try:
        from reportlab.pdfbase import cidfonts, pdfmetrics
        from reportlab.pdfgen import canvas
    except ImportError as exc:
        raise InvalidRequestError(
            "the extraction benchmark writes its PDFs with reportlab: pip install 'tome[bench]'"
        ) from exc
    return canvas, pdfmetrics, cidfonts
