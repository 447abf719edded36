"""Linear layers and embeddings over quantized weights, and the choice among them.

A weight in 4- or 8-bit blocks (BlockQuantizedWeight) is computed by the fastest product
this machine has for the model's dtype. Measured on a 2-core AVX-512 Xeon at batch 1
(BENCHMARKS.md, "Quantized weights"), over SmolLM2's layer shapes:
- float32 activations: Tome's block kernel (50-85 us a layer) beats float32 BLAS by 1.3-3x,
  while torch's int4/int8 weight-only products take 0.8-3 ms in float32;
- bfloat16 activations: torch's `_weight_int4pack_mm_for_cpu` and `_weight_int8pack_mm`
  (oneDNN-era kernels with AVX-512 and AVX2 paths) run as fast as the block kernel.
On CUDA with Triton installed, Tome's Triton kernel (tome/kernels/triton_quantized_matmul.py)
expands the blocks tile by tile in registers. Elsewhere (a CPU without the block kernel in
float32, CUDA without Triton) the weight is expanded for each call: it stays quantized in
memory, at a cost in speed.

An FP8 weight is expanded for each call on every device. vLLM instead runs
`torch._scaled_mm` on e4m3 activations quantized per token at run time: that adds the
activations' rounding to 3 mantissa bits (up to 2^-4 relative an element), so the layer
would no longer compute the weight-only product the FP8 checkpoints are checked against,
and 128 x 128 block scales do not fit its per-row scales; it is left out."""

import importlib.util
from functools import cache

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import (
    BlockQuantizedWeight,
    dequantize,
    kernel_library,
    pack,
)
from tome.kernels.float8_matmul import Float8Weight, dequantize_float8, float8_matmul
from tome.layers.block_quantized_linear import BlockQuantizedEmbedding, BlockQuantizedLinear

HALF_DTYPES = (torch.bfloat16, torch.float16)
# torch's int4 product takes the weight in tiles of this many k-steps of 16.
INT4_INNER_K_TILES = 2


