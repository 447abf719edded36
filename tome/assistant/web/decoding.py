"""Bytes of a text or HTML page to str, in the charset the page really uses.

Order, as browsers do it: a byte-order mark, the Content-Type header's charset, an HTML
<meta> charset; a declared charset is used only if the bytes decode with it cleanly
(Chinese pages labelled gb2312 while really UTF-8 are common). Otherwise the bytes are
decoded as an uploaded text file would be (UTF-8, then GB18030 or Big5, then
charset-normalizer's guess)."""

import codecs
import re

from tome.assistant.documents import DocumentError
from tome.assistant.documents.text_encoding import decode_text

META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
META_SCAN_BYTES = 4096
BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# The WHATWG Encoding standard decodes these labels as their supersets, because pages
# labelled with them use the superset's characters.
SUPERSET_CODECS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
}


def codec_for(label: str | None) -> str | None:
    """Python's codec for a charset label, widened to its superset; None if unknown."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    return SUPERSET_CODECS.get(name, name)


def declared_charsets(body: bytes, header_charset: str | None, is_html: bool) -> list[str]:
    """The codecs the page declares, strongest first."""
    labels = [codec for bom, codec in BOMS if body.startswith(bom)][:1]
    labels.append(header_charset)
    if is_html:
        match = META_CHARSET.search(body[:META_SCAN_BYTES])
        labels.append(match.group(1).decode("ascii") if match else None)
    codecs_found = [codec_for(label) for label in labels]
    return [codec for codec in dict.fromkeys(codecs_found) if codec]


def decode_page(body: bytes, header_charset: str | None, is_html: bool) -> tuple[str, str]:
    """(text, codec used)."""
    declared = declared_charsets(body, header_charset, is_html)
    for codec in declared:
        try:
            return body.decode(codec), codec
        except UnicodeDecodeError:
            continue
    try:
        return decode_text(body, "the page")
    except DocumentError:
        pass
    fallback = declared[0] if declared else "utf-8"
    return body.decode(fallback, errors="replace"), fallback
