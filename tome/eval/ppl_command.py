"""`tome eval ppl`: perplexity of a text at growing context lengths, per rope setting."""

import random
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tome.cli_options import (
    DtypeOption,
    Int8ActivationsOption,
    KVMemoryOption,
    ModelOption,
    QuantizationOption,
    QuantizeHeadOption,
    parse_size,
)
from tome.errors import InvalidRequestError, TomeError
from tome.eval.config import format_length, parse_lengths
from tome.eval.items import LANGUAGES

console = Console()

TextOption = Annotated[
    Path | None, typer.Option("--text", help="A UTF-8 text file to score, a book say.")
]
BuiltinOption = Annotated[
    str | None,
    typer.Option(help="Score a built-in text instead: en or zh (the default when no --text)."),
]
LengthsOption = Annotated[str, typer.Option(help="Context lengths in tokens, e.g. 1k,2k,4k,8k.")]
RopeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--rope",
        help="none (the model's own) or a JSON rope_scaling such as "
        '\'{"rope_type":"yarn","factor":4}\'; repeat to compare settings.',
    ),
]
OutOption = Annotated[Path, typer.Option(help="Folder for ppl.json and ppl.png.")]


def ppl(
    text: TextOption = None,
    builtin: BuiltinOption = None,
    lengths: LengthsOption = "1k,2k,4k,8k",
    rope: RopeOption = None,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    kv_cache_memory: KVMemoryOption = None,
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    int8_activations: Int8ActivationsOption = False,
    out: OutOption = Path("tome-eval"),
) -> None:
    """Perplexity at growing context lengths, per rope setting; writes ppl.json and ppl.png.

    For each length L the text's first L tokens are scored: past a window the perplexity
    jumps, and each rope extension shows how far it holds up."""
    try:
        engine_args = {
            "dtype": dtype,
            "kv_cache_memory": parse_size(kv_cache_memory) if kv_cache_memory else None,
            "quantization": quantization,
            "quantize_head": quantize_head,
            "int8_activations": int8_activations,
        }
        _run(text, builtin, lengths, rope or ["none"], model, engine_args, out)
    except TomeError as exc:
        from tome.eval.cli import fail  # imported here: tome.eval.cli imports this module

        fail(exc)


def _run(
    text: Path | None,
    builtin: str | None,
    lengths_text: str,
    rope_texts: list[str],
    model: str | None,
    engine_args: dict[str, Any],
    out: Path,
) -> None:
    # Heavy imports (torch, transformers, matplotlib) only once the command runs.
    from tome.eval.perplexity import parse_rope, rope_label, sweep_perplexity
    from tome.eval.ppl_plot import write_plot
    from tome.eval.ppl_report import perplexity_table, write_json
    from tome.loader import Tokenizer, embedded_model_path, resolve_model

    lengths = sorted(parse_lengths(lengths_text))
    ropes = list({rope_label(r): r for r in map(parse_rope, rope_texts)}.values())
    if text is not None and builtin is not None:
        raise InvalidRequestError("give --text or --builtin, not both")
    tokenizer = Tokenizer.from_source(resolve_model(model))
    if text is not None:
        source, token_ids = str(text), tokenizer.encode(_read_text(text))
    else:
        language = builtin or "en"
        source, token_ids = f"builtin:{language}", _builtin_ids(tokenizer, language, lengths[-1])
    name = Path(model).name if model else embedded_model_path().stem
    console.print(f"[bold]tome eval ppl[/]: {name} on {source} ({len(token_ids)} tokens)")
    points = []
    for point in sweep_perplexity(model, token_ids, lengths, ropes, **engine_args):
        shown = "skipped" if point.perplexity is None else f"{point.perplexity:.3f}"
        note = f" ({point.note})" if point.note else ""
        console.print(f"{point.rope} at {format_length(point.context_length)}: {shown}{note}")
        points.append(point)
    console.print(perplexity_table(points))
    path = write_json(points, name, source, out)
    write_plot(points, f"perplexity of {source}, {name}", out)
    console.print(f"results in {path}, plot beside it")


def _read_text(path: Path) -> str:
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{path} is not UTF-8 text") from exc
    if not content.strip():
        raise InvalidRequestError(f"{path} holds no text")
    return content


def _builtin_ids(tokenizer, language: str, longest: int) -> list[int]:
    """Token ids of a deterministic text of filler sentences (the haystack corpus), a little
    longer than the longest window. Shuffled from a few dozen sentences, it grows more
    predictable the more of it a model can see: good for finding where a window breaks,
    not for judging a model; score a real book with --text for that."""
    from tome.eval.haystack import build_haystack
    from tome.eval.token_counter import TokenCounter

    if language not in LANGUAGES:
        raise InvalidRequestError(f"--builtin takes {' or '.join(LANGUAGES)}; got {language!r}")
    # The haystack stops within a sentence of its budget; the margin covers that sentence.
    text = build_haystack(TokenCounter(tokenizer), language, longest + 128, [], random.Random(0))
    return tokenizer.encode(text)
