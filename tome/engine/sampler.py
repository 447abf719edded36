"""The sampler: one step's logits for a batch of sequences -> one token each.

Order as in vLLM: penalties, then (random rows only) temperature, top-k, top-p, min-p, draw.
Greedy rows take the argmax of the penalized logits. Logprobs describe the raw model
distribution, before any of that.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from tome.engine.outputs import TokenLogprob
from tome.engine.sampling_params import SamplingParams


class SamplingRow(Protocol):
    """What the sampler reads from a sequence; the engine's Sequence objects satisfy it."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None  # seeded once per request when params.seed is set


@dataclass
class SampledToken:
    token_id: int
    logprob: TokenLogprob | None  # only when params.logprobs is not None


def sample(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[SampledToken]:
    """Pick one token per row of `logits` ([len(rows), vocab], any float dtype)."""
    raw = logits.float()
    penalized = apply_penalties(raw, rows)
    token_ids = _greedy_or_zeros(penalized, rows)
    random_rows = [i for i, row in enumerate(rows) if not row.params.greedy]
    if random_rows:
        index = torch.tensor(random_rows, device=logits.device)
        chosen = [rows[i] for i in random_rows]
        probs = _filtered_probs(penalized[index], [row.params for row in chosen])
        token_ids[index] = _draw(probs, [row.generator for row in chosen])
    logprobs = _logprobs(raw, token_ids, rows)
    return [
        SampledToken(token_id, logprob)
        for token_id, logprob in zip(token_ids.tolist(), logprobs, strict=True)
    ]


def _greedy_or_zeros(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    # One argmax for the whole batch when anything is greedy; random rows overwrite theirs.
    if any(row.params.greedy for row in rows):
        return logits.argmax(dim=-1)
    return torch.zeros(len(rows), dtype=torch.long, device=logits.device)


# --- penalties ---------------------------------------------------------------------------


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Repetition penalty (HF-style, over prompt + output) and OpenAI presence/frequency
    penalties (over output). Returns a new tensor; `logits` is left untouched."""
    penalized_rows = [i for i, row in enumerate(rows) if row.params.needs_penalties]
    if not penalized_rows:
        return logits
    device, vocab = logits.device, logits.shape[-1]
    params = [rows[i].params for i in penalized_rows]
    output_counts = _token_counts([rows[i].output_token_ids for i in penalized_rows], vocab, device)
    prompt_counts = _token_counts([rows[i].prompt_token_ids for i in penalized_rows], vocab, device)
    seen = (output_counts > 0) | (prompt_counts > 0)
    repetition = _column([p.repetition_penalty for p in params], device)
    frequency = _column([p.frequency_penalty for p in params], device)
    presence = _column([p.presence_penalty for p in params], device)

    index = torch.tensor(penalized_rows, device=device)
    x = logits[index]
    x = torch.where(seen, torch.where(x > 0, x / repetition, x * repetition), x)
    x = x - frequency * output_counts - presence * (output_counts > 0).float()
    out = logits.clone()
    out[index] = x
    return out


def _token_counts(token_lists: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[len(token_lists), vocab] float counts of each token id per list."""
    lengths = torch.tensor([len(ids) for ids in token_lists], device=device)
    flat = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.long, device=device)
    row_of = torch.repeat_interleave(torch.arange(len(token_lists), device=device), lengths)
    counts = torch.zeros(len(token_lists), vocab, device=device)
    counts.index_put_((row_of, flat), torch.ones_like(flat, dtype=counts.dtype), accumulate=True)
    return counts


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


# --- filters and the draw ----------------------------------------------------------------


def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p; returns the probabilities to draw from."""
    device = logits.device
    logits = logits / _column([p.temperature for p in params], device)
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        logits = _top_k_top_p(logits, [p.top_k for p in params], [p.top_p for p in params])
    if any(p.min_p > 0.0 for p in params):
        # p < min_p * p_max  <=>  logit < max_logit + log(min_p); no softmax needed.
        min_p = _column([p.min_p for p in params], device)
        floor = logits.max(dim=-1, keepdim=True).values + min_p.log()
        logits = logits.masked_fill(logits < floor, float("-inf"))
    return logits.softmax(dim=-1)


def _top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask logits outside each row's top-k, then outside its top-p nucleus (k=0, p=1: off)."""
    device, vocab = logits.device, logits.shape[-1]
    ordered, order = logits.sort(dim=-1, descending=True)
    k = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_k], device=device)
    kth = ordered.gather(1, (k - 1).unsqueeze(1))
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    probs = ordered.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass
    # before it already does. The first token always survives. p=1 rows get an infinite
    # bound so float rounding in the cumsum cannot trim their tail.
    mass_before = probs.cumsum(dim=-1) - probs
    bound = _column([p if p < 1.0 else float("inf") for p in top_p], device)
    ordered = ordered.masked_fill(mass_before >= bound, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ordered)


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row by the exponential race: argmax(p / E), E ~ Exp(1), which picks
    index i with probability p_i. Seeded rows draw their noise from their own generator,
    so their tokens do not depend on which other rows share the batch."""
    noise = torch.empty_like(probs)
    if any(g is None for g in generators):
        noise.exponential_()  # global RNG; seeded rows are overwritten below
    vocab = probs.shape[-1]
    for i, generator in enumerate(generators):
        if generator is not None:
            # Drawn where the generator lives (the engine seeds a CPU one), so a seed gives
            # the same tokens on every device.
            own = torch.empty(vocab, device=generator.device).exponential_(generator=generator)
            noise[i] = own.to(probs.device)
    return (probs / noise).argmax(dim=-1)


# --- logprobs ----------------------------------------------------------------------------


def _logprobs(
    raw: torch.Tensor, token_ids: torch.Tensor, rows: Sequence[SamplingRow]
) -> list[TokenLogprob | None]:
    """Log-probabilities from the raw logits: the sampled token's and the top alternatives'."""
    wanted = [(i, k) for i, row in enumerate(rows) if (k := row.params.logprobs) is not None]
    result: list[TokenLogprob | None] = [None] * len(rows)
    if not wanted:
        return result
    index = torch.tensor([i for i, _ in wanted], device=raw.device)
    logprobs = raw[index].log_softmax(dim=-1)
    chosen_ids = token_ids[index].unsqueeze(1)
    chosen = logprobs.gather(1, chosen_ids).squeeze(1).tolist()
    top = logprobs.topk(max(k for _, k in wanted), dim=-1)  # sorted, best first
    ids, values = top.indices.tolist(), top.values.tolist()
    tokens = chosen_ids.squeeze(1).tolist()
    for j, (i, k) in enumerate(wanted):
        alternatives = dict(zip(ids[j][:k], values[j][:k], strict=True))
        result[i] = TokenLogprob(tokens[j], chosen[j], alternatives)
    return result
