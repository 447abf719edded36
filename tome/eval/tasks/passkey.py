"""Passkey retrieval (Mohtashami & Jaggi, 2023): a five-digit number hidden in filler text."""

import random

from tome.eval.haystack import Needle, build_haystack
from tome.eval.items import ItemSpec
from tome.eval.tasks.task import Task, body_budget, compose, random_number
from tome.eval.token_counter import TokenCounter

TEMPLATES = {
    "en": (
        "There is an important piece of information hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about it afterwards.",
        "The pass key is {key}. Remember it. {key} is the pass key.",
        "What is the pass key?",
    ),
    "zh": (
        "下面的大量无关文字中藏着一条重要信息。请找到并记住它，之后我会就这条信息向你提问。",
        "通行密钥是{key}。请记住它。{key}就是通行密钥。",
        "通行密钥是多少？",
    ),
}


def build(spec: ItemSpec, counter: TokenCounter, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    head, needle, question = TEMPLATES[spec.language]
    key = random_number(5)(rng)
    budget = body_budget(counter, spec, head, question)
    needles = [Needle(needle.format(key=key), spec.depth)]
    haystack = build_haystack(counter, spec.language, budget, needles, rng)
    return compose(head, haystack, question), (key,)


PASSKEY = Task("passkey", build, max_answer_tokens=48)
