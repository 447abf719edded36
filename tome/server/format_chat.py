"""Chat answers and stream chunks from the engine's outputs."""

from tome.engine.outputs import RequestOutput
from tome.server.format_logprobs import TokenTexts, chat_logprobs
from tome.server.generation import ChoiceUpdate, TokenCounts
from tome.server.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
)
from tome.server.schemas.common import Usage


class ChatFormatter:
    def __init__(
        self, request_id: str, model: str, created: int, texts: TokenTexts, logprobs: bool
    ) -> None:
        self.request_id, self.model, self.created = request_id, model, created
        self.texts = texts
        self.logprobs = logprobs
        self._greeted: set[int] = set()  # choices whose role chunk went out

    def completion(self, outputs: list[RequestOutput], counts: TokenCounts) -> ChatCompletion:
        choices = [
            ChatChoice(
                index=index,
                message=AssistantMessage(content=out.text),
                logprobs=chat_logprobs(self.texts, out.logprobs or []) if self.logprobs else None,
                finish_reason=out.finish_reason,
            )
            for index, out in enumerate(outputs)
        ]
        return ChatCompletion(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=Usage.of(counts.prompt, counts.cached, counts.completion),
        )

    def chunks(self, update: ChoiceUpdate) -> list[ChatCompletionChunk]:
        chunks = []
        if update.index not in self._greeted:
            self._greeted.add(update.index)
            role = ChatChunkChoice(
                index=update.index, delta=ChatDelta(role="assistant", content="")
            )
            chunks.append(self._chunk([role]))
        choice = ChatChunkChoice(
            index=update.index,
            delta=ChatDelta(content=update.delta_text or None),
            logprobs=chat_logprobs(self.texts, update.logprobs) if self.logprobs else None,
            finish_reason=update.finish_reason,
        )
        chunks.append(self._chunk([choice]))
        return chunks

    def usage_chunk(self, counts: TokenCounts) -> ChatCompletionChunk:
        usage = Usage.of(counts.prompt, counts.cached, counts.completion)
        return self._chunk([], usage)

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None):
        return ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model, choices=choices, usage=usage
        )
