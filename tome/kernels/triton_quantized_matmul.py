"""y = x @ W^T on the GPU with W kept in 4- or 8-bit blocks (BlockQuantizedWeight), expanded
in registers tile by tile rather than into a float copy of the whole weight per call.

Decoding reads every weight once a token, so its speed is the bytes of weight read: half a
byte a weight in 4 bits and one in 8, against two in bfloat16. The kernel is the usual
w4a16 / w8a16 shape (gpt-fast's, vLLM's Triton AWQ): each program owns a tile of BLOCK_M
rows by BLOCK_N output columns and walks k in steps of BLOCK_K, loading the codes of its
columns and their blocks' scales (and offsets), expanding them to w = scale * q + offset in
float32, rounding to the activations' dtype for tl.dot, accumulating in float32 and
rounding the tile once to x's dtype at the end, as a matmul does.

4-bit codes are packed two to a byte along k once, at load (`pack_for_triton`): the GPU
then reads half a byte a weight. Both codes of a byte are read by loading that byte for
each of its two k positions (the same cache line twice, one trip to memory) and shifting
out the nibble: simpler than splitting and interleaving halves in registers."""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tome.kernels.block_quantized_matmul import BLOCK, BlockQuantizedWeight
from tome.kernels.dot_dtype import dot_dtype, dot_precision
from tome.kernels.triton_layer_ops import rounded

# Tiles: output columns and reduction step (two blocks of 32) of a program; its rows are
# the fewest powers of two from 16 (tl.dot's least) up to BLOCK_M that hold the batch, so
# a decode step of one token does not multiply 63 rows of padding.
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 64
MIN_BLOCK_M = 16


@dataclass
class TritonPackedWeight:
    """A BlockQuantizedWeight as the kernel reads it: `codes` uint8 [n, k / 2] for 4 bits
    (the low nibble holds the even k, the high one the odd), int8 [n, k] for 8 bits;
    `scales` and `offsets` float32 [n, k / 32] as they were."""

    bits: int
    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.scales.shape[0], self.scales.shape[1] * BLOCK


def pack_for_triton(weight: BlockQuantizedWeight) -> TritonPackedWeight:
    """The weight in the kernel's layout, on its device; run once, as the model loads."""
    if weight.bits == 4:
        codes = weight.codes[:, 0::2] | (weight.codes[:, 1::2] << 4)
    else:
        codes = weight.codes.view(torch.int8)
    offsets = None if weight.offsets is None else weight.offsets.contiguous()
    return TritonPackedWeight(weight.bits, codes.contiguous(), weight.scales.contiguous(), offsets)


@triton.jit
def _quantized_matmul_kernel(
    x_ptr,  # [M, K] contiguous
    codes_ptr,  # [N, K / 2] uint8 for BITS 4, [N, K] int8 for BITS 8, contiguous
    scales_ptr,  # [N, K / 32] float32 contiguous
    offsets_ptr,  # [N, K / 32] float32 contiguous (read only if HAS_OFFSETS)
    out_ptr,  # [M, N] contiguous
    M,
    N,
    K,
    BITS: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row_block, column_block = tl.program_id(0), tl.program_id(1)
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    columns = column_block * BLOCK_N + tl.arange(0, BLOCK_N)
    # int64 offsets: an LM head's codes can pass 2^31 bytes.
    column_offsets = columns.to(tl.int64)[None, :]
    code_row = K * BITS // 8  # bytes of codes per output column
    groups = K // 32  # blocks of 32 (BLOCK) per output column
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        inner = start + tl.arange(0, BLOCK_K)
        a = tl.load(
            x_ptr + rows.to(tl.int64)[:, None] * K + inner[None, :],
            mask=(rows[:, None] < M) & (inner[None, :] < K),
            other=0.0,
        )
        # W^T's tile [BLOCK_K, BLOCK_N]: column j's codes are contiguous along k.
        valid = (inner[:, None] < K) & (columns[None, :] < N)
        if BITS == 4:
            packed = tl.load(
                codes_ptr + column_offsets * code_row + inner[:, None] // 2, mask=valid, other=0
            )
            q = (packed >> ((inner[:, None] % 2) * 4).to(tl.uint8)) & 0xF
        else:
            q = tl.load(codes_ptr + column_offsets * code_row + inner[:, None], mask=valid, other=0)
        block = column_offsets * groups + inner[:, None] // 32
        w = q.to(tl.float32) * tl.load(scales_ptr + block, mask=valid, other=0.0)
        if HAS_OFFSETS:
            w += tl.load(offsets_ptr + block, mask=valid, other=0.0)
        acc += tl.dot(a.to(DOT), w.to(DOT), input_precision=PRECISION)
    out = out_ptr + rows.to(tl.int64)[:, None] * N + columns[None, :]
    tl.store(
        out,
        rounded(acc, out_ptr.dtype.element_ty),
        mask=(rows[:, None] < M) & (columns[None, :] < N),
    )


def rows_per_tile(m: int) -> int:
    """BLOCK_M for a product of m rows: a power of two from MIN_BLOCK_M to BLOCK_M."""
    return min(BLOCK_M, max(MIN_BLOCK_M, triton.next_power_of_2(m)))


def quantized_matmul(x: torch.Tensor, weight: TritonPackedWeight) -> torch.Tensor:
    """x [m, k] (bfloat16, float16 or float32, on the weight's device) times W^T: [m, n] in
    x's dtype, accumulated in float32."""
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = rows_per_tile(m)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, BLOCK_N))
    has_offsets = weight.offsets is not None
    _quantized_matmul_kernel[grid](
        x.contiguous(),
        weight.codes,
        weight.scales,
        weight.offsets if has_offsets else weight.scales,  # a valid pointer, never read
        out,
        m,
        n,
        k,
        BITS=weight.bits,
        HAS_OFFSETS=has_offsets,
        DOT=dot_dtype(x.dtype),
        PRECISION=dot_precision(x.dtype),
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    return out
