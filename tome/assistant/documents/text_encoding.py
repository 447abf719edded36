"""Decode plain text: BOMs, UTF-8, then GB18030 vs Big5, then charset-normalizer.

charset-normalizer alone misreads short Chinese texts (a 6-character GB18030 line came back
as UTF-16-BE, a Big5 one as cp1006, GB18030 classical prose as cp949), so Chinese is
decided first: a text is taken as GB18030 or Big5 when it decodes strictly and nearly all
its non-ASCII characters are common Han characters or CJK punctuation. Common means GB2312
level 1 (the 3,755 most frequent simplified characters) or Big5 level 1 (the 5,401 most
frequent traditional ones): a wrong decoding of either encoding lands mostly on rare
characters, kana or symbols.
"""

import codecs

from charset_normalizer import from_bytes

from tome.assistant.documents.errors import UnsupportedDocumentError

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CHINESE_ENCODINGS = ("gb18030", "big5")
_MIN_COMMON_CHINESE_SHARE = 0.9
_MAX_CONTROL_SHARE = 0.01
# Scoring looks at a prefix: per-character checks over a 100 MB book would take minutes.
_SAMPLE_CHARS = 20_000


def decode_text(data: bytes, filename: str) -> tuple[str, str]:
    """Returns (text, encoding name); raises when the bytes are not text."""
    encoding = _bom_encoding(data) or _utf8(data) or _chinese(data) or _detected(data)
    if encoding is None:
        raise UnsupportedDocumentError(f"{filename}: not a text file in any known encoding")
    text = data.decode(encoding)
    if _control_share(text[:_SAMPLE_CHARS]) > _MAX_CONTROL_SHARE:
        raise UnsupportedDocumentError(f"{filename}: binary data, not a supported document")
    return text, encoding


def _bom_encoding(data: bytes) -> str | None:
    return next((name for bom, name in _BOMS if data.startswith(bom)), None)


def _utf8(data: bytes) -> str | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "utf-8"


def _chinese(data: bytes) -> str | None:
    scores = {}
    for encoding in _CHINESE_ENCODINGS:
        try:
            scores[encoding] = _common_chinese_share(data.decode(encoding)[:_SAMPLE_CHARS])
        except UnicodeDecodeError:
            continue
    if not scores:
        return None
    best = max(scores, key=lambda encoding: scores[encoding])
    return best if scores[best] >= _MIN_COMMON_CHINESE_SHARE else None


def _detected(data: bytes) -> str | None:
    match = from_bytes(data).best()
    return match.encoding if match else None


def _common_chinese_share(text: str) -> float:
    """Share of non-ASCII characters that are common Han or CJK punctuation; a wrong decoding
    yields rare Han, kana, Cyrillic or symbols instead."""
    non_ascii = [char for char in text if ord(char) > 0x7F]
    if not non_ascii:
        return 0.0
    return sum(_is_common_chinese(char) for char in non_ascii) / len(non_ascii)


def _is_common_chinese(char: str) -> bool:
    if "\u3000" <= char <= "\u303f" or "\uff00" <= char <= "\uffef":
        return True
    return _in_gb2312_level1(char) or _in_big5_level1(char)


def _in_gb2312_level1(char: str) -> bool:
    try:
        lead = char.encode("gb2312")[0]
    except UnicodeEncodeError:
        return False
    return 0xB0 <= lead <= 0xD7


def _in_big5_level1(char: str) -> bool:
    try:
        code = int.from_bytes(char.encode("big5"), "big")
    except UnicodeEncodeError:
        return False
    return 0xA440 <= code <= 0xC67E


def _control_share(text: str) -> float:
    if not text:
        return 0.0
    controls = sum(1 for char in text if ord(char) < 32 and char not in "\t\n\r\f")
    return controls / len(text)
