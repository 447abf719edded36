"""HTML pages: the readable text (trafilatura drops navigation, ads and footers) as Markdown,
so its headings become sections the same way as in a Markdown file."""

import trafilatura

from tome.assistant.documents.document import Document
from tome.assistant.documents.html_text import block_text, parse_html
from tome.assistant.documents.markdown_reader import markdown_sections

MEDIA_TYPE = "text/html"


def read_html(text: str, filename: str, title: str) -> Document:
    markdown = trafilatura.extract(
        text,
        output_format="markdown",
        include_comments=False,
        include_tables=True,
        favor_recall=True,
    )
    # trafilatura returns nothing for pages it judges to be all boilerplate (very short ones).
    sections = markdown_sections(markdown or block_text(parse_html(text)))
    metadata = trafilatura.extract_metadata(text)
    page_title = metadata.title if metadata and metadata.title else None
    return Document(page_title or title, sections, filename, MEDIA_TYPE)
