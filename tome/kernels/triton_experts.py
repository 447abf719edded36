"""A layer's experts on the GPU as two grouped matrix products (Triton), not a loop over
experts: the (token, expert) assignments are sorted by expert and laid out in blocks of
BLOCK_M rows, each block belonging to one expert, so one launch multiplies every active
expert's rows by its own weight (gate and up fused), and a second does the down
projections. The layout is built with tensor ops on the device (no host sync, so a CUDA
graph can hold it): each expert's rows start at a multiple of BLOCK_M, padded with -1.

The products accumulate in float32 and round to the activations' dtype once, as a matmul
does; the weighted sum over a token's experts is added in float32."""

import torch
import triton
import triton.language as tl

from tome.kernels.dot_dtype import dot_dtype, dot_precision
from tome.kernels.triton_layer_ops import rounded, silu_and_mul

# Tiles: rows of a block (one expert's), output columns and reduction step of a program.
BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 32


@triton.jit
def _grouped_matmul_kernel(
    x_ptr,  # [rows_in, K] contiguous; row r of the input is x[source[r]]
    source_ptr,  # [padded] input row of each padded row, -1 for padding
    block_expert_ptr,  # [padded / BLOCK_M] the expert of each block, num_experts past the end
    w_ptr,  # [experts, N, K] contiguous
    out_ptr,  # [padded, N] contiguous
    N,
    K,
    num_experts,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    block, column_block = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    if expert < num_experts:
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        source = tl.load(source_ptr + rows).to(tl.int64)
        valid = source >= 0
        columns = column_block * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            inner = start + tl.arange(0, BLOCK_K)
            a = tl.load(
                x_ptr + source[:, None] * K + inner[None, :],
                mask=valid[:, None] & (inner[None, :] < K),
                other=0.0,
            )
            b = tl.load(
                w_ptr + expert * N * K + columns[None, :] * K + inner[:, None],
                mask=(columns[None, :] < N) & (inner[:, None] < K),
                other=0.0,
            )
            acc += tl.dot(a.to(DOT), b.to(DOT), input_precision=PRECISION)
        out = out_ptr + rows[:, None].to(tl.int64) * N + columns[None, :]
        tl.store(out, rounded(acc, out_ptr.dtype.element_ty), mask=columns[None, :] < N)


def expert_layout(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ids [tokens, k]: each padded row's assignment (index into ids.flatten(), -1 for
    padding) and each block's expert, sized for the most padding any routing can need."""
    flat = ids.flatten()
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded_start = padded.cumsum(0) - padded
    start = counts.cumsum(0) - counts
    capacity = flat.numel() + num_experts * (BLOCK_M - 1)
    capacity = (capacity + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    experts_sorted = flat[order]
    position = padded_start[experts_sorted] + torch.arange(flat.numel(), device=flat.device)
    position -= start[experts_sorted]
    assignment = torch.full((capacity,), -1, dtype=torch.int64, device=flat.device)
    assignment[position] = order
    block_starts = torch.arange(0, capacity, BLOCK_M, device=flat.device)
    block_expert = torch.searchsorted(padded.cumsum(0), block_starts, right=True)
    return assignment, block_expert


def grouped_matmul(
    x: torch.Tensor,
    source: torch.Tensor,
    block_expert: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """[padded, N]: padded row r is x[source[r]] @ weight[its block's expert].T (zeros
    where source is -1)."""
    experts, n, k = weight.shape
    out = torch.zeros(source.numel(), n, dtype=x.dtype, device=x.device)
    grid = (block_expert.numel(), triton.cdiv(n, BLOCK_N))
    _grouped_matmul_kernel[grid](
        x.contiguous(),
        source,
        block_expert,
        weight.contiguous(),
        out,
        n,
        k,
        experts,
        DOT=dot_dtype(x.dtype),
        PRECISION=dot_precision(x.dtype),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    return out


def triton_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
) -> torch.Tensor:
    """FusedExperts' forward: x [tokens, hidden], weights and ids [tokens, k], gate_up
    [experts, 2 x intermediate, hidden], down [experts, hidden, intermediate]."""
    k = ids.shape[1]
    assignment, block_expert = expert_layout(ids, gate_up.shape[0])
    valid = assignment >= 0
    token = torch.where(valid, assignment // k, -1)
    hidden = silu_and_mul(grouped_matmul(x, token, block_expert, gate_up))
    own_row = torch.where(valid, torch.arange(valid.numel(), device=x.device), -1)
    y = grouped_matmul(hidden, own_row, block_expert, down)
    weight = weights.flatten()[assignment.clamp(min=0)].float() * valid
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, token.clamp(min=0), y.float() * weight[:, None])
    return out.to(x.dtype)
