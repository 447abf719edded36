"""render_markdown: the HTML is parsed back with lxml.html and checked for structure (tables,
MathML, highlighted code, citation links), for safety (raw HTML escaped, only http, https
and mailto links, no markup smuggled through LaTeX), and for robustness on every prefix of a
streaming answer."""

import lxml.html
import pytest

from tome.server.markdown_render import render_markdown

STREAMED_ANSWER = """# Findings

The ratio is $\\frac{a}{b}$ and, in full,

$$
\\sum_{i=1}^{n} x_i^2
$$

| year | value |
|------|-------|
| 1990 | ~~12~~ 13 |

See [1, 3] and [the source](https://example.org/a?b=1).

```python
def area(r):
    return 3.14 * r ** 2
```
"""


def parse(html: str) -> lxml.html.HtmlElement:
    return lxml.html.fragment_fromstring(html, create_parent="div")


def test_table_holds_its_cells():
    html = render_markdown("| name | pages |\n|---|---|\n| Dune | 412 |\n| Emma | ~~300~~ |")
    table = parse(html).find(".//table")
    assert table is not None
    assert [th.text_content() for th in table.iter("th")] == ["name", "pages"]
    assert [td.text_content() for td in table.iter("td")] == ["Dune", "412", "Emma", "300"]
    assert table.find(".//td/s").text == "300"


def test_inline_and_display_math_become_mathml():
    root = parse(render_markdown("Let $x^2 + y$ be given.\n\n$$\n\\frac{alpha}{z}\n$$\n"))
    inline, display = root.findall(".//math")
    assert {"x", "y"} <= set(inline.itertext())
    assert inline.get("display") == "inline"
    assert "z" in display.text_content() and display.find(".//mfrac") is not None
    assert display.get("display") == "block"
    assert display.getparent().tag == "div"


@pytest.mark.parametrize("latex", ["\\frac", "\\sqrt", "x^", "\\begin{matrix}", "\\left("])
def test_malformed_latex_shows_its_source(latex):
    root = parse(render_markdown(f"before $${latex}$$ after"))
    error = root.find(".//code[@class='math-error']")
    assert error is not None and error.text == latex
    assert root.find(".//math") is None


def test_markup_inside_latex_text_never_becomes_an_element():
    root = parse(render_markdown("$\\text{<img src=x onerror=alert(1)>}$ and $\\text{<b>x</b>}$"))
    assert root.find(".//img") is None and root.find(".//b") is None
    assert "onerror" in root.text_content()  # shown as text


def test_latex_href_is_dropped():
    root = parse(render_markdown("$\\href{javascript:alert(1)}{y}$"))
    math = root.find(".//math")
    assert math is not None and "y" in math.text_content()
    assert all("href" not in element.attrib for element in root.iter())


def test_python_code_is_highlighted():
    root = parse(render_markdown("```python\ndef area(r):\n    return r * r\n```\n"))
    block = root.find(".//div[@class='highlight']")
    assert block is not None
    assert "def area(r):" in block.text_content()
    tokens = [span.text for span in block.iter("span") if span.get("class")]
    assert "def" in tokens and "area" in tokens


def test_unknown_language_is_a_plain_escaped_block():
    root = parse(render_markdown("```nosuchlanguage\n<script>alert(1)</script>\n```\n"))
    assert root.find(".//div[@class='highlight']") is None
    code = root.find(".//pre/code")
    assert code.text == "<script>alert(1)</script>\n"
    assert root.find(".//script") is None


def test_raw_html_is_escaped_as_text():
    text = 'Hi <script>alert(1)</script> <b onclick="x()">bold</b>\n\n<iframe src="x"></iframe>'
    root = parse(render_markdown(text))
    for tag in ("script", "b", "iframe"):
        assert root.find(f".//{tag}") is None
    assert "<script>alert(1)</script>" in root.text_content()
    assert "<iframe" in root.text_content()


@pytest.mark.parametrize(
    "link",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert%281%29)",
        "[x](data:text/html,hi)",
        "[x](vbscript:msgbox)",
        "[x](/relative/path)",
        "[x](ftp://example.org/file)",
        "<javascript:alert(1)>",
        "![x](https://evil.example/pixel.png?secret=1)",
    ],
)
def test_only_http_https_and_mailto_links_survive(link):
    root = parse(render_markdown(f"click {link} now"))
    assert root.find(".//img") is None
    for anchor in root.iter("a"):
        assert anchor.get("href").startswith(("http://", "https://", "mailto:"))


def test_allowed_links_open_safely():
    root = parse(
        render_markdown("[a](https://example.org) <mailto:me@example.org> [b](http://x.y)")
    )
    anchors = root.findall(".//a")
    assert [a.get("href") for a in anchors] == [
        "https://example.org",
        "mailto:me@example.org",
        "http://x.y",
    ]
    for anchor in anchors:
        assert anchor.get("rel") == "noopener noreferrer"
        assert anchor.get("target") == "_blank"


def citation_links(root) -> list[int]:
    return [int(a.get("data-citation")) for a in root.iter("a") if a.get("class") == "citation"]


def test_known_citations_become_links():
    text = "One [1], a group [2, 5], unknown [9], mixed [3, 9]; `code [1]` and\n\n    block [2]\n"
    root = parse(render_markdown(text, citation_numbers={1, 2, 3, 5}))
    assert citation_links(root) == [1, 2, 5, 3]
    for anchor in root.iter("a"):
        assert anchor.get("href") == "#"
        assert anchor.text == f"[{anchor.get('data-citation')}]"
    assert "unknown [9]" in root.text_content() and "[9];" in root.text_content()
    for code in root.iter("code"):
        assert code.find(".//a") is None
    assert "code [1]" in root.text_content() and "block [2]" in root.text_content()


def test_citations_in_tables_and_headings_but_not_inside_links():
    text = "# Result [1]\n\n| a |\n|---|\n| b [2] |\n\n[see [3]](https://example.org)"
    root = parse(render_markdown(text, citation_numbers={1, 2, 3}))
    assert citation_links(root) == [1, 2]
    assert root.find(".//h1/a").get("data-citation") == "1"
    assert root.find(".//td/a").get("data-citation") == "2"


def test_no_citation_numbers_leaves_brackets_alone():
    root = parse(render_markdown("As shown [1]."))
    assert citation_links(root) == []
    assert root.text_content().strip() == "As shown [1]."


def test_prices_are_not_math():
    root = parse(render_markdown("It cost $5 and later $10."))
    assert root.find(".//math") is None
    assert root.text_content().strip() == "It cost $5 and later $10."


def test_every_prefix_of_a_streamed_answer_renders():
    for end in range(len(STREAMED_ANSWER) + 1):
        html = render_markdown(STREAMED_ANSWER[:end], citation_numbers={1, 3})
        if STREAMED_ANSWER[:end].strip():
            parse(html)
    root = parse(render_markdown(STREAMED_ANSWER, citation_numbers={1, 3}))
    assert root.find(".//table") is not None
    assert len(root.findall(".//math")) == 2
    assert root.find(".//div[@class='highlight']") is not None
    assert citation_links(root) == [1, 3]


def test_unclosed_fence_and_half_table_render_as_code_and_text():
    root = parse(render_markdown("Intro\n\n```python\nx = [1]\ny = "))
    assert "y =" in root.find(".//div[@class='highlight']").text_content()
    root = parse(render_markdown("| a | b |\n|---|---|\n| 1 |"))
    assert [td.text_content() for td in root.iter("td")] == ["1", ""]
    root = parse(render_markdown("| a | b |\n|-"))
    assert root.find(".//table") is None and "| a | b |" in root.text_content()
