"""run_eval: check the grid fits the backend, run it, write the JSON report and heatmaps,
print a summary table."""

from pathlib import Path

from rich.console import Console
from rich.table import Table

from tome.errors import PromptTooLongError
from tome.eval.config import EvalConfig, format_length
from tome.eval.heatmap import write_heatmaps
from tome.eval.report import build_report, mean_scores, write_report
from tome.eval.runner import Backend, ItemResult, run_grid
from tome.eval.token_counter import TokenCounter


def run_eval(config: EvalConfig, backend: Backend, console: Console | None = None) -> Path:
    """Returns the path of the JSON report; the heatmaps lie beside it."""
    console = console or Console()
    check_fits(config, backend)
    console.print(f"[bold]tome eval[/]: {backend.name}; {', '.join(config.tasks)}")

    def progress(length: int, batch: list[ItemResult]) -> None:
        mean = sum(r.score for r in batch) / len(batch)
        console.print(f"{format_length(length)} tokens: {len(batch)} items, mean score {mean:.2f}")

    results = run_grid(config, TokenCounter(backend.encoder), backend, progress)
    path = write_report(build_report(config, backend.name, results), config.out)
    write_heatmaps(results, config.out, backend.name)
    console.print(_summary_table(config, results))
    console.print(f"scores in {path}, heatmaps beside it")
    return path


def check_fits(config: EvalConfig, backend: Backend) -> None:
    """The longest context plus the longest answer must fit the backend, where it is known."""
    limit = backend.window_tokens
    longest = max(config.lengths)
    if limit is not None and longest + config.max_answer_tokens > limit:
        raise PromptTooLongError(
            f"a {longest}-token context plus {config.max_answer_tokens} answer tokens does not "
            f"fit {backend.name}, which takes {limit} tokens of prompt and answer after its chat "
            "template; lower --lengths or raise --max-model-len / --kv-cache-memory"
        )


def _summary_table(config: EvalConfig, results: list[ItemResult]) -> Table:
    means = mean_scores(results, lambda r: (r.spec.task, r.spec.language, r.spec.context_length))
    table = Table(title="mean score per task, language and context length")
    table.add_column("task")
    table.add_column("language")
    for length in config.lengths:
        table.add_column(format_length(length), justify="right")
    for task in config.tasks:
        for language in config.languages:
            scores = [means[(task, language, n)]["score"] for n in config.lengths]
            table.add_row(task, language, *(f"{s:.2f}" for s in scores))
    return table
