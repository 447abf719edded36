"""The `tome` command: run, chat, bench (and bench serve, bench context), plan, eval, serve,
keys, usage."""

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tome.bench.serve_command import bench_serve
from tome.bench_assistant import bench_assistant
from tome.cli_options import (
    DtypeOption,
    Int8ActivationsOption,
    KVDtypeOption,
    KVMemoryOption,
    MaxModelLenOption,
    MaxNumSeqsOption,
    MaxStateCheckpointsOption,
    MaxTokensOption,
    ModelOption,
    QuantizationOption,
    QuantizeHeadOption,
    RopeScalingOption,
    SeedOption,
    SparsePrefillOption,
    TemperatureOption,
    TopKOption,
    TopPOption,
    engine_config,
    parse_rope_scaling,
    parse_size,
    parse_sparse_prefill,
    sampling_params,
)
from tome.engine.config import EngineConfig
from tome.errors import TomeError
from tome.eval.cli import eval_app
from tome.server import cli as server_cli

app = typer.Typer(help="Tome reads whole books: a long-context LLM engine.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.command()(server_cli.serve)
app.add_typer(server_cli.keys_app, name="keys")
app.command()(server_cli.usage)
bench_app = typer.Typer(
    help="Benchmarks: ours vs transformers (no subcommand), serving, context reuse.",
    invoke_without_command=True,
)
app.add_typer(bench_app, name="bench")
bench_app.command("serve")(bench_serve)
bench_app.command("assistant")(bench_assistant)
console = Console()
err_console = Console(stderr=True)


def _fail(exc: TomeError) -> None:
    # Escaped: a message may hold brackets (pip install -e ".[embeddings]").
    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)  # one line
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
    kv_cache_dtype: KVDtypeOption = "auto",
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    int8_activations: Int8ActivationsOption = False,
    rope_scaling: RopeScalingOption = None,
    sparse_prefill: SparsePrefillOption = None,
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
        config = engine_config(
            model,
            dtype,
            max_model_len,
            kv_cache_memory,
            rope_scaling,
            kv_cache_dtype,
            sparse_prefill,
            quantization,
            quantize_head,
            int8_activations,
        )
        engine = Engine(config)
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
    kv_cache_dtype: KVDtypeOption = "auto",
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    int8_activations: Int8ActivationsOption = False,
    rope_scaling: RopeScalingOption = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    files: Annotated[
        list[Path] | None,
        typer.Option(
            "--file", help="A document to read (PDF, DOCX, EPUB, HTML, Markdown, text); repeatable."
        ),
    ] = None,
    urls: Annotated[
        list[str] | None, typer.Option("--url", help="A web page to read; repeatable.")
    ] = None,
    embedding_model: server_cli.EmbeddingModelOption = None,
) -> None:
    """An interactive multi-turn chat with streamed answers (/reset, /exit); with --file or
    --url, answers from those documents, whole when they fit the window, cited when not."""
    from tome.engine.engine import Engine
    from tome.terminal_chat import chat_loop, plain_reply
    from tome.terminal_reading import reading_embedder, reading_reply, reading_sources

    try:
        params = sampling_params(max_tokens, temperature, top_p, top_k, seed)
        sources = reading_sources(files or [], urls or [], system)
        embedder = reading_embedder(embedding_model, sources)
        config = engine_config(
            model,
            dtype,
            max_model_len,
            kv_cache_memory,
            rope_scaling,
            kv_cache_dtype,
            quantization=quantization,
            quantize_head=quantize_head,
            int8_activations=int8_activations,
        )
        engine = Engine(config)
        if sources:
            chat_loop(reading_reply(engine, params, sources, console, embedder), console)
        else:
            chat_loop(plain_reply(engine, params, system, console), console)
    except TomeError as exc:
        _fail(exc)


