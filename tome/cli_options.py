"""Options shared by the CLI commands, and their conversion into config objects."""

import dataclasses
import json
import re
from typing import Annotated

import typer

from tome.engine.config import EngineConfig
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.layers.weight_quantization import WEIGHT_QUANTIZATIONS

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
ROPE_SCALING_EXAMPLE = '{"rope_type":"yarn","factor":4}'
RopeScalingOption = Annotated[
    str | None,
    typer.Option(
        help=f"Stretch the window with a rope scaling (JSON), e.g. {ROPE_SCALING_EXAMPLE}."
    ),
]
SPARSE_PREFILL_EXAMPLE = '{"min_context": 32768, "vertical": 1024, "slash": 2048}'
SparsePrefillOption = Annotated[
    str | None,
    typer.Option(
        help="Sparse (vertical-slash) attention for long prefill chunks: 'on' for the "
        f"defaults, or JSON such as {SPARSE_PREFILL_EXAMPLE}."
    ),
]
KVMemoryOption = Annotated[
    str | None,
    typer.Option(
        help="KV cache budget: a size (2GiB, 500MB) or a fraction of free memory (0.5); "
        "default: a share of free memory."
    ),
]
HostKVMemoryOption = Annotated[
    str | None,
    typer.Option(
        help="Host-memory tier for evicted prefix blocks, e.g. 8GiB (default: none); "
        "a prefix hit there is copied back instead of recomputed."
    ),
]
DiskKVDirOption = Annotated[
    str | None,
    typer.Option(help="A directory for a disk tier below the host tier (needs the host tier)."),
]
DiskKVMemoryOption = Annotated[str, typer.Option(help="Bound on the disk tier, e.g. 100GiB.")]
KVDtypeOption = Annotated[
    str, typer.Option(help="KV cache dtype: auto, float32, bfloat16, float16, int8 or fp8.")
]
QuantizationOption = Annotated[
    str | None,
    typer.Option(
        help=f"Quantize float weights as they load: {', '.join(WEIGHT_QUANTIZATIONS)} "
        "(default: none; a pre-quantized checkpoint keeps its own)."
    ),
]
QuantizeHeadOption = Annotated[
    bool,
    typer.Option(help="With --quantization, quantize the embedding and LM head too."),
]
MaxNumSeqsOption = Annotated[
    int, typer.Option(help="Sequences running at once; a hybrid model holds a state for each.")
]
MaxStateCheckpointsOption = Annotated[
    int | None,
    typer.Option(help="A hybrid model's prefix-cache states kept (default: --max-num-seqs)."),
]
Int8ActivationsOption = Annotated[
    bool,
    typer.Option(
        "--int8-activations/--float-activations",
        help="Weights in blocks on the CPU (GGUF, --quantization) multiply activations "
        "rounded to 8 bits per 32 values, as llama.cpp does (faster; answers may change), "
        "or float32 ones, as transformers does (the default).",
    ),
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


def parse_kv_memory(text: str) -> int | float:
    """--kv-cache-memory: a unitless decimal such as 0.5 is a fraction of free memory,
    anything else a size in bytes."""
    if re.fullmatch(r"\s*[0-9]*\.[0-9]+\s*", text):
        fraction = float(text)
        if not 0 < fraction <= 1:
            raise InvalidRequestError(
                f"--kv-cache-memory {text.strip()} is neither a fraction in (0, 1] nor a size "
                "such as 2GiB"
            )
        return fraction
    return parse_size(text)


def parse_rope_scaling(text: str | None) -> object:
    """--rope-scaling's JSON; EngineConfig checks what it holds."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"--rope-scaling is not valid JSON ({exc.msg}); write e.g. {ROPE_SCALING_EXAMPLE}"
        ) from exc


def parse_sparse_prefill(text: str | None) -> SparsePrefillConfig | None:
    """--sparse-prefill: 'on', or a JSON object of SparsePrefillConfig's fields."""
    if text is None:
        return None
    if text.strip().lower() == "on":
        return SparsePrefillConfig()
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"--sparse-prefill is neither 'on' nor JSON ({exc.msg}); e.g. {SPARSE_PREFILL_EXAMPLE}"
        ) from exc
    known = {field.name for field in dataclasses.fields(SparsePrefillConfig)}
    if not isinstance(fields, dict) or not set(fields) <= known:
        raise InvalidRequestError(
            f"--sparse-prefill takes an object with some of: {', '.join(sorted(known))}"
        )
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in fields.values()):
        raise InvalidRequestError("--sparse-prefill: every setting is a whole number")
    return SparsePrefillConfig(**fields)


def engine_config(
    model: str | None,
    dtype: str,
    max_model_len: int | None,
    kv_cache_memory: str | None,
    rope_scaling: str | None = None,
    kv_cache_dtype: str = "auto",
    sparse_prefill: str | None = None,
    quantization: str | None = None,
    quantize_head: bool = True,
    int8_activations: bool = False,
) -> EngineConfig:
    return EngineConfig(
        model=model,
        dtype=dtype,
        max_model_len=max_model_len,
        kv_cache_memory=parse_kv_memory(kv_cache_memory) if kv_cache_memory else None,
        kv_cache_dtype=kv_cache_dtype,
        rope_scaling=parse_rope_scaling(rope_scaling),
        sparse_prefill=parse_sparse_prefill(sparse_prefill),
        quantization=quantization,
        quantize_head=quantize_head,
        int8_activations=int8_activations,
        show_progress=True,
    )


def sampling_params(
    max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed
    )
