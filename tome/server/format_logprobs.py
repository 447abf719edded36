"""The engine's TokenLogprobs in OpenAI's two shapes: chat's list of entries with their
top alternatives, and completions' parallel lists."""

from tome.engine.outputs import TokenLogprob
from tome.loader.tokenizer import Tokenizer
from tome.server.schemas.chat import ChoiceLogprobs, TokenLogprobEntry, TopLogprob
from tome.server.schemas.completions import CompletionLogprobs


class TokenTexts:
    """Each token's own text (decoded alone, special tokens kept), remembered."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._texts[token_id]


def _best_first(entry: TokenLogprob) -> list[tuple[int, float]]:
    return sorted(entry.top.items(), key=lambda item: -item[1])


def chat_logprobs(texts: TokenTexts, entries: list[TokenLogprob]) -> ChoiceLogprobs:
    def top(token_id: int, logprob: float) -> TopLogprob:
        text = texts(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    content = [
        TokenLogprobEntry(
            **top(entry.token_id, entry.logprob).model_dump(),
            top_logprobs=[top(t, lp) for t, lp in _best_first(entry)],
        )
        for entry in entries
    ]
    return ChoiceLogprobs(content=content)


def completion_logprobs(
    texts: TokenTexts, entries: list[TokenLogprob], offset: int
) -> CompletionLogprobs:
    """`offset`: where the first of these tokens starts in the choice's text."""
    tokens = [texts(entry.token_id) for entry in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[{texts(t): lp for t, lp in _best_first(entry)} for entry in entries],
        text_offset=offsets,
    )
