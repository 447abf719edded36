"""Weights kept in llama.cpp's block quantization, and the C++ kernel of
cpu/block_quantized_matmul.cpp that multiplies by them without expanding them to float.

A GGUF Q4_1 model is 0.6 bytes a weight on disk and 4 in float32. Decoding one token
reads every weight once, so at batch 1 the step takes as long as memory takes to deliver
them: kept in blocks, that is about five times fewer bytes. Long prefill chunks are
matrix-matrix products, where the weight is expanded into a float32 scratch once per call
and the product runs in torch's BLAS."""

import ctypes
from dataclasses import dataclass
from functools import cache

import torch

from tome.kernels.cpu_kernels import load

BLOCK = 32
# Rows of activations at or above which expanding the weight once and letting BLAS
# multiply beats expanding each block inside the kernel for every 4 rows.
EXPAND_FROM_ROWS = 32
# The kernel's codes for the two layouts (its Kind).
KINDS = {4: 0, 8: 1}


@dataclass
class BlockQuantizedWeight:
    """W [n, k] in blocks of 32 along k: w = scale * q + offset.

    4 bits: `codes` uint8 [n, k / 2]; byte j of a block's 16 holds weight j in its low
    nibble and weight j + 16 in its high one. 8 bits: `codes` uint8 [n, k], the signed q
    stored as its two's-complement byte, and no offsets. `scales` and `offsets` are float32
    [n, k / 32]."""

    bits: int
    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.scales.shape[0], self.scales.shape[1] * BLOCK

    def rows(self, index: torch.Tensor) -> "BlockQuantizedWeight":
        """The rows `index` picks, still in blocks (an embedding lookup)."""
        offsets = None if self.offsets is None else self.offsets[index]
        return BlockQuantizedWeight(self.bits, self.codes[index], self.scales[index], offsets)

    def tensors(self) -> dict[str, torch.Tensor]:
        parts = {"codes": self.codes, "scales": self.scales}
        return parts if self.offsets is None else {**parts, "offsets": self.offsets}


def concatenate_rows(parts: list[BlockQuantizedWeight]) -> BlockQuantizedWeight:
    """The weights stacked along n (fused q/k/v or gate/up projections); all of one layout."""
    offsets = None if parts[0].offsets is None else torch.cat([p.offsets for p in parts])
    return BlockQuantizedWeight(
        parts[0].bits,
        torch.cat([p.codes for p in parts]),
        torch.cat([p.scales for p in parts]),
        offsets,
    )


@cache
def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, its functions declared; None where it cannot be built."""
    library = load("block_quantized_matmul")
    if library is None:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.tome_block_quantized_matmul.restype = ctypes.c_int
    library.tome_block_quantized_matmul.argtypes = [
        ctypes.c_int, pointer, size, size, pointer, pointer, pointer, size, pointer
    ]  # fmt: skip
    library.tome_block_quantized_dequantize.restype = ctypes.c_int
    library.tome_block_quantized_dequantize.argtypes = [
        ctypes.c_int, size, pointer, pointer, pointer, size, pointer
    ]  # fmt: skip
    return library


def block_quantized_matmul(x: torch.Tensor, weight: BlockQuantizedWeight) -> torch.Tensor:
    """x [..., k] float32 on the CPU times W^T: [..., n]."""
    n, k = weight.shape
    rows = x.reshape(-1, k).contiguous()
    if rows.shape[0] >= EXPAND_FROM_ROWS:
        return (rows @ dequantize(weight).t()).reshape(*x.shape[:-1], n)
    out = torch.empty(rows.shape[0], n, dtype=torch.float32)
    status = kernel_library().tome_block_quantized_matmul(
        KINDS[weight.bits],
        rows.data_ptr(),
        rows.shape[0],
        k,
        weight.codes.data_ptr(),
        weight.scales.data_ptr(),
        _offsets_pointer(weight),
        n,
        out.data_ptr(),
    )
    _check(status, weight)
    return out.reshape(*x.shape[:-1], n)


def dequantize(weight: BlockQuantizedWeight) -> torch.Tensor:
    """W as float32 [n, k], each weight as scale * q + offset in float32."""
    n, k = weight.shape
    out = torch.empty(n, k, dtype=torch.float32)
    status = kernel_library().tome_block_quantized_dequantize(
        KINDS[weight.bits],
        k,
        weight.codes.data_ptr(),
        weight.scales.data_ptr(),
        _offsets_pointer(weight),
        n,
        out.data_ptr(),
    )
    _check(status, weight)
    return out


def _offsets_pointer(weight: BlockQuantizedWeight) -> int | None:
    return None if weight.offsets is None else weight.offsets.data_ptr()


def _check(status: int, weight: BlockQuantizedWeight) -> None:
    if status != 0:
        raise RuntimeError(f"block-quantized kernel refused a {weight.bits}-bit {weight.shape}")
