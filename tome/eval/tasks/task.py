"""Task: how one kind of item is built, and the prompt layout every task shares."""

import random
from collections.abc import Callable
from dataclasses import dataclass

from tome.errors import InvalidRequestError
from tome.eval.items import ItemSpec
from tome.eval.token_counter import TokenCounter

# Builds (prompt, expected answers) for a spec, drawing every random choice from the rng.
Builder = Callable[[ItemSpec, TokenCounter, random.Random], tuple[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Task:
    name: str
    build: Builder
    max_answer_tokens: int  # room for a chatty answer, in Chinese too
    uses_depth: bool = True  # False: the item has no needle, depth means nothing


def compose(head: str, body: str, question: str) -> str:
    """The user message: instructions, the long text, then the question."""
    return f"{head}\n\n{body}\n\n{question}"


def body_budget(counter: TokenCounter, spec: ItemSpec, head: str, question: str) -> int:
    """Tokens left for the long text once the instructions and question are counted."""
    budget = spec.context_length - counter.count(f"{head}\n\n") - counter.count(f"\n\n{question}")
    if budget <= 0:
        raise InvalidRequestError(
            f"a {spec.context_length}-token context is too short for {spec.task}"
        )
    return budget


def distinct(rng: random.Random, draw: Callable[[random.Random], str], count: int) -> list[str]:
    """`count` different values from `draw`, in the order drawn."""
    values: list[str] = []
    while len(values) < count:
        value = draw(rng)
        if value not in values:
            values.append(value)
    return values


def random_number(digits: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(10 ** (digits - 1), 10**digits - 1))
