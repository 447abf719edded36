"""create_app: the FastAPI application over one ServerState (one AsyncEngine)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from tome.server.errors_json import install_error_handlers
from tome.server.request_counter import DISCONNECTED, RequestCounter
from tome.server.routes import (
    answers,
    cache_tags,
    caching,
    conversations,
    files,
    generate,
    info,
    ui,
)
from tome.server.state import ServerState
from tome.server.streaming import ClientDisconnected


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(title="Tome", summary="An OpenAI-compatible API", lifespan=lifespan)
    app.state.tome = state
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def disconnected(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=DISCONNECTED)  # nobody reads it; the status is for metrics

    app.include_router(generate.router)
    app.include_router(info.router)
    app.include_router(files.router)
    app.include_router(conversations.router)
    app.include_router(answers.router)
    app.include_router(caching.router)
    app.include_router(cache_tags.router)
    ui.install(app)
    app.add_middleware(RequestCounter, metrics=state.metrics)
    return app
