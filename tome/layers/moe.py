"""Mixture-of-Experts: the experts of one layer held together, computed as a batch.

Each token picks `k` experts; the assignments are grouped by expert, so every active
expert runs one matrix product over all its tokens (gate and up fused, then down), never a
loop over tokens. Contributions are added in expert order, as transformers adds them, so
a token's sum rounds as the reference's does."""

from collections.abc import Callable

import torch
from torch import nn

from tome.kernels import cpu_isa
from tome.layers.activation import silu_and_mul
from tome.layers.layer_kernels import uses_triton

# Rows from which a bfloat16 expert product is widened to float32 where the CPU has no
# bfloat16 dot products: at 8 rows the two take the same time, at 1 the widening costs 3x.
WIDEN_FROM_ROWS = 16
BFLOAT16_DOT_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def softmax_top_k(
    logits: torch.Tensor, k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k likeliest experts per token and their softmax weights (float32, as
    transformers' routers compute them), renormalised to sum to 1 when asked."""
    probs = logits.float().softmax(dim=-1)
    weights, ids = probs.topk(k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class FusedExperts(nn.Module):
    """num_experts SwiGLU experts: gate_up_proj [experts, 2 * intermediate, hidden] (gate
    rows first) and down_proj [experts, hidden, intermediate]."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size), requires_grad=False
        )
        self.down_proj = nn.Parameter(
            torch.empty(num_experts, hidden_size, intermediate_size), requires_grad=False
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [tokens, hidden]; weights and ids [tokens, k]. Each token's weighted sum of its
        experts' outputs, the products taken in the weights' dtype. Where Triton runs the
        layer ops (the GPU), two grouped matrix products over all experts instead."""
        if uses_triton(x):
            # Imported only when chosen: Triton is an optional dependency.
            from tome.kernels.triton_experts import triton_experts

            return triton_experts(x, weights, ids, self.gate_up_proj, self.down_proj)
        return sum_over_experts(x, weights, ids, self.num_experts, self._expert)

    def _expert(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        hidden = silu_and_mul(_times_transposed(x, self.gate_up_proj[expert]))
        return _times_transposed(hidden, self.down_proj[expert])


def _times_transposed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T. In bfloat16 on a CPU without bfloat16 dot products (no AVX512-BF16 or
    AMX), torch's product of many rows runs 2.2x slower than widening both to float32
    first (64 rows by a 2,048 x 1,536 expert: 6.7 ms against 3.0 on a 2-core Xeon); both
    accumulate in float32 and round the result to bfloat16 once."""
    if x.dtype == torch.bfloat16 and x.shape[0] >= WIDEN_FROM_ROWS and _widens_bfloat16(x):
        return (x.float() @ weight.float().T).to(torch.bfloat16)
    return x @ weight.T


def _widens_bfloat16(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not cpu_isa.cpu_flags() & BFLOAT16_DOT_FLAGS


def sum_over_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    num_experts: int,
    expert_forward: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Each token's sum of expert_forward(expert, its rows) weighted, the assignments
    grouped by expert so that each active expert runs once over all its tokens."""
    k = ids.shape[1]
    flat_weights = weights.flatten()
    out = torch.zeros_like(x)
    for expert, assignments in expert_groups(ids, num_experts):
        tokens = assignments // k
        y = expert_forward(expert, x[tokens]) * flat_weights[assignments, None]
        out.index_add_(0, tokens, y.to(out.dtype))
    return out


def expert_groups(ids: torch.Tensor, num_experts: int) -> list[tuple[int, torch.Tensor]]:
    """(expert, its assignments as indices into ids.flatten()) for every active expert, in
    expert order: contributions are added in that order, as transformers adds them."""
    if ids.shape[0] == 1:
        # One token (a decode step of one sequence): no sorting and counting over every
        # expert, only its k.
        slots = sorted(zip(ids[0].tolist(), range(ids.shape[1]), strict=True))
        return [(expert, torch.tensor([slot])) for expert, slot in slots]
    flat_ids = ids.flatten()
    order = flat_ids.argsort(stable=True)
    counts = torch.bincount(flat_ids, minlength=num_experts).tolist()
    groups, start = [], 0
    for expert, count in enumerate(counts):
        if count:
            groups.append((expert, order[start : start + count]))
            start += count
    return groups
