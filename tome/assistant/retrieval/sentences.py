"""Sentence and paragraph boundaries for Chinese and English (and text mixing both).

Chinese sentences end at 。！？；… with any closing quotes or brackets after them, spaces or
not. English ones end at . ! ? (and closing quotes) followed by whitespace, except after an
abbreviation or an initial ("e.g.", "Dr.", "J. Smith") or when the next word starts in
lowercase; a decimal point has no space after it, so 3.14 stays whole. Blank lines end
paragraphs; single line breaks inside one (PDF line wraps) are joined.
"""

import re
from dataclasses import dataclass

_CJK_CHARS = r"\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_CJK_TERMINATORS = "。！？；…"
_TERMINATOR = re.compile(rf"(?:[{_CJK_TERMINATORS}]+|[.!?]+)[」』”’\"')）\]】》]*")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WRAP_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK_CHARS}])[ \t]*\n\s*(?=[{_CJK_CHARS}])")
_WRAP = re.compile(r"\s*\n\s*")
_LAST_WORD = re.compile(r"(\S+)$")
_WORD_WINDOW = 64  # characters before a period in which its word is looked for

# Words whose period rarely ends a sentence; compared lowercased, without the final period.
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "al", "cf", "vs", "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt"}
    | {"fig", "figs", "eq", "vol", "pp", "ch", "sec", "approx", "dept", "inc", "ltd", "corp"}
)


@dataclass(frozen=True)
class Sentence:
    """A sentence and the text that joined it to the one before ("", " " or a blank line)."""

    text: str
    separator: str


def split_sentences(text: str) -> list[Sentence]:
    """Split text into sentences, paragraph by paragraph."""
    sentences: list[Sentence] = []
    for paragraph in _paragraphs(text):
        previous_end = None
        for start, end in _sentence_spans(paragraph):
            if previous_end is None:
                separator = "\n\n" if sentences else ""
            else:
                separator = " " if start > previous_end else ""
            sentences.append(Sentence(paragraph[start:end], separator))
            previous_end = end
    return sentences


def join_sentences(sentences: list[Sentence]) -> str:
    """The text of consecutive sentences as they stood (the first one's separator dropped)."""
    if not sentences:
        return ""
    return sentences[0].text + "".join(s.separator + s.text for s in sentences[1:])


def _paragraphs(text: str) -> list[str]:
    paragraphs = []
    for block in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")):
        unwrapped = _WRAP.sub(" ", _WRAP_BETWEEN_CJK.sub("", block.strip()))
        if unwrapped:
            paragraphs.append(unwrapped)
    return paragraphs


def _sentence_spans(paragraph: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, surrounding whitespace excluded."""
    spans, start = [], 0
    for match in _TERMINATOR.finditer(paragraph):
        if _ends_sentence(paragraph, match):
            spans.append((start, match.end()))
            start = match.end()
    spans.append((start, len(paragraph)))
    return [_strip_span(paragraph, s, e) for s, e in spans if paragraph[s:e].strip()]


def _ends_sentence(paragraph: str, match: re.Match) -> bool:
    if match.group()[0] in _CJK_TERMINATORS:
        return True
    rest = paragraph[match.end() :]
    if rest and not rest[0].isspace():
        return False  # 3.14, example.com, "?!" inside a word
    following = rest.lstrip()
    if following[:1].islower():
        return False
    if match.group().startswith(".") and not match.group().startswith(".."):
        # Only the text just before the period: searching the whole paragraph up to
        # here at every period would cost the square of the paragraph's length.
        window = paragraph[max(0, match.start() - _WORD_WINDOW) : match.start()]
        previous = _LAST_WORD.search(window)
        word = previous.group(1).lstrip("\"'(“‘[").lower() if previous else ""
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            return False
    return True


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
