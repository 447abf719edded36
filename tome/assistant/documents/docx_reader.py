"""Word documents: paragraphs and tables in order, a section under each heading."""

import io

import docx
from docx.table import Table

from tome.assistant.documents.clean_text import clean_text
from tome.assistant.documents.document import Document, Section
from tome.assistant.documents.errors import CorruptDocumentError

MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def read_docx(data: bytes, filename: str, title: str) -> Document:
    try:
        document = docx.Document(io.BytesIO(data))
        sections, title_paragraph = _sections(document)
    except Exception as error:  # damaged input surfaces as zlib, KeyError, lxml errors, ...
        raise CorruptDocumentError(f"{filename}: the DOCX file is damaged") from error
    core_title = document.core_properties.title
    return Document(core_title or title_paragraph or title, sections, filename, MEDIA_TYPE)


def _sections(document: docx.document.Document) -> tuple[list[Section], str | None]:
    sections: list[Section] = []
    heading: str | None = None
    title_paragraph: str | None = None
    body: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            body.append(_table_text(block))
            continue
        style = block.style.name if block.style is not None else ""
        if style == "Title" and title_paragraph is None:
            title_paragraph = block.text.strip()
        elif style.startswith("Heading") and block.text.strip():
            sections.append(Section(heading, clean_text("\n".join(body))))
            heading, body = block.text.strip(), []
        else:
            body.append(block.text)
    sections.append(Section(heading, clean_text("\n".join(body))))
    return [section for section in sections if section.title or section.text], title_paragraph


def _table_text(table: Table) -> str:
    return "\n".join(" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows)
