"""The project's one tokenizer: transformers' fast tokenizer plus the chat template and the
set of ids that end generation."""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from jinja2 import TemplateError
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tome.errors import InvalidRequestError, ModelLoadError
from tome.loader.error_text import one_line
from tome.loader.gguf_metadata_cache import converted_metadata_dir
from tome.loader.model_source import ModelSource


@dataclass(frozen=True)
class Tokenizer:
    hf: PreTrainedTokenizerFast = field(repr=False)
    eos_token_ids: frozenset[int]

    @classmethod
    def from_source(cls, source: ModelSource) -> "Tokenizer":
        """Load from a checkpoint folder, or convert the vocabulary stored in a GGUF file."""
        hf = _load_hf_tokenizer(source)
        eos = {hf.eos_token_id} if hf.eos_token_id is not None else set()
        if source.kind == "hf_dir":
            # Instruct models often stop on more ids than the tokenizer's eos (Llama 3's
            # <|eot_id|>); generation_config.json lists them all.
            eos |= _generation_eos_ids(source.path / "generation_config.json")
        return cls(hf, frozenset(eos))

    @cached_property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return len(self.hf)

    @cached_property
    def all_special_ids(self) -> frozenset[int]:
        return frozenset(self.hf.all_special_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def count_tokens(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[int]:
        """`len(encode(text))` of every text, from one call: the Rust tokenizer encodes the
        batch on all cores, where one call per text pays Python's overhead each time."""
        if not texts:
            return []  # transformers fails on an empty batch
        batch = self.hf(
            list(texts), add_special_tokens=add_special_tokens, return_attention_mask=False
        )
        return [len(ids) for ids in batch["input_ids"]]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True
    ) -> list[int]:
        """Prompt ids for a chat, ending where the assistant's reply begins; without the
        generation prompt, a prefix that later messages continue (a cached context)."""
        if not self.hf.chat_template:
            raise InvalidRequestError(
                "this model has no chat template; use the completions API with a plain prompt"
            )
        try:
            text = self.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        # Templates are code run on the caller's messages: besides jinja's own errors they
        # fail with whatever Python raises on content of an unexpected type.
        except (TemplateError, TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"chat template rejected the messages: {one_line(exc)}"
            ) from exc
        # The template already wrote BOS and friends; adding them again would double them.
        return self.encode(text, add_special_tokens=False)


def _load_hf_tokenizer(source: ModelSource) -> PreTrainedTokenizerFast:
    try:
        if source.kind == "gguf":
            hf = AutoTokenizer.from_pretrained(converted_metadata_dir(source.path))
        else:
            hf = AutoTokenizer.from_pretrained(source.path)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load the tokenizer of {source.path}: {one_line(exc)}"
        ) from exc
    if not isinstance(hf, PreTrainedTokenizerFast):
        raise ModelLoadError(f"{source.path} has no fast (tokenizers) tokenizer")
    return hf


def _generation_eos_ids(path: Path) -> set[int]:
    if not path.is_file():
        return set()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path} is not a readable JSON object: {one_line(exc)}") from exc
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)
