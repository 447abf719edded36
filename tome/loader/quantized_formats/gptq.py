"""GPTQ checkpoints (`quant_method: "gptq"`, as AutoGPTQ and GPTQModel write them), 4 or 8
bits, unpacked into BlockQuantizedWeight.

A linear layer W [n, k] is stored transposed: `qweight` int32 [k * bits / 32, n] packs
32 / bits values of consecutive input rows in a word, low bits first (row p * i + j in
bits bits * j.. of word i, p = 32 / bits); `qzeros` int32 [groups, n * bits / 32] packs
the zero points along n the same way; `scales` float16 [groups, n]; `g_idx` int32 [k] is
the group of each input column (i // group_size unless the checkpoint was quantized in
act-order, `desc_act`), and

    w[o, i] = scales[g_idx[i], o] * (q[i, o] - z[g_idx[i], o]).

`checkpoint_format` "gptq_v2" stores z; "gptq" (v1, the default) stores z - 1. A zero of
0 makes that -1, which borrows from the next field of the word: GPTQModel writes v1 as the
v2 word minus 0x11111111 (or 0x01010101 for 8 bits) and reads it back by adding that
constant to the whole word (utils/model.py, convert_gptq_v1_to_v2_format_module), which
undoes the borrow exactly. That is what is done here. Other readers differ only where a
field holds all ones: vLLM's exllama kernel (gptq_gemm) and AutoGPTQ's qlinear_cuda add 1
to each field alone, giving a zero of 16; AutoGPTQ's qlinear_cuda_old masks field + 1 to
bits bits, giving 0 without the carry. Symmetric checkpoints (z = 8 or 128 in every
group) read the same in all of them.

Kept as codes = q transposed to [n, k], scale = the group's scale repeated over the
group's blocks of 32, so a group must be whole blocks: its column count a multiple of 32.
An act-order checkpoint's columns are sorted by group (stably) first, and that order is
returned as the DecodedWeight's input_order.
- 4 bits: offset = -scale * z, exact in float32 (11 significant bits of a float16 scale,
  8 of a bfloat16 one, times z < 16), so scale * q + offset equals scale * (q - z) bit
  for bit.
- 8 bits: the code is the signed q - 128 and w = scale * (q - 128) + scale * (128 - z).
  Symmetric checkpoints have z = 128 everywhere and no offsets, the layout the 8-bit
  kernel multiplies by; others keep offsets (exact: 11 + 8 bits) and are expanded by the
  caller."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from tome.errors import ModelLoadError
from tome.kernels.block_quantized_matmul import BLOCK, BlockQuantizedWeight
from tome.loader.quantized_formats import DecodedWeight, group_size_setting, required_tensor

WORD_BITS = 32
SUPPORTED_BITS = (4, 8)
# checkpoint_format -> whether qzeros hold z - 1 (v1).
CHECKPOINT_FORMATS = {"gptq": True, "gptq_v2": False}
SCALE_DTYPES = (torch.float16, torch.bfloat16)
EIGHT_BIT_MIDDLE = 128


@dataclass(frozen=True)
class GptqFormat:
    """GPTQ checkpoints; `group_size` -1 means one group over all k."""

    bits: int
    group_size: int
    desc_act: bool
    zeros_minus_one: bool

    suffixes: ClassVar[frozenset[str]] = frozenset({"qweight", "qzeros", "scales", "g_idx"})

    @classmethod
    def from_config(cls, config: dict) -> "GptqFormat":
        """From config.json's `quantization_config`; ModelLoadError for what this module
        cannot decode."""
        _expect(config, "quant_method", "gptq", ("gptq",))
        bits = config.get("bits")
        if type(bits) is not int or bits not in SUPPORTED_BITS:
            raise ModelLoadError(f"GPTQ quantization_config: bits {bits!r} is not supported (4, 8)")
        # GPTQModel writes both names; AutoGPTQ and older configs have neither (v1).
        checkpoint_format = config.get("checkpoint_format", config.get("format", "gptq"))
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ModelLoadError(
                f"GPTQ quantization_config: checkpoint_format {checkpoint_format!r} is not "
                "supported ('gptq' or 'gptq_v2')"
            )
        # GPTQModel can pack in other word sizes; every checkpoint seen uses int32.
        _expect(config, "pack_dtype", "int32", ("int32",))
        # Per-module overrides of bits or group size (GPTQModel's `dynamic`) are not read.
        if config.get("dynamic"):
            raise ModelLoadError("GPTQ quantization_config: dynamic per-module settings are set")
        desc_act = config.get("desc_act", False)
        if not isinstance(desc_act, bool):
            raise ModelLoadError(f"GPTQ quantization_config: desc_act {desc_act!r} is not a bool")
        group_size = group_size_setting(config.get("group_size"), "GPTQ")
        return cls(bits, group_size, desc_act, CHECKPOINT_FORMATS[checkpoint_format])

    def decode(self, module: str, tensors: dict[str, torch.Tensor]) -> DecodedWeight:
        per_word = WORD_BITS // self.bits
        qweight = required_tensor(module, tensors, "qweight", "GPTQ")
        if qweight.dtype != torch.int32 or qweight.dim() != 2:
            raise ModelLoadError(
                f"{module}: GPTQ qweight is {qweight.dtype} {tuple(qweight.shape)}, expected "
                f"int32 [k / {per_word}, n]"
            )
        k, n = qweight.shape[0] * per_word, qweight.shape[1]
        if k == 0 or k % BLOCK or n % per_word:
            raise ModelLoadError(
                f"{module}: GPTQ qweight shape {tuple(qweight.shape)} gives k = {k}, n = {n}; "
                f"k must be a multiple of {BLOCK} and n of {per_word}"
            )
        group = k if self.group_size == -1 else self.group_size
        groups = -(-k // group)
        scales = required_tensor(module, tensors, "scales", "GPTQ")
        if scales.dtype not in SCALE_DTYPES or tuple(scales.shape) != (groups, n):
            raise ModelLoadError(
                f"{module}: GPTQ scales are {scales.dtype} {tuple(scales.shape)}, expected "
                f"float16 or bfloat16 {(groups, n)} from qweight {tuple(qweight.shape)}"
            )
        zeros = self._zeros(module, required_tensor(module, tensors, "qzeros", "GPTQ"), groups, n)
        order, block_groups = self._grouping(module, tensors.get("g_idx"), k, group, groups)
        codes = _unpack_rows(qweight, self.bits)  # [k, n]
        if order is not None:
            codes = codes[order]
        block_scales = scales.float()[block_groups]  # [k / 32, n]
        block_zeros = zeros[block_groups]
        if self.bits == 4:
            weight = _four_bit(codes, block_scales, block_zeros)
        else:
            weight = _eight_bit(codes, block_scales, block_zeros)
        return DecodedWeight(weight, order)

    def _zeros(self, module: str, qzeros: torch.Tensor, groups: int, n: int) -> torch.Tensor:
        """z as uint8 [groups, n]."""
        expected = (groups, n * self.bits // WORD_BITS)
        if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != expected:
            raise ModelLoadError(
                f"{module}: GPTQ qzeros are {qzeros.dtype} {tuple(qzeros.shape)}, expected "
                f"int32 {expected}"
            )
        words = qzeros.long() & 0xFFFFFFFF  # the words as unsigned 32-bit numbers
        if self.zeros_minus_one:
            # One added to every field at once, carries included (see the docstring).
            ones = sum(1 << shift for shift in range(0, WORD_BITS, self.bits))
            words = (words + ones) & 0xFFFFFFFF
        return _unpack_columns(words, self.bits)

    def _grouping(
        self, module: str, g_idx: torch.Tensor | None, k: int, group: int, groups: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the input order that makes each group's columns contiguous, None when they
        already are; the group of each block of 32 columns in that order)."""
        if g_idx is None:
            if self.desc_act:
                raise ModelLoadError(f"{module}: GPTQ layer has desc_act but no g_idx")
            g_idx = torch.arange(k) // group
        elif g_idx.dtype.is_floating_point or g_idx.dtype == torch.bool or g_idx.shape != (k,):
            raise ModelLoadError(
                f"{module}: GPTQ g_idx is {g_idx.dtype} {tuple(g_idx.shape)}, expected "
                f"integers ({k},)"
            )
        g_idx = g_idx.long()
        if g_idx.min() < 0 or g_idx.max() >= groups:
            raise ModelLoadError(
                f"{module}: GPTQ g_idx holds groups {g_idx.min()}..{g_idx.max()}, outside "
                f"0..{groups - 1}"
            )
        counts = torch.bincount(g_idx, minlength=groups)
        partial = torch.nonzero(counts % BLOCK).flatten()
        if len(partial):
            first = int(partial[0])
            raise ModelLoadError(
                f"{module}: GPTQ group {first} has {int(counts[first])} input columns, not a "
                f"multiple of {BLOCK}"
            )
        # g_idx is followed even without desc_act: it is what says where each column's
        # scale is (vLLM's GPTQ Marlin path ignores it then; AutoGPTQ's torch path does not).
        sorted_groups, order = torch.sort(g_idx, stable=True)
        natural = torch.equal(order, torch.arange(k))
        return None if natural else order, sorted_groups[::BLOCK]


