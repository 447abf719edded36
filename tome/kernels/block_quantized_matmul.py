"""Weights kept in llama.cpp's block quantization, and the C++ kernel of
cpu/block_quantized_matmul.cpp that multiplies by them without expanding them to float.

A GGUF Q4_1 model is 0.6 bytes a weight on disk and 4 in float32. Decoding one token
reads every weight once, so at batch 1 the step takes as long as memory takes to deliver
them: kept in blocks, that is about five times fewer bytes. For long prefill chunks the
weight is expanded into a float32 scratch once per call and the product runs in torch's
BLAS instead.

With `int8_activations`, x is rounded to 8 bits per block of 32 before the product, as
llama.cpp rounds it (its Q8_0): the kernel then multiplies codes by codes in integers,
and the BLAS path multiplies the same rounded x, so a row's result does not depend on how
many rows came with it beyond float rounding."""

import ctypes
from dataclasses import dataclass

import torch

from tome.kernels.cpu_kernels import KernelSource, load_declared

PANEL = 16
BLOCK = 32  # weights under one scale (and offset), along k
# Rows of activations at or above which expanding the weight once and letting BLAS
# multiply beats expanding each block inside the kernel for every 8 rows. Over SmolLM2's
# four layer shapes on a 2-core Xeon: kernel 2.1 ms against 2.7 at 64 rows, 4.3 against
# 4.0 at 128.
EXPAND_FROM_ROWS = 96
# The kernel's codes for the two layouts (its Kind) and for its activations.
KINDS = {4: 0, 8: 1}
FLOAT32_ACTIVATIONS, INT8_ACTIVATIONS = 0, 1


@dataclass
class BlockQuantizedWeight:
    """W [n, k] in blocks of 32 along k, w = scale * q + offset, one row per output feature
    (rows can be stacked; `pack` readies it for the kernel).

    `codes` uint8 [n, k], one q a byte: 0-15 for 4 bits; for 8 bits the signed q as its
    two's-complement byte, usually without offsets (the kernel reads none: an 8-bit weight
    with offsets is computed by expanding it). `scales` and `offsets` are float32
    [n, k / 32]."""

    bits: int
    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)


