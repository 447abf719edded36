"""The server's commands: `tome serve`, `tome keys create|list|revoke`, `tome usage`.
tome/cli.py registers them; the work is done in serve.py and admin.py."""

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tome.cli_options import (
    DiskKVDirOption,
    DiskKVMemoryOption,
    DtypeOption,
    HostKVMemoryOption,
    Int8ActivationsOption,
    KVDtypeOption,
    KVMemoryOption,
    MaxModelLenOption,
    QuantizationOption,
    QuantizeHeadOption,
    RopeScalingOption,
    SparsePrefillOption,
    engine_config,
    parse_size,
)
from tome.engine.config import (
    CPU_STEP_TOKENS,
    GPU_STEP_TOKENS,
    LONG_PREFILL_FRACTION,
    MIN_LONG_PREFILL_TOKENS,
    EngineConfig,
)
from tome.errors import TomeError

console = Console()
err_console = Console(stderr=True)

ModelArgument = Annotated[
    str | None,
    typer.Argument(help="A model directory, .gguf file or Hub id (default: embedded SmolLM2)."),
]
ServerConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Tiers and prices (TOML); default: built-in tiers.")
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL of the database (default: a SQLite file in the data dir)."),
]
EmbeddingModelOption = Annotated[
    str | None,
    typer.Option(
        help="A sentence-transformers model (folder or Hub id) whose embeddings retrieval "
        "fuses with BM25, so passages worded unlike the question are found too."
    ),
]

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)


def fail(exc: TomeError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    raise typer.Exit(code=1)


def serve(
    model: ModelArgument = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    config: ServerConfigOption = None,
    database_url: DatabaseUrlOption = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The model id clients ask for (default: the file's name).")
    ] = None,
    dtype: DtypeOption = "auto",
    max_model_len: MaxModelLenOption = None,
    kv_cache_memory: KVMemoryOption = None,
    kv_cache_dtype: KVDtypeOption = "auto",
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    int8_activations: Int8ActivationsOption = False,
    rope_scaling: RopeScalingOption = None,
    sparse_prefill: SparsePrefillOption = None,
    host_kv_cache_memory: HostKVMemoryOption = None,
    disk_kv_cache_dir: DiskKVDirOption = None,
    disk_kv_cache_memory: DiskKVMemoryOption = "16GiB",
    max_num_seqs: Annotated[int, typer.Option(help="Most requests computed at once.")] = 64,
    max_num_batched_tokens: Annotated[
        int | None,
        typer.Option(
            help=f"Tokens computed in one step (default: {GPU_STEP_TOKENS} on a GPU, "
            f"{CPU_STEP_TOKENS} on a CPU)."
        ),
    ] = None,
    max_num_partial_prefills: Annotated[
        int, typer.Option(help="Most prompts mid-prefill at once (short ones start anyway).")
    ] = EngineConfig.max_num_partial_prefills,
    long_prefill_token_threshold: Annotated[
        int | None,
        typer.Option(
            help="Prompts longer than this yield to shorter ones of their priority "
            f"(default: {LONG_PREFILL_FRACTION:.0%} of the window, at least "
            f"{MIN_LONG_PREFILL_TOKENS})."
        ),
    ] = None,
    prefill_min_share: Annotated[
        float, typer.Option(help="Least share of a step each prompt being prefilled gets.")
    ] = EngineConfig.prefill_min_share,
    search_url: Annotated[
        str | None, typer.Option(help="A SearXNG instance for the assistant's web search.")
    ] = None,
    embedding_model: EmbeddingModelOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """An OpenAI-compatible HTTP server (chat, completions, models, tokenize, metrics)."""
    from tome.server.serve import ServerConfig
    from tome.server.serve import serve as run_server

    try:
        engine = engine_config(
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
        server = ServerConfig(
            host,
            port,
            config,
            database_url,
            served_model_name,
            search_url=search_url,
            embedding_model=embedding_model,
            log_level=log_level,
        )
        tiers = dict(
            host_kv_cache_memory=parse_size(host_kv_cache_memory) if host_kv_cache_memory else 0,
            disk_kv_cache_dir=disk_kv_cache_dir,
            disk_kv_cache_memory=parse_size(disk_kv_cache_memory),
        )
        scheduling = dict(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_partial_prefills=max_num_partial_prefills,
            long_prefill_token_threshold=long_prefill_token_threshold,
            prefill_min_share=prefill_min_share,
        )
        run_server(replace(engine, **scheduling, **tiers), server)
    except TomeError as exc:
        fail(exc)


@keys_app.command("create")
def create_key(
    tier: Annotated[str, typer.Option(help="The key's tier, as named in the config.")],
    name: Annotated[str, typer.Option(help="A name to tell the key apart.")] = "",
    config: ServerConfigOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from tome.server import admin

    try:
        admin.create_key(tier, name, config, database_url, console)
    except TomeError as exc:
        fail(exc)


@keys_app.command("list")
def list_keys(config: ServerConfigOption = None, database_url: DatabaseUrlOption = None) -> None:
    """List keys: id, name, tier, the key's first characters, created, revoked."""
    from tome.server import admin

    try:
        admin.list_keys(config, database_url, console)
    except TomeError as exc:
        fail(exc)


@keys_app.command("revoke")
def revoke_key(
    key: Annotated[str, typer.Argument(help="The key's id, or the key itself.")],
    config: ServerConfigOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Revoke a key: its next request gets 401."""
    from tome.server import admin

    try:
        admin.revoke_key(key, config, database_url, console)
    except TomeError as exc:
        fail(exc)


def usage(
    key: Annotated[
        str | None, typer.Option("--key", help="Only this key (its id, or the key itself).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="From a date (2025-01-31) or a time ago (7d, 24h, 30m).")
    ] = None,
    config: ServerConfigOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Tokens and cost per key from the usage ledger (prices from the config)."""
    from tome.server import admin

    try:
        admin.usage_report(key, since, config, database_url, console)
    except TomeError as exc:
        fail(exc)
