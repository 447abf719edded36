"""Options shared by the CLI commands, and their conversion into config objects."""

import re
from typing import Annotated

import typer

from tome.engine.config import EngineConfig
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError

ModelOption = Annotated[
    str | None,
    typer.Option(help="A model directory, .gguf file or Hub id (default: embedded SmolLM2)."),
]
MaxTokensOption = Annotated[int, typer.Option(help="Most tokens to generate.")]
TemperatureOption = Annotated[float, typer.Option(help="0 = greedy.")]
TopPOption = Annotated[float, typer.Option(help="Nucleus sampling mass.")]
TopKOption = Annotated[int, typer.Option(help="Sample among the k likeliest (0 = off).")]
SeedOption = Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")]
DtypeOption = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]
MaxModelLenOption = Annotated[int | None, typer.Option(help="Context window in tokens.")]
KVMemoryOption = Annotated[
    str | None, typer.Option(help="KV cache budget, e.g. 2GiB or 500MB (default: a share of RAM).")
]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_size(text: str) -> int:
    """'2GiB' -> 2147483648. Plain numbers are bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidRequestError(f"cannot read {text!r} as a size; write e.g. 2GiB or 512MB")
    return int(float(match.group(1)) * _UNITS[unit])


def engine_config(
    model: str | None, dtype: str, max_model_len: int | None, kv_cache_memory: str | None
) -> EngineConfig:
    return EngineConfig(
        model=model,
        dtype=dtype,
        max_model_len=max_model_len,
        kv_cache_memory=parse_size(kv_cache_memory) if kv_cache_memory else None,
        show_progress=True,
    )


def sampling_params(
    max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed
    )
