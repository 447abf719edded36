"""A pre-quantized checkpoint's tensors read as Tome's quantized weights: the format named
by config.json's `quantization_config` gathers each quantized layer's tensors (packed codes,
scales, zero points, its e4m3 `weight`) as they stream in and decodes them into one
weight, yielded under the layer's `.weight` name. Layers the checkpoint keeps in float,
and biases, pass through unchanged."""

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from tome.errors import ModelLoadError
from tome.loader.quantized_formats import CheckpointFormat
from tome.loader.quantized_formats.awq import AwqFormat
from tome.loader.quantized_formats.compressed_tensors import CompressedTensorsFormat
from tome.loader.quantized_formats.fp8_blocks import Fp8BlockFormat
from tome.loader.quantized_formats.gptq import GptqFormat

FORMATS = {
    "awq": AwqFormat,
    "gptq": GptqFormat,
    "compressed-tensors": CompressedTensorsFormat,
    "fp8": Fp8BlockFormat,
}


def _quantization_config(hf_config: Any) -> dict | None:
    config = getattr(hf_config, "quantization_config", None)
    if config is None or isinstance(config, dict):
        return config
    return config.to_dict()


def quant_method(hf_config: Any) -> str | None:
    """config.json's `quantization_config.quant_method` ("awq", "gptq", ...), None for a
    float checkpoint."""
    config = _quantization_config(hf_config)
    return None if config is None else config.get("quant_method")


def checkpoint_format(hf_config: Any) -> CheckpointFormat | None:
    """The format of a quantized checkpoint, None for a float one; a method or setting we
    do not read is refused in one line rather than loaded as garbage."""
    config = _quantization_config(hf_config)
    if config is None:
        return None
    method = config.get("quant_method")
    if method not in FORMATS:
        raise ModelLoadError(
            f"quantization_config quant_method {method!r} is not supported "
            f"(Tome reads {', '.join(FORMATS)})"
        )
    return FORMATS[method].from_config(config)


def decode_quantized(
    weights: Iterable[tuple[str, torch.Tensor]], names: list[str], checkpoint: CheckpointFormat
) -> Iterator[tuple[str, Any]]:
    """`weights` with each quantized layer's tensors replaced by its decoded weight, once
    all of them (known from the checkpoint's `names`) have come."""
    parts = _quantized_parts(names, checkpoint)
    pending: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, tensor in weights:
        module, _, suffix = name.rpartition(".")
        if suffix not in parts.get(module, ()):
            yield name, tensor
            continue
        pending[module][suffix] = tensor
        if len(pending[module]) == len(parts[module]):
            decoded = checkpoint.decode(module, pending.pop(module))
            # A weight over permuted inputs (GPTQ's act-order) keeps its order beside it.
            yield f"{module}.weight", decoded if decoded.input_order is not None else decoded.weight


def _quantized_parts(names: list[str], checkpoint: CheckpointFormat) -> dict[str, set[str]]:
    """Module -> the suffixes of its tensors that make up its quantized weight: a module
    is quantized when it has any of the format's suffixes, and then its `weight` (an FP8
    checkpoint's e4m3 values) belongs to it too."""
    parts: dict[str, set[str]] = defaultdict(set)
    for name in names:
        module, _, suffix = name.rpartition(".")
        if suffix in checkpoint.suffixes:
            parts[module].add(suffix)
    present = set(names)
    for module, suffixes in parts.items():
        if f"{module}.weight" in present:
            suffixes.add("weight")
    return parts
