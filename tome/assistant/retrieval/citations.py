"""Numbered passages for a prompt, and the map that lets a person check an answer's [n]."""

import re
from dataclasses import dataclass

from tome.assistant.retrieval.chunking import Passage

EXCERPT_CHARS = 1000
_CITATION = re.compile(r"\[(\d+(?:\s*[,，]\s*\d+)*)\]")


@dataclass(frozen=True)
class Hit:
    """A retrieved passage, its score, and the number it is cited by ([1] is the best)."""

    passage: Passage
    score: float
    citation_number: int


@dataclass(frozen=True)
class Citation:
    """Where [n] points: the source, and the section and page within it."""

    source_id: str
    source_title: str
    section_title: str | None
    page: int | None
    excerpt: str = ""  # the passage's text, for a person to check the answer against

    @property
    def label(self) -> str:
        """ "Title, Section, p. 3", leaving out what the source does not have."""
        parts = [self.source_title]
        if self.section_title and self.section_title != self.source_title:
            parts.append(self.section_title)
        if self.page is not None:
            parts.append(f"p. {self.page}")
        return ", ".join(parts)


@dataclass(frozen=True)
class CitedContext:
    """The numbered passages as prompt text, and what each number cites."""

    text: str
    citations: dict[int, Citation]

    def unknown_citations(self, answer: str) -> list[int]:
        """Numbers the answer cites that no passage carries (an invented [n])."""
        return [n for n in cited_numbers(answer) if n not in self.citations]


def format_context(hits: list[Hit]) -> CitedContext:
    """`[n] (title, section, p. 3) text`, one passage per paragraph, in citation order."""
    citations, blocks = {}, []
    for hit in sorted(hits, key=lambda hit: hit.citation_number):
        passage = hit.passage
        citation = Citation(
            passage.source_id,
            passage.source_title,
            passage.section_title,
            passage.page,
            passage.text[:EXCERPT_CHARS],
        )
        citations[hit.citation_number] = citation
        blocks.append(f"[{hit.citation_number}] ({citation.label}) {passage.text}")
    return CitedContext("\n\n".join(blocks), citations)


def cited_numbers(answer: str) -> list[int]:
    """The citation numbers an answer uses ([2], [1, 3], [4][5]), in order of first use."""
    numbers: list[int] = []
    for group in _CITATION.findall(answer):
        for number in re.split(r"\s*[,，]\s*", group):
            if int(number) not in numbers:
                numbers.append(int(number))
    return numbers
