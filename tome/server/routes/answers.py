"""POST /v1/conversations/{id}/answers: the reading assistant answers a question about the
conversation's documents, streamed as server-sent events (start, delta, done or error) or
whole, and saves both the question and the answer."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tome.assistant.retrieval import SourceText
from tome.errors import TomeError
from tome.server import conversation_pins
from tome.server.admission import admit
from tome.server.answering import (
    AnswerRecorder,
    answer_budget,
    answer_plan,
    assemble_turn,
    context_window,
    gather_sources,
    load_turn,
)
from tome.server.cache_messages import shared_prefix
from tome.server.errors_json import error_body, error_responses
from tome.server.limits import Admission
from tome.server.schemas.answers import Answer, AnswerRequest
from tome.server.schemas.conversations import Message
from tome.server.state import server_state
from tome.server.streaming import DONE_EVENT, EventStream, until_disconnected

router = APIRouter()
Admitted = Annotated[Admission, Depends(admit)]


@router.post(
    "/v1/conversations/{conversation_id}/answers",
    response_model=None,
    responses={
        **error_responses(400, 401, 403, 404, 413, 415, 429, 502, 503, 504),
        # Streamed (the default) as server-sent events; whole ("stream": false) as an Answer.
        200: {"model": Answer, "content": {"text/event-stream": {}}},
    },
)
async def answer(
    conversation_id: str, body: AnswerRequest, request: Request, admission: Admitted
) -> Answer | EventStream:
    server = server_state(request)
    owner = admission.caller.key_id
    turn = await asyncio.to_thread(load_turn, server, owner, conversation_id, body)
    sources = await gather_sources(server, owner, turn, body.web_search)
    window = context_window(server, admission.caller.tier)
    budget = answer_budget(body, window)
    prompt = await assemble_turn(server, sources, turn, window, budget)
    request_id = server.new_request_id("answer")
    plan = answer_plan(prompt, body, budget)
    if body.pin_ttl is not None:
        pinned = await conversation_pins.pin_documents(
            server, admission.caller, conversation_id, prompt, body.pin_ttl
        )
        plan.cached_prefix = shared_prefix(plan, pinned)
    generation = server.start_generation(admission, "assistant", request_id, plan)
    recorder = AnswerRecorder(server, owner, turn, prompt, window, generation)
    if body.stream:
        return await _stream(request, recorder, sources)
    return await _whole(request, recorder)


async def _whole(request: Request, recorder: AnswerRecorder) -> Answer:
    async def run() -> Message:
        updates = recorder.generation.updates()
        first = await anext(updates)
        user_message = await asyncio.to_thread(recorder.save_question)
        recorder.follow(first)
        async for update in updates:
            recorder.follow(update)
        return user_message

    try:
        user_message = await until_disconnected(request, run())
    finally:
        await recorder.generation.aclose()
        answer = recorder.save_answer()
    return Answer(user_message=user_message, message=answer)


async def _stream(
    request: Request, recorder: AnswerRecorder, sources: list[SourceText]
) -> EventStream:
    """The first update is awaited before the response starts, so a request the engine
    refuses gets an HTTP error and the conversation stays as it was."""
    updates = recorder.generation.updates()
    try:
        first = await until_disconnected(request, anext(updates))
        user_message = await asyncio.to_thread(recorder.save_question)
    except BaseException:
        await recorder.generation.aclose()
        raise

    async def events() -> AsyncIterator[str]:
        ended = "abort"
        try:
            yield _event(recorder.start_event(user_message, sources))
            recorder.follow(first)
            yield _event({"type": "delta", "text": first.delta_text, "html": recorder.html()})
            async for update in updates:
                recorder.follow(update)
                yield _event({"type": "delta", "text": update.delta_text, "html": recorder.html()})
        except TomeError as exc:
            ended = "error"
            yield _event({"type": "error", **error_body(exc).model_dump()})
        finally:
            await recorder.generation.aclose()
            # Saved here, not after the loop: a closed connection must not lose the answer.
            message = recorder.save_answer(ended)
        if message is not None:
            yield _event({"type": "done", "message": message.model_dump()})
        yield DONE_EVENT

    return EventStream(events())


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
