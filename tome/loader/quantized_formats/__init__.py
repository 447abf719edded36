"""Pre-quantized checkpoint formats (AWQ, GPTQ, compressed-tensors, FP8 blocks), each read
into the layouts Tome computes from: BlockQuantizedWeight (integer codes in blocks of 32
with a float scale and offset each) and Float8Weight (e4m3 values with float32 block
scales). One module per format; each exposes a CheckpointFormat."""

from dataclasses import dataclass
from typing import Protocol

import torch

from tome.errors import ModelLoadError
from tome.kernels.block_quantized_matmul import BLOCK, BlockQuantizedWeight
from tome.kernels.float8_matmul import Float8Weight


@dataclass
class DecodedWeight:
    """One linear layer's weight W [n, k] as read from its checkpoint tensors.

    `input_order` (GPTQ with act-order) is a permutation of the k input columns such that
    y = x[..., input_order] @ W^T; None when the columns are in their natural order."""

    weight: BlockQuantizedWeight | Float8Weight
    input_order: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape


class CheckpointFormat(Protocol):
    """What a format module exposes: which tensor-name suffixes make up one layer's
    quantized weight, and how they decode into a DecodedWeight."""

    # Suffixes after the module name ("qweight", "weight_scale", ...). A module whose
    # checkpoint has none of them is not quantized and loads as float.
    suffixes: frozenset[str]

    def decode(self, module: str, tensors: dict[str, torch.Tensor]) -> DecodedWeight:
        """`tensors`: this module's tensors by suffix, every one the checkpoint has.
        Raises ModelLoadError (one line naming the module) for what it cannot read."""
        ...


def group_size_setting(value: object, format_name: str) -> int:
    """A config's `group_size`: -1 (one group over all inputs) or a multiple of 32, so that
    groups fall in whole blocks."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelLoadError(
            f"{format_name} quantization_config: group_size {value!r} is not an integer"
        )
    if value != -1 and (value <= 0 or value % BLOCK):
        raise ModelLoadError(
            f"{format_name} quantization_config: group_size {value} is not -1 or a multiple "
            f"of {BLOCK}"
        )
    return value


def required_tensor(
    module: str, tensors: dict[str, torch.Tensor], suffix: str, format_name: str
) -> torch.Tensor:
    if suffix not in tensors:
        raise ModelLoadError(f"{module}: {format_name} layer has no {suffix}")
    return tensors[suffix]
