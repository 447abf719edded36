"""Kimi Delta Attention (KDA): the linear attention of three in four Kimi Linear layers, as
transformers' KimiLinearDeltaAttention computes it.

q, k and v are projected from the token, pass a short causal convolution with SiLU, and
q and k are L2-normalised per head. A forget gate gives each key channel of each head its
decay (g = -exp(A_log) * softplus(f_b(f_a(x)) + dt_bias)); beta = sigmoid(b_proj(x)) is how
strongly the token overwrites what the state holds for its key (kda_ops.py has the
recurrence, kda_recurrence.py runs it over a batch on the device's kernels). The output
passes an RMSNorm gated by sigmoid(g_b(g_a(x))), then o_proj.

Instead of a KV cache each sequence has a fixed-size state, its conv inputs and the KDA
state [heads, k_dim, v_dim] in float32, kept in the engine's state pool and read and
written through the slot the batch's metadata gives each sequence; where the metadata
asks, the state partway through a chunk is also saved as a prefix-cache checkpoint."""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.kda_recurrence import kda_recurrence
from tome.layers.layer_state import StatefulLayer, StateSpec, checkpoint_stepped, state_pieces
from tome.layers.short_conv import ShortConvolution

SOFTPLUS_LINEAR_FROM = 20.0  # softplus(x) is x to float precision past this


class GatedRMSNorm(nn.Module):
    """RMSNorm per head, all in float32, times sigmoid(gate)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32 * torch.sigmoid(gate.float())).to(x.dtype)


class KimiDeltaAttention(StatefulLayer):
    def __init__(self, hf: Any) -> None:
        """hf: a kimi_linear transformers config."""
        super().__init__()
        hidden = hf.hidden_size
        self.num_heads, self.head_dim = hf.linear_num_heads, hf.linear_head_dim
        width = self.num_heads * self.head_dim
        # q, k and v side by side, as the convolution takes them (checkpoints hold each).
        self.qkv_proj = nn.Linear(hidden, 3 * width, bias=False)
        self.conv1d = ShortConvolution(3 * width, hf.linear_conv_kernel_dim)
        self.f_a_proj = nn.Linear(hidden, self.head_dim, bias=False)
        self.f_b_proj = nn.Linear(self.head_dim, width, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(width), requires_grad=False)
        self.A_log = nn.Parameter(torch.empty(1, 1, self.num_heads, 1), requires_grad=False)
        self.b_proj = nn.Linear(hidden, self.num_heads, bias=False)
        self.g_a_proj = nn.Linear(hidden, self.head_dim, bias=False)
        self.g_b_proj = nn.Linear(self.head_dim, width, bias=False)
        self.o_norm = GatedRMSNorm(self.head_dim, hf.rms_norm_eps)
        self.o_proj = nn.Linear(width, hidden, bias=False)
        self.conv_state = torch.empty(0)  # [slots, 3 * width, taps - 1], once bound
        self.recurrent_state = torch.empty(0)  # [slots, heads, k_dim, v_dim] float32

    def _apply(self, fn: Callable, recurse: bool = True) -> "KimiDeltaAttention":
        # transformers keeps dt_bias in float32 whatever dtype the model is cast to.
        super()._apply(fn, recurse)
        self.dt_bias.data = self.dt_bias.data.float()
        return self

    def state_specs(self, dtype: torch.dtype) -> dict[str, StateSpec]:
        heads, dim = self.num_heads, self.head_dim
        return {
            "conv": StateSpec((3 * heads * dim, self.conv1d.state_width), dtype),
            "recurrent": StateSpec((heads, dim, dim), torch.float32),
        }

    def bind_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.conv_state, self.recurrent_state = tensors["conv"], tensors["recurrent"]

    def forward(self, x: torch.Tensor, cos_sin: Any, meta: AttentionMetadata) -> torch.Tensor:
        """x [tokens, hidden] of a flattened batch; cos_sin is unused (no positions: the
        order of tokens is in the recurrence)."""
        tokens = x.shape[0]
        q, k, v = self._split_heads(self._convolve(self.qkv_proj(x), meta))
        beta = torch.sigmoid(self.b_proj(x))
        core = kda_recurrence(q, k, v, self._forget_gate(x), beta, self.recurrent_state, meta)
        gate = self.g_b_proj(self.g_a_proj(x)).view(tokens, self.num_heads, self.head_dim)
        return self.o_proj(self.o_norm(core.to(x.dtype), gate).reshape(tokens, -1))

    def _forget_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Each token's log decay per head and key channel, [tokens, heads, k_dim] float32."""
        g = self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias.float()
        g = g.view(x.shape[0], self.num_heads, self.head_dim)
        # transformers' softplus, log(1 + exp(g)) below the threshold (not log1p).
        softplus = torch.where(g > SOFTPLUS_LINEAR_FROM, g, torch.log(1.0 + torch.exp(g)))
        return -self.A_log.float().exp().view(self.num_heads, 1) * softplus

    def _split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return qkv.view(qkv.shape[0], 3, self.num_heads, self.head_dim).unbind(1)

    def _convolve(self, mixed: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q, k and v side by side through the short convolution, each sequence after the
        inputs its conv state keeps (none where the batch starts it); the states written
        back, and at the batch's checkpoints."""
        out = torch.empty_like(mixed)
        decodes = meta.num_decodes
        if decodes:
            out[:decodes] = self._convolve_step(mixed[:decodes], meta)
        for seq in range(decodes, meta.num_seqs):
            rows = slice(meta.query_start_loc_cpu[seq], meta.query_start_loc_cpu[seq + 1])
            out[rows] = self._convolve_chunk(mixed[rows], meta, seq)
        return out

    def _convolve_step(self, mixed: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """One token of each of the batch's first sequences, all at once: their conv
        states are gathered from the pool, stepped, and written back."""
        slots = meta.state_slots[: mixed.shape[0]]
        states = self.conv_state[slots]
        fresh = [seq for seq in range(mixed.shape[0]) if meta.starts_sequence(seq)]
        if fresh:  # one-token prompts: nothing before them
            states[fresh] = 0
        out = self.conv1d.forward_step(mixed, states)
        self.conv_state.index_copy_(0, slots, states)
        checkpoint_stepped(self.conv_state, meta, mixed.shape[0])
        return out

    def _convolve_chunk(
        self, mixed: torch.Tensor, meta: AttentionMetadata, seq: int
    ) -> torch.Tensor:
        """One sequence's chunk, in pieces where a checkpoint splits it, each piece's end
        state saved where asked."""
        slot = meta.state_slots_cpu[seq]
        state = None if meta.starts_sequence(seq) else self.conv_state[slot]
        outs = []
        for rows, into in state_pieces(mixed.shape[0], slot, meta.state_checkpoint(seq)):
            out, state = self.conv1d.forward_chunk(mixed[rows], state)
            for target in into:
                self.conv_state[target] = state
            outs.append(out)
        return torch.cat(outs)
