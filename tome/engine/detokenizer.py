"""Incremental detokenization with stop strings.

Text is produced with the prefix_offset / read_offset technique (as in vLLM and HF's
TextStreamer): each step decodes only a short window of recent tokens twice (without and
with the new token) and keeps the difference, so a token costs O(1), not a re-decode of the
whole output. A window whose text ends in U+FFFD is an unfinished UTF-8 character (byte-level
BPE splits Chinese and emoji across tokens); its text waits for the bytes that complete it.

Released text then passes a stop-string filter that holds back any tail that could still
grow into a stop string.
"""

from typing import TYPE_CHECKING

from tome.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    import transformers

# Prompt tokens decoded as context for the first output tokens, so that tokenizers that
# drop a leading space at the start of a decode (SentencePiece) keep it, as in vLLM.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns one request's output tokens into text, one token at a time."""

    def __init__(
        self,
        tokenizer: "transformers.PreTrainedTokenizerBase",
        prompt_token_ids: list[int],
        params: SamplingParams,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = params.skip_special_tokens
        self._stop = list(params.stop)
        self.text = ""  # released so far; never contains a stop string
        self.stopped_by_string = False
        self._held = ""  # decoded, not released: it could be the start of a stop string
        self._ids = self._prompt_context(prompt_token_ids)
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = len(self._ids)  # tokens before this have had their text released

    def push(self, token_id: int) -> str:
        """Add one output token; return the new text that is safe to show now."""
        self._ids.append(token_id)
        if self.stopped_by_string:
            return ""
        return self._release(self._decode_step(final=False))

    def flush(self) -> str:
        """At finish: return everything still held back (an unfinished character included)."""
        if self.stopped_by_string:
            return ""
        released = self._release(self._decode_step(final=True))
        released += self._held
        self.text += self._held
        self._held = ""
        return released

    def _prompt_context(self, prompt_token_ids: list[int]) -> list[int]:
        context = prompt_token_ids[-PROMPT_CONTEXT_TOKENS:]
        # A prompt cut inside a character would glue its bytes to the output's; decode the
        # output on its own then.
        if self._decode(context).endswith(REPLACEMENT_CHAR):
            return []
        return list(context)

    def _decode_step(self, final: bool) -> str:
        """Text of the tokens after read_offset, or "" while it is still unfinished."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        unfinished = new_text.endswith(REPLACEMENT_CHAR) or len(new_text) <= len(prefix_text)
        if unfinished and not final:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return new_text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def _release(self, new_text: str) -> str:
        """Run new text through the stop strings; return what may be shown now."""
        pending = self._held + new_text
        stop_at = self._first_stop(pending)
        if stop_at is not None:
            self.stopped_by_string = True
            released, self._held = pending[:stop_at], ""
        else:
            keep = self._stop_prefix_len(pending)
            released, self._held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self.text += released
        return released

    def _first_stop(self, text: str) -> int | None:
        # Only held + new text can contain a stop string: everything released before had no
        # tail that could start one (see _stop_prefix_len).
        hits = [i for stop in self._stop if (i := text.find(stop)) != -1]
        return min(hits, default=None)

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        for length in range(min(len(text), max(map(len, self._stop), default=1) - 1), 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self._stop):
                return length
        return 0
