"""The `tome` command: run, chat, bench."""

import logging
from typing import Annotated

import typer
from rich.console import Console

from tome.cli_options import (
    DtypeOption,
    KVMemoryOption,
    MaxModelLenOption,
    MaxTokensOption,
    ModelOption,
    SeedOption,
    TemperatureOption,
    TopKOption,
    TopPOption,
    engine_config,
    sampling_params,
)
from tome.errors import TomeError

app = typer.Typer(help="Tome reads whole books: a long-context LLM engine.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _fail(exc: TomeError) -> None:
    err_console.print(f"[bold red]error:[/] {exc.message}")
    raise typer.Exit(code=1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: ModelOption = None,
    max_tokens: MaxTokensOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    top_k: TopKOption = 0,
    seed: SeedOption = None,
    dtype: DtypeOption = "auto",
    max_model_len: MaxModelLenOption = None,
    kv_cache_memory: KVMemoryOption = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    raw: Annotated[
        bool, typer.Option(help="Send the prompt as is, without the chat template.")
    ] = False,
) -> None:
    """Stream one answer to PROMPT."""
    from tome.engine.engine import Engine
    from tome.terminal_chat import stream_answer

    try:
        params = sampling_params(max_tokens, temperature, top_p, top_k, seed)
        engine = Engine(engine_config(model, dtype, max_model_len, kv_cache_memory))
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        ids = prompt if raw else engine.tokenizer.apply_chat_template(messages)
        stream_answer(engine, ids, params, console)
    except TomeError as exc:
        _fail(exc)


@app.command()
def chat(
    model: ModelOption = None,
    max_tokens: MaxTokensOption = 512,
    temperature: TemperatureOption = 0.7,
    top_p: TopPOption = 0.95,
    top_k: TopKOption = 0,
    seed: SeedOption = None,
    dtype: DtypeOption = "auto",
    max_model_len: MaxModelLenOption = None,
    kv_cache_memory: KVMemoryOption = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
) -> None:
    """An interactive multi-turn chat with streamed answers (/reset, /exit)."""
    from tome.engine.engine import Engine
    from tome.terminal_chat import chat_loop

    try:
        params = sampling_params(max_tokens, temperature, top_p, top_k, seed)
        engine = Engine(engine_config(model, dtype, max_model_len, kv_cache_memory))
        chat_loop(engine, params, system, console)
    except TomeError as exc:
        _fail(exc)
