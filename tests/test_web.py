"""Web fetch and search against a local HTTP server on 127.0.0.1 (tests/web_pages_server.py),
and the refusal of private addresses under the default config."""

import ipaddress
import socket

import pytest

from tests.web_pages_server import (
    CHINESE_PARAGRAPHS,
    ENGLISH_PARAGRAPHS,
    LARGE_SIZE,
    PDF_BYTES,
    PagesServer,
)
from tome.assistant.web import SearxngSearch, WebConfig, fetch_url
from tome.assistant.web.address_guard import is_public_address
from tome.assistant.web.decoding import codec_for, decode_page
from tome.assistant.web.errors import (
    FetchTimeoutError,
    HttpStatusError,
    InvalidSearchQueryError,
    InvalidUrlError,
    PageTooLargeError,
    PrivateAddressError,
    SearchResponseError,
    TooManyRedirectsError,
    UnreachableHostError,
    UnsupportedContentTypeError,
)
from tome.errors import InvalidRequestError

LOCAL = WebConfig(allow_private_addresses=True)
ONLY_TEST_SERVER = WebConfig(allowed_private_hosts=("127.0.0.1",))


@pytest.fixture(scope="module")
def server():
    pages = PagesServer()
    pages.thread.start()
    yield pages
    pages.shutdown()
    pages.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_english_html_gives_readable_text_without_navigation(server):
    page = fetch_url(f"{server.base_url}/english", LOCAL)
    assert page.media_type == "text/html"
    assert page.title == "Loomings"
    for paragraph in ENGLISH_PARAGRAPHS:
        assert paragraph in page.text
    assert "About" not in page.text
    assert "Copyright" not in page.text
    assert page.encoding == "utf-8"


@pytest.mark.parametrize("path", ["/chinese-meta-gb2312", "/chinese-header-gb18030"])
def test_gb18030_chinese_page_is_decoded(server, path):
    page = fetch_url(server.base_url + path, LOCAL)
    assert page.encoding == "gb18030"
    assert page.title == "红楼梦 第一回"
    for paragraph in CHINESE_PARAGRAPHS:
        assert paragraph in page.text


def test_undeclared_chinese_text_is_detected(server):
    page = fetch_url(f"{server.base_url}/chinese-undeclared", LOCAL)
    assert page.text == "\n".join(CHINESE_PARAGRAPHS[:1] * 3)


def test_plain_text_is_returned_as_is(server):
    page = fetch_url(f"{server.base_url}/plain", LOCAL)
    assert (page.media_type, page.title) == ("text/plain", None)
    assert page.text == "\n".join(ENGLISH_PARAGRAPHS)


def test_pdf_is_passed_through_as_bytes(server):
    page = fetch_url(f"{server.base_url}/paper.pdf", LOCAL)
    assert (page.media_type, page.content, page.text) == ("application/pdf", PDF_BYTES, None)


def test_redirect_chain_is_followed_up_to_the_limit(server):
    url = f"{server.base_url}/redirect/3"
    page = fetch_url(url, WebConfig(allow_private_addresses=True, max_redirects=3))
    assert page.url == url
    assert page.final_url == f"{server.base_url}/english"
    assert page.title == "Loomings"
    with pytest.raises(TooManyRedirectsError):
        fetch_url(url, WebConfig(allow_private_addresses=True, max_redirects=2))


def test_redirect_without_location_is_an_http_error(server):
    with pytest.raises(HttpStatusError) as caught:
        fetch_url(f"{server.base_url}/no-location", LOCAL)
    assert caught.value.status == 302


@pytest.mark.parametrize("path", ["/large-sized", "/large-unsized"])
def test_body_over_the_cap_is_refused(server, path):
    config = WebConfig(allow_private_addresses=True, max_bytes=LARGE_SIZE // 5)
    with pytest.raises(PageTooLargeError):
        fetch_url(server.base_url + path, config)
    roomy = WebConfig(allow_private_addresses=True, max_bytes=LARGE_SIZE)
    assert len(fetch_url(server.base_url + path, roomy).content) == LARGE_SIZE


def test_wrong_content_type_is_refused(server):
    with pytest.raises(UnsupportedContentTypeError, match="application/json"):
        fetch_url(f"{server.base_url}/data.json", LOCAL)


def test_missing_page_is_an_http_error(server):
    with pytest.raises(HttpStatusError, match="404") as caught:
        fetch_url(f"{server.base_url}/nowhere", LOCAL)
    assert caught.value.status == 404


def test_slow_server_times_out(server):
    config = WebConfig(allow_private_addresses=True, timeout_seconds=0.3)
    with pytest.raises(FetchTimeoutError):
        fetch_url(f"{server.base_url}/slow", config)


def test_dripping_body_hits_the_total_deadline(server):
    # Each byte arrives well within the read timeout; only the overall deadline stops it.
    config = WebConfig(allow_private_addresses=True, timeout_seconds=1, total_timeout_seconds=0.5)
    with pytest.raises(FetchTimeoutError):
        fetch_url(f"{server.base_url}/drip", config)


def test_unreachable_hosts(server):
    with pytest.raises(UnreachableHostError):
        fetch_url(f"http://127.0.0.1:{closed_port()}/", LOCAL)
    with pytest.raises(UnreachableHostError):
        fetch_url("http://no-such-host.invalid/", LOCAL)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/english",
        "http://localhost:{port}/english",
        "http://[::1]:{port}/english",
        "http://[::ffff:127.0.0.1]:{port}/english",
        "http://2130706433:{port}/english",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://224.0.0.1/",
        "http://0.0.0.0:{port}/english",
    ],
)
def test_private_addresses_are_refused_by_default(server, url):
    before = len(server.requests)
    with pytest.raises(PrivateAddressError) as caught:
        fetch_url(url.format(port=server.server_port))
    assert isinstance(caught.value, InvalidRequestError)
    assert caught.value.status_code == 400
    assert len(server.requests) == before


