"""The task registry and `generate_item`, which turns a grid spec into a prompt."""

import random

from tome.errors import InvalidRequestError
from tome.eval.items import EvalItem, ItemSpec
from tome.eval.tasks.common_words import COMMON_WORDS
from tome.eval.tasks.needle import NIAH_MULTIKEY, NIAH_MULTIVALUE, NIAH_SINGLE
from tome.eval.tasks.passkey import PASSKEY
from tome.eval.tasks.task import Task
from tome.eval.tasks.variable_tracking import VARIABLE_TRACKING
from tome.eval.token_counter import TokenCounter

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        PASSKEY,
        NIAH_SINGLE,
        NIAH_MULTIKEY,
        NIAH_MULTIVALUE,
        VARIABLE_TRACKING,
        COMMON_WORDS,
    )
}


def generate_item(spec: ItemSpec, counter: TokenCounter) -> EvalItem:
    """The item for `spec`: the same spec (seed included) always gives the same item."""
    task = TASKS[spec.task]
    if task.uses_depth and spec.depth is None:
        raise InvalidRequestError(f"{spec.task} needs a needle depth")
    prompt, answers = task.build(spec, counter, random.Random(spec.seed))
    return EvalItem(spec, prompt, answers, counter.count(prompt), task.max_answer_tokens)


__all__ = ["TASKS", "Task", "generate_item"]
