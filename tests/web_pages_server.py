"""A local HTTP server on 127.0.0.1 for the web fetch and search tests: pages in several
charsets, redirects, oversize and slow bodies, error statuses and SearXNG-format JSON."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ENGLISH_PARAGRAPHS = [
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
    "money in my purse, and nothing particular to interest me on shore, I thought I would "
    "sail about a little and see the watery part of the world.",
    "It is a way I have of driving off the spleen and regulating the circulation. Whenever "
    "I find myself growing grim about the mouth, I account it high time to get to sea.",
]
# 𠀀 (U+20000) exists only in GB18030's four-byte range, beyond GB2312 and GBK.
CHINESE_PARAGRAPHS = [
    "满纸荒唐言，一把辛酸泪。都云作者痴，谁解其中味？此开卷第一回也，作者自云曾历过一番梦幻之后，"
    "故将真事隐去，而借通灵之说，撰此石头记一书也。",
    "列位看官：你道此书从何而来？说起根由虽近荒唐，细按则深有趣味。罕见字𠀀也要正确解码。",
]
PDF_BYTES = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
LARGE_SIZE = 50_000


def html_page(title: str, paragraphs: list[str], head: str = "") -> str:
    body = "".join(f"<p>{text}</p>" for text in paragraphs)
    return (
        f"<html><head>{head}<title>{title}</title></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
        f"<article><h1>{title}</h1>{body}</article>"
        "<footer>Copyright 2026 Example Press</footer></body></html>"
    )


def searxng_results(query: str) -> dict:
    return {
        "query": query,
        "number_of_results": 5,
        "results": [
            {
                "url": "https://en.wikipedia.org/wiki/Moby-Dick",
                "title": f"Moby-Dick  ({query})",
                "content": "Moby-Dick; or, The Whale is an 1851 novel\n by Herman Melville.",
                "engine": "wikipedia",
                "publishedDate": "2024-05-01T00:00:00",
            },
            {"url": "javascript:alert(1)", "title": "not a web page", "content": ""},
            {"url": "https://example.org/untitled", "title": "", "content": "no title"},
            {
                "url": "https://en.wikipedia.org/wiki/Moby-Dick",
                "title": "Duplicate",
                "content": "the same page again from another engine",
                "engine": "bing",
            },
            {
                "url": "https://www.gutenberg.org/ebooks/2701",
                "title": "Moby Dick; Or, The Whale by Herman Melville",
                "content": "Free ebook",
                "engine": "duckduckgo",
                "publishedDate": None,
            },
            {"url": "https://example.com/third", "title": "Third", "content": "third result"},
        ],
        "answers": [],
        "suggestions": [],
        "unresponsive_engines": [],
    }


class PagesHandler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        self.server.requests.append((url.path, dict(self.headers)))
        route = ROUTES.get(url.path)
        if route is None and url.path.startswith("/redirect/"):
            route = redirect_chain
        if route is None:
            self.send_body(404, "text/html", b"<html><body>not here</body></html>")
            return
        route(self, parse_qs(url.query))

    def send_body(self, status: int, content_type: str, body: bytes, length: bool = True):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


def english(handler, query):
    page = html_page("Loomings", ENGLISH_PARAGRAPHS).encode("utf-8")
    handler.send_body(200, "text/html; charset=utf-8", page)


def chinese_meta_gb2312(handler, query):
    head = '<meta http-equiv="Content-Type" content="text/html; charset=gb2312">'
    page = html_page("红楼梦 第一回", CHINESE_PARAGRAPHS, head).encode("gb18030")
    handler.send_body(200, "text/html", page)


def chinese_header_gb18030(handler, query):
    page = html_page("红楼梦 第一回", CHINESE_PARAGRAPHS).encode("gb18030")
    handler.send_body(200, "text/html; charset=GB18030", page)


def chinese_undeclared(handler, query):
    text = "\n".join(CHINESE_PARAGRAPHS[:1] * 3).encode("gb18030")
    handler.send_body(200, "text/plain", text)


def plain_text(handler, query):
    handler.send_body(200, "text/plain; charset=utf-8", "\n".join(ENGLISH_PARAGRAPHS).encode())


def redirect_chain(handler, query):
    remaining = int(handler.path.rsplit("/", 1)[1])
    handler.redirect(f"/redirect/{remaining - 1}" if remaining > 1 else "/english")


def to_localhost(handler, query):
    handler.redirect(f"http://localhost:{handler.server.server_port}/english")


def to_metadata(handler, query):
    handler.redirect("http://169.254.169.254/latest/meta-data/")


def no_location(handler, query):
    handler.send_body(302, "text/html", b"")


def large_sized(handler, query):
    handler.send_body(200, "text/plain", b"a" * LARGE_SIZE)


def large_unsized(handler, query):
    # No Content-Length: the body ends when the connection closes, so only counting the
    # bytes read can stop it.
    handler.send_body(200, "text/plain", b"a" * LARGE_SIZE, length=False)


def json_document(handler, query):
    handler.send_body(200, "application/json", b'{"not": "a page"}')


def pdf(handler, query):
    handler.send_body(200, "application/pdf", PDF_BYTES)


def slow(handler, query):
    time.sleep(2)
    handler.send_body(200, "text/plain", b"late")


def drip(handler, query):
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.end_headers()
    for _ in range(30):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(0.1)


def searxng(handler, query):
    if query.get("format") != ["json"]:
        handler.send_body(403, "text/html", b"<html>403 Forbidden</html>")
        return
    body = json.dumps(searxng_results(query["q"][0])).encode()
    handler.send_body(200, "application/json", body)


def local_search(handler, query):
    """SearXNG-format results that point at this server's own pages; 503 while the
    server's `search_down` is set, as an instance under maintenance answers."""
    if handler.server.search_down:
        handler.send_body(503, "text/html", b"<html>Service Unavailable</html>")
        return
    base = handler.server.base_url
    results = [
        {"url": f"{base}/english", "title": "Loomings", "content": "Call me Ishmael."},
        {"url": f"{base}/gone", "title": "A page that is gone", "content": "Whales sing."},
    ]
    body = json.dumps({"query": query["q"][0], "results": results}).encode()
    handler.send_body(200, "application/json", body)


def searxng_forbidden(handler, query):
    handler.send_body(403, "text/html", b"<html>403 Forbidden</html>")


def searxng_broken(handler, query):
    handler.send_body(200, "text/html", b"<html>Maintenance</html>")


ROUTES = {
    "/english": english,
    "/chinese-meta-gb2312": chinese_meta_gb2312,
    "/chinese-header-gb18030": chinese_header_gb18030,
    "/chinese-undeclared": chinese_undeclared,
    "/plain": plain_text,
    "/to-localhost": to_localhost,
    "/to-metadata": to_metadata,
    "/no-location": no_location,
    "/large-sized": large_sized,
    "/large-unsized": large_unsized,
    "/data.json": json_document,
    "/paper.pdf": pdf,
    "/slow": slow,
    "/drip": drip,
    "/search": searxng,
    "/local/search": local_search,
    "/forbidden/search": searxng_forbidden,
    "/broken/search": searxng_broken,
}


class PagesServer(ThreadingHTTPServer):
    """Serves ROUTES on 127.0.0.1 from a background thread; `requests` logs what it got."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PagesHandler)
        self.requests: list[tuple[str, dict]] = []
        self.search_down = False
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request, client_address):
        # The client hangs up on purpose on the oversize and dripping bodies.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def paths_requested(self) -> list[str]:
        return [path for path, _ in self.requests]
