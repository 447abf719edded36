"""EPUB: one section per spine document (chapter), titled from the table of contents, else
from the chapter's first heading."""

import io
import warnings

from ebooklib import epub

from tome.assistant.documents.document import Document, Section
from tome.assistant.documents.errors import CorruptDocumentError
from tome.assistant.documents.html_text import block_text, first_heading, parse_html

MEDIA_TYPE = "application/epub+zip"


def read_epub(data: bytes, filename: str, title: str) -> Document:
    try:
        with warnings.catch_warnings():
            # ebooklib warns about its own future defaults on every read.
            warnings.simplefilter("ignore")
            book = epub.read_epub(io.BytesIO(data))
        sections = _chapters(book)
    except Exception as error:  # damaged input surfaces as zlib, KeyError, lxml errors, ...
        raise CorruptDocumentError(f"{filename}: the EPUB file is damaged") from error
    book_titles = book.get_metadata("DC", "title")
    book_title = book_titles[0][0].strip() if book_titles else ""
    return Document(book_title or title, sections, filename, MEDIA_TYPE)


def _chapters(book: epub.EpubBook) -> list[Section]:
    toc_titles = _toc_titles(book.toc)
    sections = []
    for item_id, _linear in book.spine:
        item = book.get_item_with_id(item_id)
        # The navigation document (EpubNav) is the table of contents, not a chapter.
        if not isinstance(item, epub.EpubHtml) or not item.is_chapter():
            continue
        tree = parse_html(item.get_content())
        heading = toc_titles.get(item.get_name()) or first_heading(tree)
        text = block_text(tree)
        if heading and text.startswith(heading):
            text = text[len(heading) :].strip()
        if text:
            sections.append(Section(heading, text))
    return sections


def _toc_titles(toc: list) -> dict[str, str]:
    """href (without #fragment) -> title of the first table-of-contents entry pointing there."""
    titles: dict[str, str] = {}
    for entry in toc:
        if isinstance(entry, tuple):
            section, children = entry
            nested = _toc_titles([section, *children])
            titles.update({href: t for href, t in nested.items() if href not in titles})
        elif getattr(entry, "href", None) and entry.title:
            titles.setdefault(entry.href.split("#")[0], entry.title.strip())
    return titles
