"""Variable tracking, RULER-style: chains of assignments (VAR QXBTR = 48213, then
VAR KLMWE = VAR QXBTR, ...) hidden in filler text; ask which variables hold the value.

Two chains with different values: the asked one starts at the item's depth and goes on
in order at random later depths; the other is spread at random depths as a distractor.
"""

import random
import string

from tome.eval.haystack import Needle, build_haystack
from tome.eval.items import ItemSpec
from tome.eval.tasks.task import Task, body_budget, compose, distinct, random_number
from tome.eval.token_counter import TokenCounter

HOPS = 4  # assignments after the first: five variables hold the value (RULER's default)
CHAINS = 2
VALUE_DIGITS = 5

TEMPLATES = {
    "en": (
        "Memorize and track the chains of variable assignments hidden in the following text.",
        "VAR {name} = {value}.",
        "Find all variables that are assigned the value {value} in the text above.",
    ),
    "zh": (
        "请记住并追踪下文中隐藏的变量赋值链。",
        "VAR {name} = {value}。",
        "请找出上文中所有被赋值为 {value} 的变量。",
    ),
}


def _variable_name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


def _chain(names: list[str], value: str, statement: str) -> list[str]:
    """The value, then each variable assigned from the one before it."""
    sources = [value, *(f"VAR {name}" for name in names[:-1])]
    return [
        statement.format(name=name, value=src) for name, src in zip(names, sources, strict=True)
    ]


def build(spec: ItemSpec, counter: TokenCounter, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    head, statement, question_template = TEMPLATES[spec.language]
    names = distinct(rng, _variable_name, CHAINS * (HOPS + 1))
    values = distinct(rng, random_number(VALUE_DIGITS), CHAINS)
    asked, distractor = names[: HOPS + 1], names[HOPS + 1 :]
    asked_depths = [spec.depth, *sorted(rng.uniform(spec.depth, 1.0) for _ in range(HOPS))]
    distractor_depths = sorted(rng.random() for _ in distractor)
    needles = [
        Needle(text, depth)
        for chain, depths in (
            (_chain(asked, values[0], statement), asked_depths),
            (_chain(distractor, values[1], statement), distractor_depths),
        )
        for text, depth in zip(chain, depths, strict=True)
    ]
    question = question_template.format(value=values[0])
    budget = body_budget(counter, spec, head, question)
    haystack = build_haystack(counter, spec.language, budget, needles, rng)
    return compose(head, haystack, question), tuple(asked)


VARIABLE_TRACKING = Task("variable_tracking", build, max_answer_tokens=96)
