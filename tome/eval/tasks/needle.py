"""Needle in a haystack, RULER-style: key/value needles ("one of the special magic numbers
for lantern is: 4817263") hidden in filler text.

- niah_single: one needle, ask for its value.
- niah_multikey: four keys, one value each; ask one key (the others are distractors).
- niah_multivalue: one key with four values; ask for all of them.

The asked needle (the first value in multi-value) sits at the item's depth; the others
sit at random depths.
"""

import random
from dataclasses import dataclass
from functools import partial

from tome.eval.haystack import Needle, build_haystack
from tome.eval.items import ItemSpec
from tome.eval.tasks.task import Task, body_budget, compose, distinct, random_number
from tome.eval.token_counter import TokenCounter
from tome.eval.word_lists import CHINESE_WORDS, ENGLISH_WORDS

VALUE_DIGITS = 7
MANY = 4  # keys in multi-key, values in multi-value (RULER's defaults)


@dataclass(frozen=True)
class NeedleTemplates:
    head: str
    needle: str
    ask_one: str
    ask_all: str
    keys: tuple[str, ...]


TEMPLATES = {
    "en": NeedleTemplates(
        head="Some special magic numbers are hidden within the following text. Make sure to "
        "memorize them. I will quiz you about the numbers afterwards.",
        needle="One of the special magic numbers for {key} is: {value}.",
        ask_one="What is the special magic number for {key} mentioned in the provided text?",
        ask_all="What are all the special magic numbers for {key} mentioned in the provided text?",
        keys=ENGLISH_WORDS,
    ),
    "zh": NeedleTemplates(
        head="下面的文字中藏着一些特殊的魔法数字。请务必记住它们，之后我会就这些数字向你提问。",
        needle="「{key}」的特殊魔法数字之一是：{value}。",
        ask_one="上文中提到的「{key}」的特殊魔法数字是多少？",
        ask_all="上文中提到的「{key}」的所有特殊魔法数字分别是什么？",
        keys=CHINESE_WORDS,
    ),
}


def build(
    spec: ItemSpec, counter: TokenCounter, rng: random.Random, num_keys: int, num_values: int
) -> tuple[str, tuple[str, ...]]:
    templates = TEMPLATES[spec.language]
    keys = distinct(rng, lambda r: r.choice(templates.keys), num_keys)
    values = distinct(rng, random_number(VALUE_DIGITS), num_keys * num_values)
    pairs = [(keys[i // num_values], value) for i, value in enumerate(values)]
    depths = [spec.depth, *(rng.random() for _ in pairs[1:])]
    needles = [
        Needle(templates.needle.format(key=key, value=value), depth)
        for (key, value), depth in zip(pairs, depths, strict=True)
    ]
    question = (templates.ask_all if num_values > 1 else templates.ask_one).format(key=keys[0])
    budget = body_budget(counter, spec, templates.head, question)
    haystack = build_haystack(counter, spec.language, budget, needles, rng)
    return compose(templates.head, haystack, question), tuple(values[:num_values])


NIAH_SINGLE = Task("niah_single", partial(build, num_keys=1, num_values=1), max_answer_tokens=64)
NIAH_MULTIKEY = Task(
    "niah_multikey", partial(build, num_keys=MANY, num_values=1), max_answer_tokens=64
)
NIAH_MULTIVALUE = Task(
    "niah_multivalue", partial(build, num_keys=1, num_values=MANY), max_answer_tokens=128
)
