"""Quantizing float weights as a model loads (`quantization="int8" | "int4" | "fp8" |
"mxfp4"`), one tensor at a time, into the layouts Tome computes from.

- int8: symmetric, one scale per output row (max abs / 127): 8-bit blocks whose scales
  repeat along the row.
- int4: asymmetric over groups of 32, 64 or 128 inputs, as GGUF's Q4_1: w = scale * q +
  min, scale = (max - min) / 15, q = round((w - min) / scale) in [0, 15], float32 scale and
  offset (min). Unlike GPTQ's integer zero point over a range widened to hold 0, every
  code falls inside the group's range; on SmolLM2 (whose weights are Q4_1 values) the
  integer-zero variant cost 22% in perplexity, this one (BENCHMARKS.md) far less.
- fp8: e4m3 values with a float32 scale per output row (max abs / 448), or per 128 x 128
  block as DeepSeek-V3 ships them.
- mxfp4: the OCP microscaling format: blocks of 32 e2m1 values (0, 0.5, 1, 1.5, 2, 3, 4, 6
  and their negatives) under a power-of-two scale, 2^(floor(log2(max abs)) - 2), values
  rounded to nearest, ties to even, and saturated at 6. Twice an e2m1 value is an integer
  in [-12, 12], so a block is held exactly as 8-bit codes with half the scale."""

from dataclasses import dataclass

import torch

from tome.kernels.block_quantized_matmul import BLOCK, BlockQuantizedWeight
from tome.kernels.float8_matmul import FLOAT8, Float8Weight

FP8_MAX = 448.0
FP8_BLOCK = 128
# e2m1's largest exponent: a block's max abs maps into [4, 8), its top binade.
E2M1_MAX_EXPONENT = 2


@dataclass(frozen=True)
class WeightQuantization:
    """A scheme (int8, int4, fp8 or mxfp4) with its option: int4's group size, or fp8 by
    128 x 128 blocks (else per output row). WEIGHT_QUANTIZATIONS names each choice."""

    scheme: str
    group_size: int = 32
    fp8_blocks: bool = False

    def quantize(self, weight: torch.Tensor) -> BlockQuantizedWeight | Float8Weight:
        """A float weight [n, k] (k a multiple of 32) in this scheme."""
        w = weight.to(torch.float32)
        if self.scheme == "int8":
            return quantize_int8(w)
        if self.scheme == "int4":
            return quantize_int4(w, self.group_size)
        if self.scheme == "fp8":
            return quantize_fp8(w, FP8_BLOCK if self.fp8_blocks else None)
        return quantize_mxfp4(w)

    @property
    def for_head(self) -> "WeightQuantization":
        """The scheme of the embedding and LM head: 8-bit under a 4-bit scheme, as llama.cpp's
        Q4_K_M keeps its head in 6 bits. On SmolLM2 (tied, 49k x 576) an int4 head cost 30%
        in perplexity, an int8 one 1% (BENCHMARKS.md, "Quantized weights")."""
        return WEIGHT_QUANTIZATIONS["int8"] if self.scheme in ("int4", "mxfp4") else self

    @property
    def input_multiple(self) -> int:
        """What a weight's input size must be a multiple of; others stay in float."""
        return self.group_size if self.scheme == "int4" else BLOCK

    @property
    def label(self) -> str:
        if self.scheme == "int4":
            return f"int4 (groups of {self.group_size})"
        if self.scheme == "fp8":
            return f"fp8 ({'128x128 blocks' if self.fp8_blocks else 'per channel'})"
        return self.scheme


def quantize_int8(w: torch.Tensor) -> BlockQuantizedWeight:
    scales = _nonzero(w.abs().amax(dim=1, keepdim=True) / 127)
    codes = (w / scales).round_().clamp_(-127, 127).to(torch.int8)
    return BlockQuantizedWeight(
        8, codes.view(torch.uint8), scales.expand(-1, w.shape[1] // BLOCK).contiguous(), None
    )


def quantize_int4(w: torch.Tensor, group_size: int) -> BlockQuantizedWeight:
    n, k = w.shape
    groups = w.reshape(n, k // group_size, group_size)
    low = groups.amin(dim=-1, keepdim=True)
    scales = _nonzero((groups.amax(dim=-1, keepdim=True) - low) / 15)
    codes = ((groups - low) / scales).round_().clamp_(0, 15).to(torch.uint8)
    per_block = group_size // BLOCK
    return BlockQuantizedWeight(
        4,
        codes.reshape(n, k),
        scales.reshape(n, -1).repeat_interleave(per_block, dim=1),
        low.reshape(n, -1).repeat_interleave(per_block, dim=1),
    )


def quantize_fp8(w: torch.Tensor, block: int | None) -> Float8Weight:
    n, k = w.shape
    if block is None:
        scales = _nonzero(w.abs().amax(dim=1, keepdim=True) / FP8_MAX)
        return Float8Weight(_to_float8(w / scales), scales, k)
    row_blocks, col_blocks = -(-n // block), -(-k // block)
    padded = w.new_zeros(row_blocks * block, col_blocks * block)
    padded[:n, :k] = w
    tiles = padded.view(row_blocks, block, col_blocks, block)
    scales = _nonzero(tiles.abs().amax(dim=(1, 3)) / FP8_MAX)  # [row blocks, col blocks]
    row_scales = scales.repeat_interleave(block, dim=0)[:n]
    values = _to_float8(w / row_scales.repeat_interleave(block, dim=1)[:, :k])
    return Float8Weight(values, row_scales.contiguous(), block)


def quantize_mxfp4(w: torch.Tensor) -> BlockQuantizedWeight:
    n, k = w.shape
    blocks = w.reshape(n, k // BLOCK, BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    # floor(log2(amax)) exactly, from the float's exponent; all-zero blocks get 2^-127.
    exponent = torch.where(amax > 0, torch.frexp(amax).exponent - 1, -127 + E2M1_MAX_EXPONENT)
    shared = (exponent - E2M1_MAX_EXPONENT).clamp_(-127, 127)
    scale = torch.ldexp(torch.ones_like(amax), shared)
    doubled = 2 * round_to_e2m1(blocks / scale)  # integers in [-12, 12]
    return BlockQuantizedWeight(
        8, doubled.to(torch.int8).view(torch.uint8).reshape(n, k), (scale / 2).reshape(n, -1), None
    )


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest e2m1 value, ties to even, saturating at +-6. The grid's
    step is 0.5 below 2, 1 below 4 and 2 above, and torch.round ties to even on each."""
    magnitude = x.abs()
    step = torch.where(magnitude < 2, 0.5, torch.where(magnitude < 4, 1.0, 2.0))
    return (torch.round(magnitude / step) * step).clamp_(max=6.0).copysign_(x)


def _to_float8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP8_MAX, FP8_MAX).to(FLOAT8)


def _nonzero(scales: torch.Tensor) -> torch.Tensor:
    """An all-zero row or group gets scale 1: its codes stay 0 and nothing divides by 0."""
    return scales.masked_fill_(scales == 0, 1.0)


# `quantization=` values, as EngineConfig and --quantization take them.
WEIGHT_QUANTIZATIONS = {
    "int8": WeightQuantization("int8"),
    "int4": WeightQuantization("int4", group_size=32),
    "int4-g64": WeightQuantization("int4", group_size=64),
    "int4-g128": WeightQuantization("int4", group_size=128),
    "fp8": WeightQuantization("fp8"),
    "fp8-block": WeightQuantization("fp8", fp8_blocks=True),
    "mxfp4": WeightQuantization("mxfp4"),
}
