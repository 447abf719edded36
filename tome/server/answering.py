"""One answer of the reading assistant, from a saved conversation to a saved answer.

The question is read with the conversation's earlier turns and its attachments (and web
search results when asked), assembled (whole documents when they fit the window, cited
passages when not), generated through the same accounting as /v1/chat/completions, and
both the question and the answer are saved. Nothing is saved until the engine has taken
the request: a question the engine refuses leaves the conversation as it was. An answer
cut short (Stop, a closed tab) is saved as far as it got."""

import asyncio
from dataclasses import dataclass
from functools import partial

from tome.assistant.assembly import AssembledPrompt, assemble
from tome.assistant.attachment_sources import attachment_sources
from tome.assistant.retrieval import SourceText
from tome.assistant.search_sources import search_sources
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError
from tome.server.generation import ChoiceRequest, ChoiceUpdate, Generation
from tome.server.markdown_render import render_markdown
from tome.server.prompts import Plan
from tome.server.schemas.answers import AnswerRequest
from tome.server.schemas.conversations import Message
from tome.server.state import ServerState
from tome.server.tiers import Tier
from tome.server.uploads import file_store
from tome.store import ConversationStore
from tome.store.conversations import ConversationRecord, MessageRecord

DEFAULT_ANSWER_TOKENS = 1024
DEFAULT_TEMPERATURE = 0.3  # a reading assistant should stay close to its sources


@dataclass(frozen=True)
class Turn:
    """The question to answer, after the conversation's earlier turns."""

    conversation: ConversationRecord
    question: str
    history: list[dict[str, str]]
    regenerate: bool


def load_turn(
    server: ServerState, owner: int | None, conversation_id: str, body: AnswerRequest
) -> Turn:
    """The conversation as the question sees it: with `regenerate`, without its last answer,
    the last question asked again."""
    conversation = ConversationStore(server.database).get(owner, conversation_id)
    messages = [m for m in conversation.messages if m.role in ("user", "assistant")]
    if not body.regenerate:
        return Turn(conversation, body.question, _turns(messages), regenerate=False)
    if messages and messages[-1].role == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1].role != "user":
        raise InvalidRequestError("this conversation has no question to answer again")
    return Turn(conversation, messages[-1].content, _turns(messages[:-1]), regenerate=True)


def _turns(messages: list[MessageRecord]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


async def gather_sources(
    server: ServerState, owner: int | None, turn: Turn, web_search: bool
) -> list[SourceText]:
    """The attachments in attachment order, then this question's search results last, so
    the attachments' prefix is the same from one question to the next."""
    files = file_store(server)
    attached = turn.conversation.attachments
    sources = await asyncio.to_thread(attachment_sources, files, owner, attached)
    if not web_search:
        return sources
    if server.search is None:
        raise InvalidRequestError(
            "web search is not configured on this server; start it with --search-url"
        )
    found = await asyncio.to_thread(
        search_sources, server.search, turn.question, server.settings.web
    )
    return sources + found


def context_window(server: ServerState, tier: Tier) -> int:
    limit = tier.max_context_tokens
    return server.max_model_len if limit is None else min(limit, server.max_model_len)


def answer_budget(body: AnswerRequest, window: int) -> int:
    return body.max_tokens or min(DEFAULT_ANSWER_TOKENS, window // 4)


async def assemble_turn(
    server: ServerState, sources: list[SourceText], turn: Turn, window: int, budget: int
) -> AssembledPrompt:
    tokenizer = server.tokenizer
    assemble_cached = partial(assemble, index_cache=server.index_cache)
    return await server.tokenize(
        assemble_cached, sources, turn.history, turn.question, tokenizer, window, budget
    )


def answer_plan(prompt: AssembledPrompt, body: AnswerRequest, budget: int) -> Plan:
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    params = SamplingParams(max_tokens=budget, temperature=temperature, top_p=0.95)
    return Plan([ChoiceRequest(0, 0, prompt.prompt_token_ids, params)])


class AnswerRecorder:
    """Follows one generation: the text so far, rendered; saves the question once the engine
    has taken it, and the answer (whole or cut short) exactly once."""

    def __init__(
        self,
        server: ServerState,
        owner: int | None,
        turn: Turn,
        prompt: AssembledPrompt,
        window: int,
        generation: Generation,
    ) -> None:
        self.store = ConversationStore(server.database)
        self.owner = owner
        self.turn = turn
        self.prompt = prompt
        self.window = window
        self.generation = generation
        self.text = ""
        self.finish_reason: str | None = None
        self.question: Message | None = None
        self.saved: Message | None = None

    @property
    def citation_numbers(self) -> list[int]:
        return list(self.prompt.citations)

    def save_question(self) -> Message:
        """The question (or, regenerating, the old answer's removal): the engine took it."""
        conversation_id = self.turn.conversation.id
        if self.turn.regenerate:
            record = self.store.remove_last_answer(self.owner, conversation_id)
        else:
            record = self.store.add_message(self.owner, conversation_id, "user", self.turn.question)
        self.question = Message.of(record)
        return self.question

    def follow(self, update: ChoiceUpdate) -> None:
        self.text += update.delta_text
        self.finish_reason = update.finish_reason or self.finish_reason

    def html(self) -> str:
        return render_markdown(self.text, self.citation_numbers)

    def start_event(self, user_message: Message, sources: list[SourceText]) -> dict:
        metadata = self.metadata("stop")
        return {
            "type": "start",
            "user_message": user_message.model_dump(),
            "mode": self.prompt.mode,
            "window_tokens": self.prompt.window_tokens_used,
            "window_size": self.window,
            "citations": metadata["citations"],
            "sources": [{"source_id": s.source_id, "title": s.title} for s in sources],
        }

    def save_answer(self, interrupted: str = "abort") -> Message | None:
        """Save the answer as it stands, once its question is saved; `interrupted` names why
        it ended if the engine did not say (a closed connection, an error)."""
        if self.saved is None and self.question is not None:
            metadata = self.metadata(self.finish_reason or interrupted)
            record = self.store.add_message(
                self.owner, self.turn.conversation.id, "assistant", self.text, metadata
            )
            self.saved = Message.of(record)
        return self.saved

    def metadata(self, finish_reason: str) -> dict:
        counts = self.generation.counts
        citations = [
            {"number": n, **vars(citation)} for n, citation in self.prompt.citations.items()
        ]
        return {
            "mode": self.prompt.mode,
            "window_tokens": self.prompt.window_tokens_used,
            "window_size": self.window,
            "finish_reason": finish_reason,
            "citations": citations,
            "usage": {
                "prompt_tokens": counts.prompt,
                "cached_tokens": counts.cached,
                "completion_tokens": counts.completion,
            },
        }
