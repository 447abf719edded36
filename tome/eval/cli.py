"""`tome eval`: long-context evaluation. `tome eval run` runs the task grid against our
engine in process or against an OpenAI-compatible endpoint (--base-url)."""

import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tome.cli_options import (
    DtypeOption,
    Int8ActivationsOption,
    KVDtypeOption,
    KVMemoryOption,
    MaxModelLenOption,
    QuantizationOption,
    QuantizeHeadOption,
    RopeScalingOption,
    SparsePrefillOption,
    engine_config,
)
from tome.engine.config import EngineConfig
from tome.errors import InvalidRequestError, TomeError
from tome.eval.config import EvalConfig, parse_depths, parse_lengths, parse_names
from tome.eval.ppl_command import ppl
from tome.eval.tasks import TASKS

eval_app = typer.Typer(
    help="Long-context evaluation: the task grid (passkey, needles, RULER-style) and perplexity.",
    no_args_is_help=True,
)
eval_app.command()(ppl)
console = Console()
err_console = Console(stderr=True)


def fail(exc: TomeError) -> None:
    """One error line on stderr, exit 1 (shared by the eval commands)."""
    err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
    raise typer.Exit(code=1)


@eval_app.command()
def run(
    tasks: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(TASKS)}.")] = ",".join(
        TASKS
    ),
    languages: Annotated[str, typer.Option(help="Comma-separated: en, zh.")] = "en,zh",
    lengths: Annotated[str, typer.Option(help="Context lengths in tokens, e.g. 1k,4k,32k.")] = (
        "1k,2k,4k"
    ),
    depths: Annotated[str, typer.Option(help="Needle depths, fractions 0 to 1.")] = (
        "0,0.25,0.5,0.75,1"
    ),
    samples: Annotated[int, typer.Option(help="Items per grid cell.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of every generated item.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for scores.json and the heatmaps.")] = Path(
        "tome-eval"
    ),
    model: Annotated[
        str | None,
        typer.Option(
            help="Our engine: a model directory, .gguf file or Hub id (default: embedded "
            "SmolLM2). With --base-url: the served model's name."
        ),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible endpoint, e.g. http://host:8000/v1.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="OPENAI_API_KEY", help="The endpoint's API key.")
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="With --base-url: the model whose tokenizer measures lengths."),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="With --base-url: requests at once.")] = 4,
    dtype: DtypeOption = "auto",
    max_model_len: MaxModelLenOption = None,
    kv_cache_memory: KVMemoryOption = None,
    kv_cache_dtype: KVDtypeOption = "auto",
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    int8_activations: Int8ActivationsOption = False,
    rope_scaling: RopeScalingOption = None,
    sparse_prefill: SparsePrefillOption = None,
) -> None:
    """Run the task grid (lengths x depths x tasks x languages) and write scores and heatmaps."""
    try:
        config = EvalConfig(
            tasks=parse_names(tasks),
            languages=parse_names(languages),
            lengths=parse_lengths(lengths),
            depths=parse_depths(depths),
            samples=samples,
            seed=seed,
            out=out,
        )
        _require("matplotlib")
        if base_url is None:
            backend = _engine_backend(
                engine_config(
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
            )
        else:
            _require("openai")
            backend = _endpoint_backend(base_url, api_key, model, tokenizer, concurrency)
        from tome.eval.main import run_eval  # draws with matplotlib, checked above

        run_eval(config, backend, console)
    except TomeError as exc:
        fail(exc)


def _engine_backend(config: EngineConfig):
    from tome.eval.engine_backend import EngineBackend
    from tome.llm import LLM

    return EngineBackend(LLM(**vars(config)))


def _endpoint_backend(
    base_url: str, api_key: str | None, model: str | None, tokenizer: str | None, concurrency: int
):
    from tome.eval.endpoint_backend import EndpointBackend
    from tome.loader import Tokenizer, resolve_model

    if model is None:
        raise InvalidRequestError("--base-url needs --model, the name the endpoint serves")
    encoder = Tokenizer.from_source(resolve_model(tokenizer))
    return EndpointBackend.connect(base_url, api_key, model, encoder, concurrency)


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise InvalidRequestError(f"tome eval needs {module}: pip install 'tome[eval]'")
