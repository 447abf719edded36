"""POST /v1/chat/completions and /v1/completions."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tome.server import cache_messages
from tome.server.admission import admit
from tome.server.errors import ModelNotFoundError
from tome.server.errors_json import GENERATING
from tome.server.format_chat import ChatFormatter
from tome.server.format_completions import CompletionFormatter
from tome.server.limits import Admission
from tome.server.prompts import Plan, plan_chat, plan_completion
from tome.server.schemas.chat import ChatCompletion, ChatCompletionRequest
from tome.server.schemas.common import SamplingFields
from tome.server.schemas.completions import Completion, CompletionRequest
from tome.server.state import ServerState, server_state
from tome.server.streaming import EventStream, Formatter, stream_events, until_disconnected

router = APIRouter()
Admitted = Annotated[Admission, Depends(admit)]
STREAMED = {"text/event-stream": {}}  # the answer with "stream": true


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={**GENERATING, 200: {"model": ChatCompletion, "content": STREAMED}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, admission: Admitted
) -> ChatCompletion | EventStream:
    server = _serving(request, body.model)
    tier = admission.caller.tier
    body, cached_ids = await cache_messages.continue_cache(server, admission.caller, body)
    plan = await server.tokenize(plan_chat, body, server.tokenizer, server.max_model_len, tier)
    plan.cached_prefix = cache_messages.shared_prefix(plan, cached_ids)
    request_id = server.new_request_id("chatcmpl")
    formatter = ChatFormatter(
        request_id, server.model_name, int(time.time()), server.token_texts, body.logprobs
    )
    return await _answer(request, server, admission, "chat", request_id, plan, formatter, body)


@router.post(
    "/v1/completions",
    response_model=None,
    responses={**GENERATING, 200: {"model": Completion, "content": STREAMED}},
)
async def create_completion(
    body: CompletionRequest, request: Request, admission: Admitted
) -> Completion | EventStream:
    server = _serving(request, body.model)
    tier = admission.caller.tier
    plan = await server.tokenize(
        plan_completion, body, server.tokenizer, server.max_model_len, tier
    )
    request_id = server.new_request_id("cmpl")
    formatter = CompletionFormatter(
        request_id,
        server.model_name,
        int(time.time()),
        server.token_texts,
        body.logprobs is not None,
    )
    return await _answer(
        request, server, admission, "completions", request_id, plan, formatter, body
    )


def _serving(request: Request, model: str) -> ServerState:
    server = server_state(request)
    if model != server.model_name:
        raise ModelNotFoundError(
            f"the model {model!r} does not exist; this server serves {server.model_name!r}"
        )
    return server


async def _answer(
    request: Request,
    server: ServerState,
    admission: Admission,
    endpoint: str,
    request_id: str,
    plan: Plan,
    formatter: Formatter,
    body: SamplingFields,
):
    generation = server.start_generation(admission, endpoint, request_id, plan)
    if body.stream:
        return await stream_events(request, generation, formatter, body.include_usage)
    try:
        outputs = await until_disconnected(request, generation.collect())
    finally:
        await generation.aclose()
    return formatter.completion(outputs, generation.counts)