def uses_block_kernel(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether block-quantized weights run on Tome's block kernel here: float32 on the CPU
    wherever it builds. With 8-bit activations (the default) it beats BLAS on AVX2 and
    AVX-512; without, on AVX-512 only, but it still beats expanding the weight each call."""
    return device.type == "cpu" and dtype == torch.float32 and kernel_library() is not None


def block_kernel_reads(weight: BlockQuantizedWeight | Float8Weight) -> bool:
    """Whether the block kernel reads this weight as it is (it has no 8-bit offsets)."""
    return isinstance(weight, BlockQuantizedWeight) and (weight.bits == 4 or weight.offsets is None)


def quantized_linear(
    weight: BlockQuantizedWeight | Float8Weight,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    """The layer computing x @ W^T + bias for the model's dtype on `device`."""
    if isinstance(weight, Float8Weight):
        return Float8Linear(_to(weight, device), bias)
    if device.type == "cuda" and _has_triton():
        return TritonQuantizedLinear(weight, bias, device)
    if uses_block_kernel(dtype, device) and block_kernel_reads(weight):
        return BlockQuantizedLinear(pack(weight), bias)
    if device.type == "cpu" and dtype in HALF_DTYPES:
        if weight.bits == 4:
            return Int4PackedLinear(weight, bias, dtype)
        if weight.offsets is None and _one_scale_per_row(weight):
            return Int8PackedLinear(weight, bias, dtype)
    return DequantizingLinear(_to(weight, device), bias)


def quantized_embedding(
    weight: BlockQuantizedWeight | Float8Weight, dtype: torch.dtype, device: torch.device
) -> nn.Module:
    """The lookup of rows of W; the block kernel's where it runs."""
    if block_kernel_reads(weight) and uses_block_kernel(dtype, device):
        return BlockQuantizedEmbedding(pack(weight))
    return DequantizingEmbedding(_to(weight, device), dtype)


class DequantizingLinear(nn.Module):
    """W expanded to the activations' dtype for each call, then one matrix product."""

    def __init__(self, weight: BlockQuantizedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ dequantize(self.weight).to(x.dtype).t()
        return out if self.bias is None else out + self.bias


class TritonQuantizedLinear(nn.Module):
    """The Triton kernel's product over the weight packed once for it (4-bit codes two to
    a byte), on `device`: half a byte or one a weight read per call, never expanded whole.
    Its tests run it on the CPU in Triton's interpreter; the kernel itself needs CUDA."""

    def __init__(
        self, weight: BlockQuantizedWeight, bias: torch.Tensor | None, device: torch.device
    ) -> None:
        super().__init__()
        # Imported only when chosen: Triton is an optional dependency.
        from tome.kernels import triton_quantized_matmul

        self._matmul = triton_quantized_matmul.quantized_matmul
        self.weight = _to(triton_quantized_matmul.pack_for_triton(weight), device)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.weight.shape
        out = self._matmul(x.reshape(-1, k), self.weight)
        out = out.view(*x.shape[:-1], n)
        return out if self.bias is None else out + self.bias


class Float8Linear(nn.Module):
    def __init__(self, weight: Float8Weight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = float8_matmul(x, self.weight)
        return out if self.bias is None else out + self.bias


class InputPermutedLinear(nn.Module):
    """A layer whose weight's input columns are stored out of order (GPTQ's act-order
    sorts them by group): y = x[..., order] @ W^T + bias, W quantized in `inner`."""

    def __init__(self, order: torch.Tensor, inner: nn.Module, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.order, self.inner, self.bias = order, inner, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x.index_select(-1, self.order))
        return out if self.bias is None else out + self.bias


class DequantizingEmbedding(nn.Module):
    """Rows of a quantized W, expanded as they are looked up."""

    def __init__(self, weight: BlockQuantizedWeight | Float8Weight, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight, self.dtype = weight, dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _rows(self.weight, ids.reshape(-1)).to(self.dtype).view(*ids.shape, -1)


class Int4PackedLinear(nn.Module):
    """torch's int4 weight-only product, w = (q - 8) * scale + zero per group of 32: our
    w = scale * q + offset with zero = offset + 8 * scale."""

    def __init__(self, weight: BlockQuantizedWeight, bias: torch.Tensor | None, dtype) -> None:
        super().__init__()
        self.n = weight.shape[0]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            weight.codes.to(torch.int32), INT4_INNER_K_TILES
        )
        zeros = 8 * weight.scales
        if weight.offsets is not None:
            zeros += weight.offsets
        self.scales_and_zeros = torch.stack([weight.scales.t(), zeros.t()], dim=-1).to(dtype)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.packed, 32, self.scales_and_zeros
        ).view(*x.shape[:-1], self.n)
        return out if self.bias is None else out + self.bias


class Int8PackedLinear(nn.Module):
    """torch's int8 weight-only product, one scale per output row."""

    def __init__(self, weight: BlockQuantizedWeight, bias: torch.Tensor | None, dtype) -> None:
        super().__init__()
        self.codes = weight.codes.view(torch.int8)
        self.scales = weight.scales[:, 0].to(dtype)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.aten._weight_int8pack_mm(rows, self.codes, self.scales)
        out = out.view(*x.shape[:-1], self.codes.shape[0])
        return out if self.bias is None else out + self.bias


@cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _one_scale_per_row(weight: BlockQuantizedWeight) -> bool:
    return bool((weight.scales == weight.scales[:, :1]).all())


def _rows(weight: BlockQuantizedWeight | Float8Weight, index: torch.Tensor) -> torch.Tensor:
    if isinstance(weight, Float8Weight):
        return dequantize_float8(
            Float8Weight(weight.values[index], weight.scales[index], weight.block_k),
            torch.float32,
        )
    offsets = None if weight.offsets is None else weight.offsets[index]
    picked = BlockQuantizedWeight(weight.bits, weight.codes[index], weight.scales[index], offsets)
    return dequantize(picked)


def _to(weight, device: torch.device):
    """A quantized weight with its tensors moved to `device`."""
    fields = {name: getattr(weight, name) for name in weight.__dataclass_fields__}
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in fields.items()}
    return type(weight)(**moved)
