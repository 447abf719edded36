"""Counts every HTTP request by endpoint and status for /metrics. A plain ASGI middleware:
Starlette's BaseHTTPMiddleware would wrap streamed bodies and get between a stream and the
client's disconnect."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tome.server.metrics import ServerMetrics

ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/tokenize",
        "/health",
        "/metrics",
    }
)
DISCONNECTED = 499  # nginx's code for a client that closed the connection first


class RequestCounter:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = DISCONNECTED

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.count_request(endpoint, status)
