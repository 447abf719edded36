"""A saved conversation as Markdown for a person: the title, the attachments, each turn
under its role's heading, and under an answer how it was made and the sources it cites."""

from tome.server.schemas.conversations import (
    AnswerMetadata,
    Attachment,
    Citation,
    ConversationDetail,
)

ROLE_HEADINGS = {"system": "System", "user": "User", "assistant": "Assistant"}
MODE_NAMES = {"full": "whole documents in context", "retrieval": "retrieved passages"}


def conversation_markdown(conversation: ConversationDetail) -> str:
    lines = [f"# {conversation.title}", ""]
    if conversation.attachments:
        lines += ["Attachments:", ""]
        lines += [_attachment_line(a) for a in conversation.attachments]
        lines.append("")
    for message in conversation.messages:
        lines += [f"## {ROLE_HEADINGS[message.role]}", "", message.content.strip(), ""]
        if message.metadata is not None:
            lines += _answer_notes(message.metadata)
    return "\n".join(lines).rstrip() + "\n"


def _attachment_line(attachment: Attachment) -> str:
    if attachment.url is not None:
        return f"- [{attachment.title or attachment.url}]({attachment.url})"
    title = attachment.title or attachment.file_id
    return f"- {title} (`{attachment.file_id}`)"


def _answer_notes(metadata: AnswerMetadata) -> list[str]:
    mode = f"Mode: {MODE_NAMES[metadata.mode]}"
    if metadata.window_tokens is not None:
        mode += f", {metadata.window_tokens} tokens of the window"
    lines = [f"*{mode}.*", ""]
    if metadata.citations:
        lines += ["Sources:", ""]
        lines += [_citation_line(c) for c in metadata.citations]
        lines.append("")
    return lines


def _citation_line(citation: Citation) -> str:
    parts = [citation.source_title or citation.source_id]
    if citation.section_title and citation.section_title != citation.source_title:
        parts.append(citation.section_title)
    if citation.page is not None:
        parts.append(f"p. {citation.page}")
    return f"- [{citation.number}] {', '.join(parts)} (`{citation.source_id}`)"
