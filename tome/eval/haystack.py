"""Haystacks: filler sentences sampled up to a token budget, with needles placed at the
sentence boundaries nearest their depths."""

import bisect
import itertools
import random
from dataclasses import dataclass

from tome.errors import InvalidRequestError
from tome.eval.filler_text import CHINESE_SENTENCES, ENGLISH_SENTENCES
from tome.eval.token_counter import TokenCounter

FILLER = {"en": ENGLISH_SENTENCES, "zh": CHINESE_SENTENCES}
# What joins sentences: English puts a space after the full stop; Chinese puts nothing
# after 。！？
SEPARATOR = {"en": " ", "zh": ""}


@dataclass(frozen=True)
class Needle:
    text: str  # one or more whole sentences
    depth: float  # 0.0: before the first filler sentence, 1.0: after the last


def build_haystack(
    counter: TokenCounter, language: str, budget: int, needles: list[Needle], rng: random.Random
) -> str:
    """About `budget` tokens of filler and needles (never more, by the pieces' counts).
    Needles at the same boundary keep their order in `needles`."""
    separator = SEPARATOR[language]
    needle_tokens = sum(counter.piece(separator + needle.text) for needle in needles)
    if needle_tokens > budget:
        raise InvalidRequestError(
            f"the needles alone take {needle_tokens} tokens; raise the context length"
        )
    sentences = _filler(counter, language, budget - needle_tokens, rng)
    costs = (counter.piece(separator + sentence) for sentence in sentences)
    offsets = list(itertools.accumulate(costs, initial=0))
    at_boundary: list[list[str]] = [[] for _ in offsets]
    for needle in needles:
        at_boundary[_nearest_boundary(offsets, needle.depth)].append(needle.text)
    parts = at_boundary[0]
    for sentence, needles_after in zip(sentences, at_boundary[1:], strict=True):
        parts += [sentence, *needles_after]
    return separator.join(parts)


def _filler(counter: TokenCounter, language: str, budget: int, rng: random.Random) -> list[str]:
    separator = SEPARATOR[language]
    cost = {sentence: counter.piece(separator + sentence) for sentence in FILLER[language]}
    shortest, longest = min(cost.values()), max(cost.values())
    sentences: list[str] = []
    remaining = budget
    while remaining >= shortest:
        # Near the end only the sentences that still fit are drawn, so the haystack ends
        # within one short sentence of its budget.
        pool = (
            FILLER[language] if remaining >= longest else [s for s in cost if cost[s] <= remaining]
        )
        sentence = rng.choice(pool)
        sentences.append(sentence)
        remaining -= cost[sentence]
    return sentences


def _nearest_boundary(offsets: list[int], depth: float) -> int:
    """Index of the boundary whose token offset is nearest depth x the haystack's length."""
    target = depth * offsets[-1]
    right = bisect.bisect_left(offsets, target)
    if right == 0:
        return 0
    if right == len(offsets):
        return len(offsets) - 1
    return right if offsets[right] - target < target - offsets[right - 1] else right - 1
