"""Prompt assembly: whole documents in the context when they fit, cited retrieval when not.

Full mode puts every document, whole, into the system message ahead of the conversation.
That message depends only on the documents and their order, so each later question on the
same documents begins with the same tokens and the engine's prefix cache (or a named
context) skips them. Retrieval mode keeps the system message fixed as well and puts the
numbered passages chosen for this question in the last user message, after the
conversation, so the conversation's prefix stays cacheable too.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

from tome.assistant.retrieval import (
    ChunkingConfig,
    Citation,
    Hit,
    SourceText,
    format_context,
)
from tome.assistant.retrieval.index_cache import IndexCache, build_index
from tome.errors import InvalidRequestError, PromptTooLongError

Message = dict[str, str]
Mode = Literal["full", "retrieval"]

FULL_INSTRUCTION = (
    "You are a careful reading assistant. The documents below are given in full. Answer "
    "from them, and say which document and which section or page an answer comes from."
)
RETRIEVAL_INSTRUCTION = (
    "You are a careful reading assistant. The documents are too long to read whole, so "
    "each question comes with numbered passages from them. Answer from those passages and "
    "cite sources as [n], the number of the passage. If the passages do not hold the "
    "answer, say so."
)


class ChatTokenizer(Protocol):
    """What assembly needs of a tokenizer, such as tome.loader.Tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def apply_chat_template(self, messages: list[Message]) -> list[int]: ...


class QuestionTooLongError(PromptTooLongError):
    """Even the question alone, with the answer budget, does not fit the window."""


@dataclass(frozen=True)
class AssembledPrompt:
    """The chat to send, its prompt ids, the mode used and what [n] cites (retrieval)."""

    messages: list[Message]
    prompt_token_ids: list[int]
    mode: Mode
    citations: dict[int, Citation] = field(default_factory=dict)

    @property
    def window_tokens_used(self) -> int:
        return len(self.prompt_token_ids)


def assemble(
    sources: Sequence[SourceText],
    conversation: Sequence[Message],
    question: str,
    tokenizer: ChatTokenizer,
    window_tokens: int,
    answer_budget: int,
    passage_tokens: int = 256,
    index_cache: IndexCache | None = None,
) -> AssembledPrompt:
    """The prompt for `question` after `conversation` (earlier user/assistant turns, oldest
    first) over `sources` (in the order they were attached): every source whole when the
    prompt plus `answer_budget` fits `window_tokens`, else the best passages that fit.
    `index_cache` keeps the sources' passage index (and its embedder's vectors) for the
    next question; without one, each question in retrieval mode indexes them anew."""
    if not question.strip():
        raise InvalidRequestError("the question is empty")
    if not 0 < answer_budget < window_tokens:
        raise InvalidRequestError(
            f"the answer budget must be between 1 and {window_tokens - 1} tokens, "
            f"got {answer_budget}"
        )
    prompt_limit = window_tokens - answer_budget
    messages = [
        {"role": "system", "content": full_context_text(sources)},
        *conversation,
        {"role": "user", "content": question},
    ]
    ids = tokenizer.apply_chat_template(messages)
    if len(ids) <= prompt_limit:
        return AssembledPrompt(messages, ids, "full")
    chunking = ChunkingConfig(max_tokens=passage_tokens)
    return _assemble_retrieval(
        sources, list(conversation), question, tokenizer, prompt_limit, chunking, index_cache
    )


def full_context_text(sources: Sequence[SourceText]) -> str:
    """The system message of full mode: the instruction, then each source whole, with its
    title and its sections' titles and pages as headings. Deterministic: the same sources in
    the same order always give the same text."""
    parts = [FULL_INSTRUCTION]
    for number, source in enumerate(sources, start=1):
        parts.append(f"# Document {number}: {source.title}")
        for section in source.sections:
            heading = _section_heading(section.title, section.page)
            parts.append(f"{heading}\n\n{section.text}".strip())
    return "\n\n".join(parts)


def _section_heading(title: str | None, page: int | None) -> str:
    if title and page is not None:
        return f"## {title} (page {page})"
    if page is not None:
        return f"## Page {page}"
    return f"## {title}" if title else ""


def _assemble_retrieval(
    sources: Sequence[SourceText],
    conversation: list[Message],
    question: str,
    tokenizer: ChatTokenizer,
    prompt_limit: int,
    chunking: ChunkingConfig,
    index_cache: IndexCache | None,
) -> AssembledPrompt:
    """The best-ranked passages that fit; the oldest turns go when even none fit."""
    hits = _search(sources, conversation, question, tokenizer, prompt_limit, chunking, index_cache)
    while True:
        build = partial(_retrieval_prompt, conversation, question, hits, tokenizer)
        prompt = _largest_fitting(build, len(hits), prompt_limit)
        if prompt is not None:
            return prompt
        if not conversation:
            raise QuestionTooLongError(
                f"the question alone needs more than the {prompt_limit} tokens the window "
                "leaves after the answer budget; shorten it"
            )
        conversation = _without_oldest_turn(conversation)


def _search(
    sources: Sequence[SourceText],
    conversation: list[Message],
    question: str,
    tokenizer: ChatTokenizer,
    prompt_limit: int,
    chunking: ChunkingConfig,
    index_cache: IndexCache | None,
) -> list[Hit]:
    """Hits for the question and the last user turn (a follow-up such as "and in 1990?"
    leans on it), best first, as many as could possibly fit in the window."""
    if index_cache is None:
        index = build_index(sources, chunking, tokenizer)
    else:
        index = index_cache.index_for(sources, chunking, tokenizer)
    if index is None:
        return []
    last_user = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    hits = index.search(f"{question}\n{last_user}", k=len(index.passages))
    # Passages alone past the limit cannot all fit; one more covers tokens merging at joins.
    total = 0
    for count, hit in enumerate(hits, start=1):
        total += hit.passage.token_count
        if total > prompt_limit:
            return hits[: count + 1]
    return hits


def _largest_fitting(
    build: Callable[[int], AssembledPrompt], most: int, prompt_limit: int
) -> AssembledPrompt | None:
    """The prompt with the most top passages (0 to `most`) within the limit, by binary
    search: prompt length only grows with the passages kept."""
    best, low, high = None, 0, most
    while low <= high:
        middle = (low + high) // 2
        prompt = build(middle)
        if prompt.window_tokens_used <= prompt_limit:
            best, low = prompt, middle + 1
        else:
            high = middle - 1
    return best


def _retrieval_prompt(
    conversation: list[Message],
    question: str,
    hits: list[Hit],
    tokenizer: ChatTokenizer,
    count: int,
) -> AssembledPrompt:
    """The prompt with the best `count` hits."""
    context = format_context(hits[:count])
    passages = context.text or "(No passage of the documents matches this question.)"
    messages = [
        {"role": "system", "content": RETRIEVAL_INSTRUCTION},
        *conversation,
        {"role": "user", "content": f"Passages:\n\n{passages}\n\nQuestion: {question}"},
    ]
    ids = tokenizer.apply_chat_template(messages)
    return AssembledPrompt(messages, ids, "retrieval", context.citations)


def _without_oldest_turn(conversation: list[Message]) -> list[Message]:
    """Drop the first message and any replies to it, so the chat still starts with a user
    turn, as chat templates expect."""
    rest = conversation[1:]
    while rest and rest[0]["role"] != "user":
        rest = rest[1:]
    return rest
