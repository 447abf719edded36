"""An answer's Markdown as safe HTML for the web UI: tables, strikethrough, `$...$` math as
MathML, highlighted code, and `[n]` citations as links to the passages they cite.

Model output is untrusted: raw HTML is escaped, only http, https and mailto links survive,
images become links (an image would be fetched the moment the answer is shown, a way for a
crafted document to send data out), and the MathML is rebuilt from a whitelist. Answers are
rendered while they stream, so any prefix of Markdown or LaTeX must render without raising.
"""

import re
from collections.abc import Collection, Sequence
from typing import Any

import latex2mathml.converter
from lxml import etree
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml, unescapeAll
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_LINK_SCHEMES = ("http:", "https:", "mailto:")
_CITATION_GROUP = re.compile(r"\[(\d+(?:\s*[,，]\s*\d+)*)\]")
_GROUP_SEPARATOR = re.compile(r"\s*[,，]\s*")
_MATHML_NAMESPACE = "http://www.w3.org/1998/Math/MathML"
# fmt: off
_MATHML_TAGS = frozenset({
    "math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msup", "msub", "msubsup",
    "mfrac", "msqrt", "mroot", "mstyle", "merror", "mpadded", "mphantom", "menclose", "munder",
    "mover", "munderover", "mtable", "mtr", "mtd", "mmultiscripts", "mprescripts", "none",
    "semantics", "annotation",
})
# Presentation attributes only: no href, no style, no event handlers.
_MATHML_ATTRIBUTES = frozenset({
    "display", "mathvariant", "mathsize", "mathcolor", "mathbackground", "displaystyle",
    "scriptlevel", "stretchy", "fence", "separator", "symmetric", "largeop", "movablelimits",
    "accent", "accentunder", "lspace", "rspace", "minsize", "maxsize", "form", "width",
    "height", "depth", "voffset", "linethickness", "columnalign", "columnlines",
    "columnspacing", "rowalign", "rowlines", "rowspacing", "frame", "framespacing", "notation",
    "align", "columnspan", "rowspan",
})
# fmt: on
_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
_CODE_FORMATTER = HtmlFormatter(cssclass="highlight")


def render_markdown(text: str, citation_numbers: Collection[int] = ()) -> str:
    """`text` as HTML; each `[n]` (or `[1, 3]`) whose n is in `citation_numbers` becomes a
    `<a class="citation" data-citation="n" href="#">` link, except inside code and links."""
    return _MARKDOWN.render(text, {"citation_numbers": frozenset(citation_numbers)})


def _is_allowed_link(url: str) -> bool:
    return url.strip().lower().startswith(ALLOWED_LINK_SCHEMES)


def _render_math(latex: str, options: dict[str, Any]) -> str:
    """MathML for `latex`, or its escaped source when latex2mathml cannot read it."""
    try:
        display = "block" if options["display_mode"] else "inline"
        return _whitelisted_mathml(latex2mathml.converter.convert(latex, display=display))
    # latex2mathml signals malformed input with many exception types (its own, IndexError,
    # StopIteration...); a half-streamed formula must still render, so any failure falls back.
    except Exception:
        return f'<code class="math-error">{escapeHtml(latex)}</code>'


def _whitelisted_mathml(mathml: str) -> str:
    """The MathML re-serialized from known elements and presentation attributes only.
    latex2mathml copies `\\text{...}` verbatim, so its output may hold markup of its own;
    anything outside the whitelist rejects the whole formula."""
    root = etree.fromstring(mathml.encode(), _XML_PARSER)
    for element in root.iter():
        namespace, _, tag = str(element.tag).rpartition("}")
        if namespace != "{" + _MATHML_NAMESPACE or tag not in _MATHML_TAGS:
            raise ValueError(f"unexpected MathML element {element.tag}")
        for name in list(element.attrib):
            if name not in _MATHML_ATTRIBUTES:
                del element.attrib[name]
    return etree.tostring(root, encoding="unicode")


def _render_fence(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Pygments-highlighted code in div.highlight; an unknown language renders plain."""
    token = tokens[idx]
    language = unescapeAll(token.info).strip().split(maxsplit=1)
    try:
        lexer = get_lexer_by_name(language[0]) if language else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return renderer.fence(tokens, idx, options, env)
    return highlight(token.content, lexer, _CODE_FORMATTER)


def _render_link_open(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Links open in a new tab, without handing the UI's window to the page they open."""
    tokens[idx].attrSet("rel", "noopener noreferrer")
    tokens[idx].attrSet("target", "_blank")
    return renderer.renderToken(tokens, idx, options, env)


def _render_citation(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    number = int(tokens[idx].meta["number"])
    return f'<a class="citation" data-citation="{number}" href="#">[{number}]</a>'


def _link_citations(state: StateCore) -> None:
    """Core rule: split text tokens at known `[n]` into text and citation tokens. Code spans
    are `code_inline` tokens and links hold their text between link_open and link_close,
    so neither is touched."""
    known = state.env.get("citation_numbers", frozenset())
    if not known:
        return
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        children, link_depth = [], 0
        for token in block.children:
            link_depth += {"link_open": 1, "link_close": -1}.get(token.type, 0)
            if token.type == "text" and link_depth == 0:
                children.extend(_split_citations(token, known))
            else:
                children.append(token)
        block.children = children


def _split_citations(token: Token, known: frozenset[int]) -> list[Token]:
    pieces, start = [], 0
    for match in _CITATION_GROUP.finditer(token.content):
        numbers = [int(n) for n in _GROUP_SEPARATOR.split(match.group(1))]
        if not known.intersection(numbers):
            continue
        pieces.append(_text_token(token.content[start : match.start()]))
        for number in numbers:
            if number in known:
                pieces.append(Token("citation", "", 0, meta={"number": number}))
            else:
                pieces.append(_text_token(f"[{number}]"))
        start = match.end()
    if not pieces:
        return [token]
    pieces.append(_text_token(token.content[start:]))
    return [piece for piece in pieces if piece.type != "text" or piece.content]


def _text_token(content: str) -> Token:
    return Token("text", "", 0, content=content)


def _build_markdown() -> MarkdownIt:
    markdown = MarkdownIt("commonmark", {"html": False, "linkify": False})
    markdown.enable(["table", "strikethrough"])
    markdown.disable("image")
    markdown.validateLink = _is_allowed_link
    # Prices are not math: "$5 and $10" stays text, as in Pandoc.
    dollarmath_plugin(
        markdown,
        allow_labels=False,
        allow_space=False,
        allow_digits=False,
        double_inline=True,
        renderer=_render_math,
    )
    markdown.core.ruler.push("link_citations", _link_citations)
    markdown.add_render_rule("fence", _render_fence)
    markdown.add_render_rule("link_open", _render_link_open)
    markdown.add_render_rule("citation", _render_citation)
    return markdown


_MARKDOWN = _build_markdown()
