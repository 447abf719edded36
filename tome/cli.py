"""The `tome` command: run, chat, bench."""

import logging
from pathlib import Path
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
    err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)  # one line
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


@app.command()
def bench(
    model: ModelOption = None,
    dummy: Annotated[
        str | None, typer.Option(help="A config.json (or its folder): random weights, any shape.")
    ] = None,
    dtype: DtypeOption = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    prefill_lengths: Annotated[str, typer.Option(help="Prompt lengths.")] = "512,2048,8192",
    decode_batches: Annotated[str, typer.Option(help="Batch sizes to decode.")] = "1,16",
    decode_prompt_len: Annotated[int, typer.Option(help="Prompt tokens before decoding.")] = 2048,
    decode_tokens: Annotated[int, typer.Option(help="Tokens generated per sequence.")] = 64,
    skip_hf: Annotated[bool, typer.Option(help="Run only our engine.")] = False,
    markdown: Annotated[Path | None, typer.Option(help="Append the table as Markdown.")] = None,
) -> None:
    """Our engine and transformers side by side: prefill and decode tokens/s, peak memory."""
    from tome.bench import BenchConfig, run_bench
    from tome.bench.config import parse_int_list

    try:
        config = BenchConfig(
            model=model,
            dummy=dummy,
            dtype=dtype,
            device=device,
            prefill_lengths=parse_int_list(prefill_lengths, "--prefill-lengths"),
            decode_batches=parse_int_list(decode_batches, "--decode-batches"),
            decode_prompt_len=decode_prompt_len,
            decode_tokens=decode_tokens,
            skip_hf=skip_hf,
            markdown=markdown,
        )
        run_bench(config, console)
    except TomeError as exc:
        _fail(exc)
