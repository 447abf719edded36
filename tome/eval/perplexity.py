"""Perplexity of a text at growing context lengths, for each rope setting: where a model's
window ends, and how well each rope extension holds up past it.

A window of length L is the text's first L tokens, sent as one prompt with prompt logprobs.
Its score is the mean negative log-likelihood of the tokens in the window's second half
(positions L//2 to L-1), so every scored token sees at least L/2 tokens of the text: the
number reflects the far end of the window, where a broken extension shows first, rather
than being diluted by the easy short-context start. Perplexity = exp(mean NLL).

Each length is its own request (not a slice of the longest one) because some rope types
(dynamic NTK) scale positions by the length of the sequence."""

import gc
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tome.engine.outputs import TokenLogprob
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError, PromptTooLongError
from tome.llm import LLM
from tome.models.rope_override import check_rope_override

RopeSetting = dict[str, Any] | None  # None: the checkpoint's own rope


@dataclass(frozen=True)
class PerplexityPoint:
    rope: str  # the rope setting's label
    rope_scaling: RopeSetting
    window: int  # the engine's window (max_model_len) with this setting
    context_length: int
    perplexity: float | None  # None: skipped, see note
    scored_tokens: int
    note: str = ""


def rope_label(rope: RopeSetting) -> str:
    """A short name for tables and legends: 'none', 'yarn x4', 'yarn x4 beta_fast=16'."""
    if rope is None:
        return "none"
    rope_type = rope.get("rope_type", rope.get("type"))
    extra = {k: v for k, v in rope.items() if k not in ("rope_type", "type", "factor")}
    return " ".join(
        [f"{rope_type} x{_short(rope['factor'])}", *(f"{k}={_short(v)}" for k, v in extra.items())]
    )


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} values]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_rope(text: str) -> RopeSetting:
    """'none' -> None; a JSON object such as '{"rope_type":"yarn","factor":4}' -> that dict,
    checked as EngineConfig checks it, so a bad setting fails before any model runs."""
    if text.strip().lower() == "none":
        return None
    try:
        rope = json.loads(text)
    except json.JSONDecodeError:
        rope = None
    if not isinstance(rope, dict):
        raise InvalidRequestError(
            f'--rope takes none or a JSON object like \'{{"rope_type":"yarn","factor":4}}\';'
            f" got {text!r}"
        )
    return check_rope_override(rope)


def scored_positions(length: int) -> range:
    """Positions of a window of `length` tokens whose NLL is averaged: its second half."""
    return range(length // 2, length)


def window_nll(prompt_logprobs: list[TokenLogprob | None], length: int) -> float:
    """Mean negative log-likelihood over the scored positions of one window."""
    positions = scored_positions(length)
    return -sum(prompt_logprobs[p].logprob for p in positions) / len(positions)


def sweep_perplexity(
    model: str | None,
    token_ids: list[int],
    lengths: list[int],
    ropes: list[RopeSetting],
    **engine_args: Any,
) -> Iterator[PerplexityPoint]:
    """One point per rope setting and length, in that order. A length longer than the text,
    or one the engine refuses (past the setting's window or the KV pool), is skipped with a
    note saying why."""
    if any(length < 2 for length in lengths):
        raise InvalidRequestError("context lengths must be at least 2 tokens")
    for rope in ropes:
        # One sequence at a time: the KV pool is sized for one window, not for a batch.
        llm = LLM(model, rope_scaling=rope, max_num_seqs=1, **engine_args)
        for length in lengths:
            yield _point(llm, rope, token_ids, length)
        del llm
        # Free this setting's model and KV pool before the next one is allocated.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _point(llm: LLM, rope: RopeSetting, token_ids: list[int], length: int) -> PerplexityPoint:
    setting = (rope_label(rope), rope, llm.engine.max_model_len, length)
    if length > len(token_ids):
        return PerplexityPoint(*setting, None, 0, f"the text has only {len(token_ids)} tokens")
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    try:
        out = llm.generate(token_ids[:length], params)[0]
    except PromptTooLongError as exc:  # past the window or the KV pool: the engine says which
        return PerplexityPoint(*setting, None, 0, exc.message)
    nll = window_nll(out.prompt_logprobs, length)
    return PerplexityPoint(*setting, math.exp(nll), len(scored_positions(length)))
