"""Whitespace normalization shared by every reader."""

import re

_TRAILING_SPACES = re.compile(r"[ \t\u3000]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACES.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()
