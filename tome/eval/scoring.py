"""Scoring: the fraction of expected strings an answer contains (RULER's string-match-all),
after normalizing both sides for the language."""

import re
import unicodedata

# Reasoning models think aloud first; only what they answer after thinking counts.
_THINKING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_NEXT_TO_CJK = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")


def normalize(text: str, language: str) -> str:
    """Lowercase; full-width forms to ASCII (７１４３２ -> 71432, ，-> ,); punctuation and
    symbols of either language to spaces; in Chinese, no spaces around Han characters
    (some models put spaces between them)."""
    text = unicodedata.normalize("NFKC", _THINKING.sub(" ", text)).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = " ".join(text.split())
    if language == "zh":
        text = _SPACE_NEXT_TO_CJK.sub("", text)
    return text


def contains(answer: str, expected: str) -> bool:
    """Whether the normalized answer holds the normalized expected string. Latin letters and
    digits must stand alone (12345 is not in 123456); Han text has no word boundaries."""
    if expected.isascii():
        return re.search(rf"(?<![a-z0-9]){re.escape(expected)}(?![a-z0-9])", answer) is not None
    return expected in answer


def score(answer: str, expected: tuple[str, ...], language: str) -> float:
    """1.0 when every expected string is in the answer; the fraction found otherwise."""
    normalized = normalize(answer, language)
    found = sum(contains(normalized, normalize(item, language)) for item in expected)
    return found / len(expected)