@pytest.mark.parametrize("path", ["/to-localhost", "/to-metadata"])
def test_redirect_from_an_allowed_host_to_a_private_address_is_refused(server, path):
    with pytest.raises(PrivateAddressError):
        fetch_url(server.base_url + path, ONLY_TEST_SERVER)
    assert server.paths_requested()[-1] == path


def test_allowed_host_is_fetched_through_redirects(server):
    page = fetch_url(f"{server.base_url}/redirect/2", ONLY_TEST_SERVER)
    assert page.title == "Loomings"


def test_name_is_resolved_once_and_the_checked_address_is_used(server, monkeypatch):
    # A second lookup could answer with another address (DNS rebinding); the fetch must
    # connect to the address it checked, sending the original name as Host.
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def rebinding_getaddrinfo(host, *args, **kwargs):
        if host != "pages.example":
            return real_getaddrinfo(host, *args, **kwargs)
        lookups.append(host)
        if len(lookups) > 1:
            raise socket.gaierror("second lookup")
        return real_getaddrinfo("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    url = f"http://pages.example:{server.server_port}/english"
    page = fetch_url(url, WebConfig(allowed_private_hosts=("pages.example",)))
    assert page.title == "Loomings"
    assert lookups == ["pages.example"]
    assert server.requests[-1][1]["Host"] == f"pages.example:{server.server_port}"


@pytest.mark.parametrize("url", ["ftp://example.com/file", "file:///etc/passwd", "not a url"])
def test_non_http_urls_are_refused(url):
    with pytest.raises(InvalidUrlError):
        fetch_url(url)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),
        ("64:ff9b::a00:1", False),
    ],
)
def test_public_address_classification(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_searxng_results_become_citable_sources(server):
    results = SearxngSearch(server.base_url, LOCAL).search("白鲸 Moby Dick", max_results=3)
    assert [result.url for result in results] == [
        "https://en.wikipedia.org/wiki/Moby-Dick",
        "https://www.gutenberg.org/ebooks/2701",
        "https://example.com/third",
    ]
    first = results[0]
    assert first.title == "Moby-Dick (白鲸 Moby Dick)"
    assert first.snippet == "Moby-Dick; or, The Whale is an 1851 novel by Herman Melville."
    assert (first.site, first.engine, first.published) == (
        "en.wikipedia.org",
        "wikipedia",
        "2024-05-01T00:00:00",
    )
    assert results[1].published is None
    assert first.retrieved_at.tzinfo is not None


def test_searxng_max_results_truncates(server):
    results = SearxngSearch(server.base_url + "/", LOCAL).search("whale", max_results=1)
    assert [result.title for result in results] == ["Moby-Dick (whale)"]


def test_searxng_errors(server):
    with pytest.raises(UnreachableHostError, match="search provider"):
        SearxngSearch(f"http://127.0.0.1:{closed_port()}", LOCAL).search("whale", 5)
    with pytest.raises(HttpStatusError, match=r"search\.formats"):
        SearxngSearch(f"{server.base_url}/forbidden", LOCAL).search("whale", 5)
    with pytest.raises(SearchResponseError):
        SearxngSearch(f"{server.base_url}/broken", LOCAL).search("whale", 5)
    with pytest.raises(InvalidSearchQueryError):
        SearxngSearch(server.base_url, LOCAL).search("   ", 5)


@pytest.mark.parametrize(
    ("label", "codec"),
    [("gb2312", "gb18030"), ("GBK", "gb18030"), ("big5", "big5hkscs"), ("iso-8859-1", "cp1252")],
)
def test_charset_labels_decode_as_their_whatwg_supersets(label, codec):
    assert codec_for(label) == codec


def test_latin1_label_decodes_windows_1252_quotes():
    # Pages labelled ISO-8859-1 use Windows-1252's curly quotes at 0x93/0x94, which real
    # Latin-1 would turn into invisible control characters.
    body = "“Call me Ishmael.”".encode("cp1252")
    assert decode_page(body, "iso-8859-1", is_html=False) == ("“Call me Ishmael.”", "cp1252")


def test_mislabelled_page_falls_back_to_detection():
    text = "\n".join(CHINESE_PARAGRAPHS)
    decoded, _ = decode_page(text.encode("utf-8"), "gb2312", is_html=False)
    assert decoded == text
