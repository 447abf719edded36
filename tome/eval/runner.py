"""run_grid: every cell of context lengths x tasks x languages x depths, `samples` items
each, answered by an answer function and scored. Items of one length go to the answer
function together, so an engine can batch them."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tome.eval.config import EvalConfig
from tome.eval.items import EvalItem, ItemSpec, TextEncoder, item_seed
from tome.eval.scoring import score
from tome.eval.tasks import TASKS, generate_item
from tome.eval.token_counter import TokenCounter

# Answers for a batch of items, in order.
AnswerFn = Callable[[Sequence[EvalItem]], list[str]]


class Backend(Protocol):
    """What answers the items: our engine in process, or an OpenAI-compatible endpoint."""

    name: str  # the model, for reports
    encoder: TextEncoder  # measures context lengths
    # Room for a user message plus its answer: the window (or the KV pool, if smaller) less
    # the chat template's own tokens. None: unknown.
    window_tokens: int | None

    def __call__(self, items: Sequence[EvalItem]) -> list[str]: ...


@dataclass(frozen=True)
class ItemResult:
    spec: ItemSpec
    prompt_tokens: int
    expected: tuple[str, ...]
    output: str
    score: float


def grid_specs(config: EvalConfig, length: int) -> list[ItemSpec]:
    """Every item of one context length; tasks without a needle get one row, depth None."""
    specs = []
    for task in config.tasks:
        depths = config.depths if TASKS[task].uses_depth else (None,)
        for language in config.languages:
            for depth in depths:
                for sample in range(config.samples):
                    seed = item_seed(config.seed, task, language, length, depth, sample)
                    specs.append(ItemSpec(task, language, length, depth, sample, seed))
    return specs


def run_grid(
    config: EvalConfig,
    counter: TokenCounter,
    answer: AnswerFn,
    on_length_done: Callable[[int, list[ItemResult]], None] | None = None,
) -> list[ItemResult]:
    results: list[ItemResult] = []
    for length in config.lengths:
        items = [generate_item(spec, counter) for spec in grid_specs(config, length)]
        outputs = answer(items)
        batch = [
            ItemResult(
                item.spec,
                item.prompt_tokens,
                item.answers,
                output,
                score(output, item.answers, item.spec.language),
            )
            for item, output in zip(items, outputs, strict=True)
        ]
        results += batch
        if on_length_done is not None:
            on_length_done(length, batch)
    return results
