"""Block-aware text from an HTML tree: EPUB chapters, and HTML that trafilatura finds empty."""

import re

import lxml.html
from lxml.etree import ParserError

from tome.assistant.documents.clean_text import clean_text

_BLOCK_TAGS = {
    "p", "div", "br", "li", "tr", "pre", "blockquote", "section", "article",
    "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "table", "ul", "ol",
}  # fmt: skip
_LEADING_SPACES = re.compile(r"\n[ \t]+")
_HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def parse_html(markup: bytes | str) -> lxml.html.HtmlElement:
    try:
        return lxml.html.document_fromstring(markup)
    except ParserError:  # "Document is empty": markup without a single element
        return lxml.html.document_fromstring("<html></html>")


def block_text(tree: lxml.html.HtmlElement) -> str:
    """The body's text with a line break after every block element."""
    for junk in tree.xpath("//script | //style | //head"):
        junk.drop_tree()
    for element in tree.iter(*_BLOCK_TAGS):
        element.tail = "\n" + (element.tail or "")
    # Indentation in markup is source formatting, not text.
    return clean_text(_LEADING_SPACES.sub("\n", tree.text_content()))


def first_heading(tree: lxml.html.HtmlElement) -> str | None:
    for element in tree.iter(*_HEADING_TAGS):
        text = " ".join(element.text_content().split())
        if text:
            return text
    return None
