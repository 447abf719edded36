"""A follow-up question on an attached document: its time to first token against the first
question's, each prompt assembled as the assistant assembles it (the document whole, in
full mode).

Full mode puts the document in the system message, ahead of the conversation, so the second
prompt begins with the first one's tokens and the prefix cache should supply the document.
Unlike `tome bench context` (random token ids), this runs the real prompts: the chat
template, the instruction, the first answer carried into the conversation."""

import random
import time
from dataclasses import dataclass

from tome import LLM, SamplingParams
from tome.assistant.assembly import AssembledPrompt, Message, assemble
from tome.assistant.documents import Section
from tome.assistant.retrieval import SourceText
from tome.engine.engine import Engine
from tome.engine.outputs import RequestOutput
from tome.errors import InvalidRequestError
from tome.eval.haystack import build_haystack
from tome.eval.token_counter import TokenCounter

FIRST_QUESTION = "What does the document say about the old bridge over the river?"
SECOND_QUESTION = "And what happened at the harbour in the evening?"


@dataclass(frozen=True)
class FollowUpResult:
    document_tokens: int
    first_ttft: float  # seconds: the document is prefilled with the question
    first_prompt_tokens: int
    second_ttft: float  # the follow-up, after the first question and its answer
    second_prompt_tokens: int
    second_cached_tokens: int  # of the second prompt, supplied by the prefix cache

    @property
    def ratio(self) -> float:
        return self.second_ttft / self.first_ttft


def run_follow_up(
    llm: LLM, document_tokens: int, answer_tokens: int = 8, seed: int = 0
) -> FollowUpResult:
    """Two questions on a `document_tokens`-token English document, answers of at most
    `answer_tokens` tokens; a short unrelated prompt first, so neither pays the warm-up."""
    engine = llm.engine
    counter = TokenCounter(engine.tokenizer)
    text = build_haystack(counter, "en", document_tokens, [], random.Random(f"follow-up/{seed}"))
    source = SourceText("document", "A long document", [Section(None, text)])
    params = SamplingParams(temperature=0.0, max_tokens=answer_tokens)
    _answer(engine, engine.tokenizer.encode("Say hello."), params)
    first_prompt = _assembled(engine, source, [], FIRST_QUESTION, answer_tokens)
    first, first_ttft = _answer(engine, first_prompt.prompt_token_ids, params)
    conversation = [
        {"role": "user", "content": FIRST_QUESTION},
        {"role": "assistant", "content": first.text},
    ]
    second_prompt = _assembled(engine, source, conversation, SECOND_QUESTION, answer_tokens)
    second, second_ttft = _answer(engine, second_prompt.prompt_token_ids, params)
    return FollowUpResult(
        document_tokens=counter.count(text),
        first_ttft=first_ttft,
        first_prompt_tokens=first_prompt.window_tokens_used,
        second_ttft=second_ttft,
        second_prompt_tokens=second_prompt.window_tokens_used,
        second_cached_tokens=second.num_cached_tokens,
    )


def _assembled(
    engine: Engine,
    source: SourceText,
    conversation: list[Message],
    question: str,
    answer_tokens: int,
) -> AssembledPrompt:
    prompt = assemble(
        [source], conversation, question, engine.tokenizer, engine.max_model_len, answer_tokens
    )
    if prompt.mode != "full":
        raise InvalidRequestError(
            f"the document does not fit the model's {engine.max_model_len}-token window "
            "whole; lower --document-tokens"
        )
    return prompt


def _answer(
    engine: Engine, prompt: list[int], params: SamplingParams
) -> tuple[RequestOutput, float]:
    """The finished output and the seconds from submitting to the first generated token."""
    request_id = f"bench-assistant-{time.monotonic_ns()}"
    start = time.perf_counter()
    engine.add_request(request_id, prompt, params)
    first_token_at = None
    while True:
        for out in engine.step():
            if out.request_id != request_id:
                continue
            if first_token_at is None and out.token_ids:
                first_token_at = time.perf_counter()
            if out.finished:
                return out, (first_token_at or time.perf_counter()) - start
