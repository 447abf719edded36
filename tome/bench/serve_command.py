"""`tome bench serve`: the serving benchmark's command line."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tome.errors import TomeError

console = Console()
err_console = Console(stderr=True)


def bench_serve(
    base_url: Annotated[
        str | None,
        typer.Option(
            help="An OpenAI-compatible URL, e.g. http://host:8000/v1 (default: our "
            "engine in process, without HTTP)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="With --base-url the served model's id; else the model to load."),
    ] = None,
    api_key: Annotated[str, typer.Option(help="Sent as the bearer key.")] = "unused",
    num_prompts: Annotated[int, typer.Option(help="Requests in all.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Most requests in flight (0: no bound).")] = 16,
    request_rate: Annotated[
        float, typer.Option(help="Poisson arrivals a second (0: all at once).")
    ] = 0.0,
    prompt_len: Annotated[int, typer.Option(help="Words of each prompt.")] = 512,
    output_len: Annotated[int, typer.Option(help="Tokens of each answer.")] = 128,
    len_jitter: Annotated[float, typer.Option(help="Lengths drawn within ± this share.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the workload.")] = 0,
    workload: Annotated[
        str,
        typer.Option(
            help="uniform, or mixed: long prompts (free tier) read while short questions "
            "of the pro and free tiers arrive at --request-rate (default 1/s)."
        ),
    ] = "uniform",
    num_long_prompts: Annotated[int, typer.Option(help="Mixed: long prompts.")] = 2,
    long_prompt_len: Annotated[int, typer.Option(help="Mixed: words of a long prompt.")] = 5000,
    short_delay: Annotated[
        float, typer.Option(help="Mixed: seconds from the long prompts to the first question.")
    ] = 1.0,
    pro_api_key: Annotated[
        str | None, typer.Option(help="Mixed, over HTTP: the pro tier's key (else --api-key).")
    ] = None,
    markdown: Annotated[Path | None, typer.Option(help="Append the table as Markdown.")] = None,
) -> None:
    """Load an OpenAI-compatible server (or our bare engine): throughput, TTFT, TPOT, ITL;
    or, with --workload mixed, the short questions' TTFT per tier while long prompts are read."""
    from tome.bench.serve_load import run_serve_bench
    from tome.bench.serve_workload import ServeBenchConfig

    try:
        config = ServeBenchConfig(
            base_url=base_url,
            model=model,
            api_key=api_key,
            num_prompts=num_prompts,
            concurrency=concurrency or None,
            request_rate=request_rate or None,
            prompt_len=prompt_len,
            output_len=output_len,
            len_jitter=len_jitter,
            seed=seed,
            workload=workload,
            num_long_prompts=num_long_prompts,
            long_prompt_len=long_prompt_len,
            short_delay_s=short_delay,
            pro_api_key=pro_api_key,
        )
        report = run_serve_bench(config, console)
    except TomeError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    console.print(report.rich_table())
    for error in report.errors():
        err_console.print(f"[yellow]failed request:[/] {error}", soft_wrap=True)
    if markdown is not None:
        report.append_markdown(markdown)
