"""Completions answers and stream chunks (the same object, as OpenAI's) from engine outputs."""

from tome.engine.outputs import RequestOutput
from tome.server.format_logprobs import TokenTexts, completion_logprobs
from tome.server.generation import ChoiceUpdate, TokenCounts
from tome.server.schemas.common import Usage
from tome.server.schemas.completions import Completion, CompletionChoice


class CompletionFormatter:
    def __init__(
        self, request_id: str, model: str, created: int, texts: TokenTexts, logprobs: bool
    ) -> None:
        self.request_id, self.model, self.created = request_id, model, created
        self.texts = texts
        self.logprobs = logprobs
        self._offsets: dict[int, int] = {}  # per choice, where its next token's text starts

    def completion(self, outputs: list[RequestOutput], counts: TokenCounts) -> Completion:
        choices = [
            CompletionChoice(
                index=index,
                text=out.text,
                logprobs=(
                    completion_logprobs(self.texts, out.logprobs or [], 0)
                    if self.logprobs
                    else None
                ),
                finish_reason=out.finish_reason,
            )
            for index, out in enumerate(outputs)
        ]
        return self._completion(choices, Usage.of(counts.prompt, counts.cached, counts.completion))

    def chunks(self, update: ChoiceUpdate) -> list[Completion]:
        logprobs = None
        if self.logprobs:
            offset = self._offsets.get(update.index, 0)
            logprobs = completion_logprobs(self.texts, update.logprobs, offset)
            self._offsets[update.index] = offset + sum(len(t) for t in logprobs.tokens)
        choice = CompletionChoice(
            index=update.index,
            text=update.delta_text,
            logprobs=logprobs,
            finish_reason=update.finish_reason,
        )
        return [self._completion([choice])]

    def usage_chunk(self, counts: TokenCounts) -> Completion:
        return self._completion([], Usage.of(counts.prompt, counts.cached, counts.completion))

    def _completion(self, choices: list[CompletionChoice], usage: Usage | None = None):
        return Completion(
            id=self.request_id, created=self.created, model=self.model, choices=choices, usage=usage
        )