def _four_bit(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
) -> BlockQuantizedWeight:
    """codes uint8 [k, n] of 0..15, scales float32 and zeros uint8 [k / 32, n]."""
    offsets = -(scales * zeros.float())
    return BlockQuantizedWeight(
        4, codes.T.contiguous(), scales.T.contiguous(), offsets.T.contiguous()
    )


def _eight_bit(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
) -> BlockQuantizedWeight:
    """As _four_bit with codes of 0..255; the codes become the signed q - 128."""
    # q - 128 as a two's-complement byte is q with its top bit flipped.
    signed = (codes ^ EIGHT_BIT_MIDDLE).T.contiguous()
    if bool((zeros == EIGHT_BIT_MIDDLE).all()):
        return BlockQuantizedWeight(8, signed, scales.T.contiguous(), None)
    offsets = scales * (EIGHT_BIT_MIDDLE - zeros.float())
    return BlockQuantizedWeight(8, signed, scales.T.contiguous(), offsets.T.contiguous())


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows / p, n] words to uint8 [rows, n], p = 32 / bits: row p * i + j is word i's
    bits bits * j.. (low bits first)."""
    words, n = packed.shape
    per_word = WORD_BITS // bits
    values = torch.empty(words, per_word, n, dtype=torch.uint8)
    for j in range(per_word):
        # Masked, so the int32 shift being arithmetic does not matter.
        values[:, j] = (packed >> (bits * j)) & ((1 << bits) - 1)
    return values.view(words * per_word, n)


def _unpack_columns(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, n / p] words to uint8 [rows, n]: column p * i + j is word i's bits
    bits * j.. (low bits first)."""
    rows, words = packed.shape
    per_word = WORD_BITS // bits
    values = torch.empty(rows, words, per_word, dtype=torch.uint8)
    for j in range(per_word):
        values[:, :, j] = (packed >> (bits * j)) & ((1 << bits) - 1)
    return values.view(rows, words * per_word)


def _expect(config: dict, key: str, default: object, allowed: tuple) -> object:
    value = config.get(key, default)
    if value not in allowed:
        raise ModelLoadError(f"GPTQ quantization_config: {key} {value!r} is not supported")
    return value