@bench_app.callback()
def bench(
    ctx: typer.Context,
    model: ModelOption = None,
    dummy: Annotated[
        str | None, typer.Option(help="A config.json (or its folder): random weights, any shape.")
    ] = None,
    dtype: DtypeOption = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    kv_cache_dtype: KVDtypeOption = "auto",
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    int8_activations: Int8ActivationsOption = False,
    rope_scaling: RopeScalingOption = None,
    sparse_prefill: SparsePrefillOption = None,
    prefill_lengths: Annotated[str, typer.Option(help="Prompt lengths.")] = "512,2048,8192",
    decode_batches: Annotated[str, typer.Option(help="Batch sizes to decode.")] = "1,16",
    decode_prompt_len: Annotated[
        str,
        typer.Option(
            "--decode-prompt-len",
            "--decode-prompt-lens",
            help="Prompt tokens before decoding; several, comma-separated, decode after each.",
        ),
    ] = "2048",
    decode_tokens: Annotated[int, typer.Option(help="Tokens generated per sequence.")] = 64,
    prefill_repeats: Annotated[
        int, typer.Option(help="Runs of each prefill row; the table shows their median.")
    ] = 3,
    skip_hf: Annotated[bool, typer.Option(help="Run only our engine.")] = False,
    markdown: Annotated[Path | None, typer.Option(help="Append the table as Markdown.")] = None,
    roofline: Annotated[
        bool, typer.Option(help="Roofline columns (always on with cuda) and the 80 GiB table.")
    ] = False,
    roofline_peak: Annotated[
        str, typer.Option(help="Device peak: measure (in our run's process), h100-sxm or h200.")
    ] = "measure",
    prefill_chunk: Annotated[
        int | None, typer.Option(help="Ours: most prompt tokens a step (default: whole prompts).")
    ] = None,
    gguf_weights: Annotated[
        str,
        typer.Option(
            help="Ours, for a GGUF model: auto computes from its quantized blocks where the "
            "CPU kernel runs; dequantize expands them to float at load, as transformers does."
        ),
    ] = "auto",
) -> None:
    """Our engine and transformers side by side: prefill and decode tokens/s, peak memory;
    with a roofline, the device's bound beside them."""
    if ctx.invoked_subcommand is not None:
        return
    from tome.bench import BenchConfig, run_bench
    from tome.bench.config import parse_int_list

    try:
        config = BenchConfig(
            model=model,
            dummy=dummy,
            dtype=dtype,
            device=device,
            kv_cache_dtype=kv_cache_dtype,
            quantization=quantization,
            quantize_head=quantize_head,
            int8_activations=int8_activations,
            rope_scaling=parse_rope_scaling(rope_scaling),
            sparse_prefill=parse_sparse_prefill(sparse_prefill),
            prefill_lengths=parse_int_list(prefill_lengths, "--prefill-lengths"),
            decode_batches=parse_int_list(decode_batches, "--decode-batches"),
            decode_prompt_len=parse_int_list(decode_prompt_len, "--decode-prompt-len"),
            decode_tokens=decode_tokens,
            prefill_repeats=prefill_repeats,
            skip_hf=skip_hf,
            markdown=markdown,
            roofline=roofline,
            roofline_peak=roofline_peak,
            prefill_chunk=prefill_chunk,
            gguf_weights=gguf_weights,
        )
        run_bench(config, console)
    except TomeError as exc:
        _fail(exc)


@bench_app.command("context")
def bench_context(
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    document_tokens: Annotated[int, typer.Option(help="Tokens of the document.")] = 8000,
    kv_cache_memory: KVMemoryOption = None,
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    int8_activations: Int8ActivationsOption = False,
) -> None:
    """Time to first token for a second question on an already-read document."""
    from tome import LLM
    from tome.bench.context_reuse import print_context_reuse, run_context_reuse

    try:
        config = engine_config(
            model,
            dtype,
            None,
            kv_cache_memory,
            quantization=quantization,
            quantize_head=quantize_head,
            int8_activations=int8_activations,
        )
        llm = LLM(**{**vars(config), "max_num_batched_tokens": max(document_tokens, 8192)})
        console.print(f"[bold]tome bench context[/]: {document_tokens}-token document")
        print_context_reuse(run_context_reuse(llm, document_tokens), console)
    except TomeError as exc:
        _fail(exc)


@app.command()
def plan(
    model: Annotated[
        str | None,
        typer.Argument(help="A model directory, .gguf file or Hub id (default: embedded SmolLM2)."),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="Tokens of KV cache to plan for (default: the window).")
    ] = None,
    device_memory: Annotated[
        str | None,
        typer.Option(help="e.g. 80GiB (default: this machine's free GPU memory, else free RAM)."),
    ] = None,
    dtype: Annotated[str, typer.Option(help="Weights: bfloat16, float16 or float32.")] = "bfloat16",
    dummy: Annotated[str | None, typer.Option(help="A config.json (or its folder).")] = None,
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    max_num_seqs: MaxNumSeqsOption = EngineConfig.max_num_seqs,
    max_state_checkpoints: MaxStateCheckpointsOption = None,
) -> None:
    """Memory for the weights, a hybrid model's recurrent state and the KV cache at each KV
    dtype, from the config alone."""
    from tome.engine.memory_plan import default_device_memory, load_plan_config, plan_memory
    from tome.memory_plan_table import print_memory_plan

    try:
        # The engine's own settings: the state pool is sized from them as it sizes it.
        engine = EngineConfig(
            max_num_seqs=max_num_seqs, max_state_checkpoints=max_state_checkpoints
        )
        config = load_plan_config(model, dummy)
        memory = parse_size(device_memory) if device_memory else default_device_memory()
        tokens = config.max_position_embeddings if max_model_len is None else max_model_len
        plan = plan_memory(config, dtype, tokens, memory, quantization, quantize_head, engine)
        print_memory_plan(plan, console)
    except TomeError as exc:
        _fail(exc)
