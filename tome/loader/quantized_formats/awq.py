"""AWQ checkpoints in AutoAWQ's "GEMM" layout (`quant_method: "awq"`, `version: "gemm"`),
as AutoAWQ, GPTQModel and transformers write them, unpacked into 4-bit BlockQuantizedWeight.

A linear layer W [n, k] is stored transposed and packed along n: `qweight` int32 [k, n / 8]
and `qzeros` int32 [k / g, n / 8] hold eight 4-bit values a word, `scales` float16
[k / g, n] one scale per group of g input columns, and

    w[o, i] = scales[i // g, o] * (q[i, o] - z[i // g, o]).

The eight values of a word are interleaved for AWQ's GPU dequantizer: the value of output
column 8 * j + AWQ_ORDER[b] sits in bits 4b..4b+3 of word j (AutoAWQ's
WQLinear_GEMM.from_linear packs with order_map [0, 2, 4, 6, 1, 3, 5, 7]; its
packing_utils.unpack_awq / reverse_awq_order undo it).

Kept as codes = q transposed to [n, k], scale = the group's scale repeated over the group's
blocks of 32, and offset = -scale * z. A float16 scale has 11 significant bits (bfloat16
8) and z < 16 takes 4 more, so the offset is exact in float32, and so is scale * q +
offset: every weight equals the checkpoint's scale * (q - z) bit for bit."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from tome.errors import ModelLoadError
from tome.kernels.block_quantized_matmul import BLOCK, BlockQuantizedWeight
from tome.loader.quantized_formats import DecodedWeight, group_size_setting, required_tensor

PER_WORD = 8  # 4-bit values in an int32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# The zero point of `zero_point: false` (symmetric) checkpoints: q in 0..15 stands for the
# signed q - 8. GPTQModel writes qzeros full of 8 for them (awq_processor.py); AutoAWQ's
# quantizer returns no zeros then, and its GEMM packer cannot write such a checkpoint.
SYMMETRIC_ZERO = 8
SCALE_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AwqFormat:
    """AWQ GEMM checkpoints; `group_size` -1 means one group over all k."""

    group_size: int
    zero_point: bool

    suffixes: ClassVar[frozenset[str]] = frozenset({"qweight", "qzeros", "scales"})

    @classmethod
    def from_config(cls, config: dict) -> "AwqFormat":
        """From config.json's `quantization_config`; ModelLoadError for what this module
        cannot decode."""
        method = config.get("quant_method", "awq")
        if method != "awq":
            raise ModelLoadError(f"AWQ quantization_config: quant_method {method!r} is not 'awq'")
        bits = config.get("bits")
        if bits != 4:
            raise ModelLoadError(f"AWQ quantization_config: bits {bits!r} is not supported (4)")
        # AutoAWQ writes `version`; GPTQModel writes `format` as well. Both lower-case it on
        # reading, and older configs say "GEMM".
        version = config.get("version", config.get("format", "gemm"))
        if not isinstance(version, str) or version.lower() != "gemm":
            raise ModelLoadError(
                f"AWQ quantization_config: version {version!r} is not supported ('gemm')"
            )
        zero_point = config.get("zero_point", True)
        if not isinstance(zero_point, bool):
            raise ModelLoadError(
                f"AWQ quantization_config: zero_point {zero_point!r} is not a bool"
            )
        return cls(group_size_setting(config.get("group_size"), "AWQ"), zero_point)

    def decode(self, module: str, tensors: dict[str, torch.Tensor]) -> DecodedWeight:
        qweight = required_tensor(module, tensors, "qweight", "AWQ")
        if qweight.dtype != torch.int32 or qweight.dim() != 2:
            raise ModelLoadError(
                f"{module}: AWQ qweight is {qweight.dtype} {tuple(qweight.shape)}, "
                "expected int32 [k, n / 8]"
            )
        k, n = qweight.shape[0], qweight.shape[1] * PER_WORD
        group = k if self.group_size == -1 else self.group_size
        if k == 0 or k % group or k % BLOCK:
            raise ModelLoadError(
                f"{module}: AWQ qweight has k = {k} rows, not a multiple of the group size "
                f"{group} and of {BLOCK}"
            )
        groups = k // group
        scales = required_tensor(module, tensors, "scales", "AWQ")
        if scales.dtype not in SCALE_DTYPES or tuple(scales.shape) != (groups, n):
            raise ModelLoadError(
                f"{module}: AWQ scales are {scales.dtype} {tuple(scales.shape)}, expected "
                f"float16 or bfloat16 {(groups, n)} from qweight {tuple(qweight.shape)}"
            )
        zeros = self._zeros(module, tensors.get("qzeros"), groups, n)
        codes = _unpack_columns(qweight).T.contiguous()  # [n, k]
        # Each group of `group` input columns covers group / 32 whole blocks.
        block_scales = scales.float().repeat_interleave(group // BLOCK, dim=0)  # [k / 32, n]
        block_zeros = zeros.float().repeat_interleave(group // BLOCK, dim=0)
        offsets = -(block_scales * block_zeros)
        return DecodedWeight(
            BlockQuantizedWeight(4, codes, block_scales.T.contiguous(), offsets.T.contiguous())
        )

    def _zeros(self, module: str, qzeros: torch.Tensor | None, groups: int, n: int) -> torch.Tensor:
        """z as uint8 [groups, n]."""
        if qzeros is None:
            if self.zero_point:
                raise ModelLoadError(f"{module}: AWQ layer has no qzeros but zero_point is true")
            return torch.full((groups, n), SYMMETRIC_ZERO, dtype=torch.uint8)
        if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != (groups, n // PER_WORD):
            raise ModelLoadError(
                f"{module}: AWQ qzeros are {qzeros.dtype} {tuple(qzeros.shape)}, expected int32 "
                f"{(groups, n // PER_WORD)}"
            )
        return _unpack_columns(qzeros)


def _unpack_columns(packed: torch.Tensor) -> torch.Tensor:
    """int32 [rows, n / 8] to uint8 [rows, n]: bits 4b.. of word j are column
    8j + AWQ_ORDER[b]."""
    rows, words = packed.shape
    values = torch.empty(rows, words, PER_WORD, dtype=torch.uint8)
    for position, column in enumerate(AWQ_ORDER):
        # The shift is arithmetic on int32, but the mask keeps only the 4 bits wanted.
        values[:, :, column] = (packed >> (4 * position)) & 0xF
    return values.view(rows, words * PER_WORD)