def dequantize(weight: BlockQuantizedWeight) -> torch.Tensor:
    """W as float32 [n, k], scale * q + offset, in torch: where the kernel is not built."""
    n, k = weight.shape
    codes = weight.codes.view(torch.int8) if weight.bits == 8 else weight.codes
    w = codes.view(n, k // BLOCK, BLOCK).to(torch.float32) * weight.scales[..., None]
    if weight.offsets is not None:
        w += weight.offsets[..., None]
    return w.view(n, k)


def concatenate_rows(parts: list[BlockQuantizedWeight]) -> BlockQuantizedWeight:
    """The weights stacked along n (fused q/k/v or gate/up projections); all of one layout."""
    offsets = None if parts[0].offsets is None else torch.cat([p.offsets for p in parts])
    return BlockQuantizedWeight(
        parts[0].bits,
        torch.cat([p.codes for p in parts]),
        torch.cat([p.scales for p in parts]),
        offsets,
    )


@dataclass
class PackedWeight:
    """A BlockQuantizedWeight in the kernel's panels of 16 output columns (see
    cpu/block_quantized_matmul.cpp): codes uint8 [n / 16, k / 8 or k / 4, 16, 4] (4 bytes
    of codes a column in each group), scales and offsets float32 [n / 16, k / 32, 16], n
    padded to whole panels with zero columns."""

    bits: int
    n: int
    k: int
    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor | None


def pack(weight: BlockQuantizedWeight) -> PackedWeight:
    n, k = weight.shape
    panels = _panels(weight.codes)  # [panels, k, 16]
    if weight.bits == 4:
        # k = 8g + t in the low nibble of byte t of group g, k = 8g + 4 + t in its high one.
        steps = panels.view(panels.shape[0], k // 8, 2, 4, PANEL)
        groups = steps[:, :, 0] | (steps[:, :, 1] << 4)
    else:
        groups = panels.view(panels.shape[0], k // 4, 4, PANEL)
    codes = groups.transpose(-1, -2).contiguous()  # [panels, groups, 16 columns, 4 bytes]
    offsets = None if weight.offsets is None else _panels(weight.offsets).contiguous()
    return PackedWeight(weight.bits, n, k, codes, _panels(weight.scales).contiguous(), offsets)


def _panels(rows: torch.Tensor) -> torch.Tensor:
    """[n, ...] to [n / 16, ..., 16], n padded with zeros to whole panels."""
    padding = -rows.shape[0] % PANEL
    if padding:
        rows = torch.cat([rows, rows.new_zeros(padding, *rows.shape[1:])])
    return rows.view(-1, PANEL, *rows.shape[1:]).movedim(1, -1)


_pointer, _size, _integer = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
KERNEL = KernelSource(
    "block_quantized_matmul",
    {
        "tome_block_quantized_matmul": (
            _integer,
            # kind, activations, x, m, k, codes, scales, offsets, n, y
            [_integer, _integer, _pointer, _size, _size, *[_pointer] * 3, _size, _pointer],
        ),
        "tome_block_quantized_dequantize_transposed": (
            _integer,
            [_integer, _size, _pointer, _pointer, _pointer, _size, _pointer],
        ),
        "tome_block_quantized_rows": (
            _integer,
            [_integer, _size, _pointer, _pointer, _pointer, _pointer, _size, _pointer],
        ),
        "tome_block_quantized_grouped_matmul": (
            _integer,
            # kind, activations, groups, x rows, their counts, k, codes, scales, offsets,
            # n, outputs
            [_integer, _integer, _size, *[_pointer] * 2, _size, *[_pointer] * 3, _size, _pointer],
        ),
        "tome_block_quantized_is_fast": (_integer, [_integer]),
    },
)


def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, its functions declared; None where it cannot be built."""
    return load_declared(KERNEL)


def runs_fast(int8_activations: bool) -> bool:
    """Whether the kernel builds here and beats float32 BLAS: with 8-bit activations on
    AVX2 and AVX-512, with float32 ones on AVX-512 only."""
    library = kernel_library()
    return library is not None and library.tome_block_quantized_is_fast(int8_activations) == 1


def round_to_int8_blocks(x: torch.Tensor) -> torch.Tensor:
    """x [m, k] float32 rounded as the kernel rounds activations: per block of 32, q =
    round(x * (127 / amax)) ties to even, then scale * q with scale = amax / 127."""
    blocks = x.view(x.shape[0], -1, BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inverse) * (amax / 127.0)).view_as(x)


def block_quantized_matmul(
    x: torch.Tensor, weight: PackedWeight, int8_activations: bool = False
) -> torch.Tensor:
    """x [..., k] float32 on the CPU times W^T: [..., n]; x rounded to 8 bits per block
    first with `int8_activations`."""
    rows = x.reshape(-1, weight.k).contiguous()
    if rows.shape[0] >= EXPAND_FROM_ROWS:
        if int8_activations:
            rows = round_to_int8_blocks(rows)
        return (rows @ dequantize_transposed(weight)).reshape(*x.shape[:-1], weight.n)
    out = torch.empty(rows.shape[0], weight.n, dtype=torch.float32)
    status = kernel_library().tome_block_quantized_matmul(
        KINDS[weight.bits],
        INT8_ACTIVATIONS if int8_activations else FLOAT32_ACTIVATIONS,
        rows.data_ptr(),
        rows.shape[0],
        weight.k,
        *_pointers(weight),
        weight.n,
        out.data_ptr(),
    )
    _check(status, weight)
    return out.reshape(*x.shape[:-1], weight.n)


def grouped_block_quantized_matmul(
    x: torch.Tensor, counts: list[int], weights: list[PackedWeight], int8_activations: bool
) -> torch.Tensor:
    """[sum(counts), n] float32: x's first counts[0] rows times weights[0]^T, its next
    counts[1] times weights[1]^T, and so on; every weight of one layout and shape. Groups
    of EXPAND_FROM_ROWS rows or more take block_quantized_matmul's BLAS path; the rest run
    in one call of the kernel, one parallel pass over all their weights."""
    first = weights[0]
    x = x.contiguous()
    out = torch.empty(x.shape[0], first.n, dtype=torch.float32)
    small: list[tuple[int, int, PackedWeight]] = []  # (first row, rows, weight)
    start = 0
    for count, weight in zip(counts, weights, strict=True):
        if count >= EXPAND_FROM_ROWS:
            out[start : start + count] = block_quantized_matmul(
                x[start : start + count], weight, int8_activations
            )
        elif count:
            small.append((start, count, weight))
        start += count
    if small:
        _grouped_kernel(x, out, small, int8_activations)
    return out


def _grouped_kernel(
    x: torch.Tensor,
    out: torch.Tensor,
    groups: list[tuple[int, int, PackedWeight]],
    int8_activations: bool,
) -> None:
    count, k, n = len(groups), groups[0][2].k, groups[0][2].n
    row_bytes_in, row_bytes_out = k * x.element_size(), n * out.element_size()

    def pointers(values: list) -> ctypes.Array:
        return (ctypes.c_void_p * count)(*values)

    has_offsets = groups[0][2].offsets is not None
    status = kernel_library().tome_block_quantized_grouped_matmul(
        KINDS[groups[0][2].bits],
        INT8_ACTIVATIONS if int8_activations else FLOAT32_ACTIVATIONS,
        count,
        pointers([x.data_ptr() + first * row_bytes_in for first, _, _ in groups]),
        (ctypes.c_int64 * count)(*(rows for _, rows, _ in groups)),
        k,
        pointers([w.codes.data_ptr() for _, _, w in groups]),
        pointers([w.scales.data_ptr() for _, _, w in groups]),
        pointers([w.offsets.data_ptr() for _, _, w in groups]) if has_offsets else None,
        n,
        pointers([out.data_ptr() + first * row_bytes_out for first, _, _ in groups]),
    )
    _check(status, groups[0][2])


def dequantize_transposed(weight: PackedWeight) -> torch.Tensor:
    """W^T as float32 [k, n], each weight as scale * q + offset in float32."""
    out = torch.empty(weight.k, weight.n, dtype=torch.float32)
    status = kernel_library().tome_block_quantized_dequantize_transposed(
        KINDS[weight.bits], weight.k, *_pointers(weight), weight.n, out.data_ptr()
    )
    _check(status, weight)
    return out


def gather_rows(weight: PackedWeight, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` ([count] int64) of W as float32 [count, k]: an embedding lookup."""
    index = index.contiguous()
    out = torch.empty(index.shape[0], weight.k, dtype=torch.float32)
    status = kernel_library().tome_block_quantized_rows(
        KINDS[weight.bits],
        weight.k,
        *_pointers(weight),
        index.data_ptr(),
        index.shape[0],
        out.data_ptr(),
    )
    _check(status, weight)
    return out


def _pointers(weight: PackedWeight) -> tuple[int, int, int | None]:
    offsets = None if weight.offsets is None else weight.offsets.data_ptr()
    return weight.codes.data_ptr(), weight.scales.data_ptr(), offsets


def _check(status: int, weight: PackedWeight) -> None:
    if status != 0:
        raise RuntimeError(
            f"block-quantized kernel refused a {weight.bits}-bit [{weight.n}, {weight.k}]"
        )
