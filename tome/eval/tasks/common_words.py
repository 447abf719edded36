"""Common-word extraction, RULER-style: a long list of words in which ten words appear ten
times as often as any other (less in short contexts, never as rarely); ask for those ten.
There is no needle, so no depth."""

import math
import random

from tome.errors import InvalidRequestError
from tome.eval.items import ItemSpec
from tome.eval.tasks.task import Task, body_budget, compose
from tome.eval.token_counter import TokenCounter
from tome.eval.word_lists import CHINESE_WORDS, ENGLISH_WORDS

COMMON = 10
RATIO = 10  # RULER's 30 against 3 occurrences

WORDS = {"en": ENGLISH_WORDS, "zh": CHINESE_WORDS}
SEPARATOR = {"en": ", ", "zh": "、"}
FULL_STOP = {"en": ".", "zh": "。"}
TEMPLATES = {
    "en": (
        "Below is a list of words. Some of them appear more often than the others. "
        "Memorize the ones that appear most often.",
        f"What are the {COMMON} most common words in the list above?",
    ),
    "zh": (
        "下面是一个词语列表，其中有些词语出现的次数比其他词语多。请记住出现次数最多的词语。",
        f"上面的列表中出现次数最多的{COMMON}个词语是哪些？",
    ),
}


def build(spec: ItemSpec, counter: TokenCounter, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    head, question = TEMPLATES[spec.language]
    separator = SEPARATOR[spec.language]
    words = list(WORDS[spec.language])
    rng.shuffle(words)
    common, others = words[:COMMON], words[COMMON:]
    cost = {word: counter.piece(separator + word) for word in words}
    budget = body_budget(counter, spec, head, question)
    listed = _word_occurrences(common, others, cost, budget, spec)
    rng.shuffle(listed)
    return compose(head, separator.join(listed) + FULL_STOP[spec.language], question), tuple(common)


def _word_occurrences(
    common: list[str], others: list[str], cost: dict[str, int], budget: int, spec: ItemSpec
) -> list[str]:
    """The common words `per_common` times each, then the others round-robin (at most
    `per_other` times each) until the budget is spent. `per_other` is the smallest count
    that lets the list fill the budget; in short contexts the common words keep at most
    half of it, so some room is left for the others."""
    common_round = sum(cost[word] for word in common)
    others_round = sum(cost[word] for word in others)
    per_other = max(1, math.ceil(budget / (RATIO * common_round + others_round)))
    per_common = min(RATIO * per_other, budget // (2 * common_round))
    if per_common <= per_other:
        raise InvalidRequestError(
            f"a {spec.context_length}-token context is too short for common_words"
        )
    listed = common * per_common
    remaining = budget - per_common * common_round
    for _ in range(per_other):
        for word in others:
            if cost[word] > remaining:
                return listed
            listed.append(word)
            remaining -= cost[word]
    return listed


COMMON_WORDS = Task("common_words", build, max_answer_tokens=160, uses_depth=False)
