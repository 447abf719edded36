"""GET /v1/models, POST /v1/tokenize, POST /v1/tokenizers/estimate-token-count, GET /health,
GET /metrics."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from tome.server.auth import authenticate
from tome.server.errors_json import AUTHENTICATED, WITH_BODY
from tome.server.limits import Caller
from tome.server.metrics import read_snapshot
from tome.server.prompts import prompt_ids_of
from tome.server.schemas.misc import (
    EstimateTokenCountRequest,
    EstimateTokenCountResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenTotal,
)
from tome.server.state import server_state

router = APIRouter()
Authenticated = Annotated[Caller, Depends(authenticate)]
HEALTH_TIMEOUT_S = 30.0  # the engine answers between steps; a long prefill step takes a while


@router.get("/v1/models", responses=AUTHENTICATED)
async def list_models(request: Request, _: Authenticated) -> ModelList:
    server = server_state(request)
    card = ModelCard(
        id=server.model_name,
        created=server.created,
        max_model_len=server.max_model_len,
        quantization=server.quantization,
    )
    return ModelList(data=[card])


@router.post("/v1/tokenize", responses=WITH_BODY)
async def tokenize(body: TokenizeRequest, request: Request, _: Authenticated) -> TokenizeResponse:
    server = server_state(request)
    ids = await server.tokenize(prompt_ids_of, server.tokenizer, body.prompt, body.messages)
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=server.max_model_len)


@router.post("/v1/tokenizers/estimate-token-count", responses=WITH_BODY)
async def estimate_token_count(
    body: EstimateTokenCountRequest, request: Request, _: Authenticated
) -> EstimateTokenCountResponse:
    """The tokens the chat template makes of these messages: what a chat request with them
    would count as its prompt."""
    server = server_state(request)
    ids = await server.tokenize(prompt_ids_of, server.tokenizer, None, body.messages)
    return EstimateTokenCountResponse(data=TokenTotal(total_tokens=len(ids)))


@router.get(
    "/health",
    responses={
        200: {"description": "The engine answers.", "content": {"application/json": {}}},
        503: {"description": "The engine does not answer.", "content": {"application/json": {}}},
    },
)
async def health(request: Request) -> JSONResponse:
    """200 while the engine thread answers; 503 when it does not."""
    engine = server_state(request).engine
    try:
        await asyncio.wait_for(engine.call(lambda _: None), HEALTH_TIMEOUT_S)
    except Exception as exc:  # stopped, failed or stuck: all of them mean unhealthy
        return JSONResponse({"status": "unhealthy", "reason": type(exc).__name__}, 503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    server = server_state(request)
    snapshot = await server.engine.call(read_snapshot)
    return Response(server.metrics.render(snapshot), media_type=CONTENT_TYPE_LATEST)
