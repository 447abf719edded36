"""Markdown: ATX headings (`#` to `######`) start sections; fenced code is never a heading."""

import re

from tome.assistant.documents.clean_text import clean_text
from tome.assistant.documents.document import Document, Section

MEDIA_TYPE = "text/markdown"

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def read_markdown(text: str, filename: str, title: str) -> Document:
    sections = markdown_sections(text)
    first_title = next((section.title for section in sections if section.title), None)
    return Document(first_title or title, sections, filename, MEDIA_TYPE)


def markdown_sections(text: str) -> list[Section]:
    sections = []
    heading: str | None = None
    body: list[str] = []
    in_fence = False
    for line in clean_text(text).split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            sections.append(Section(heading, clean_text("\n".join(body))))
            heading, body = match.group(2).strip(), []
        else:
            body.append(line)
    sections.append(Section(heading, clean_text("\n".join(body))))
    return [section for section in sections if section.title or section.text]
