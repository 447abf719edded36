"""Multi-head Latent Attention (DeepSeek-V2/V3, Moonlight, Kimi-K2), in the absorbed form.

Each token's keys and values come from one compressed latent (kv_lora_rank values,
normalised) and one rotary key shared by every head (qk_rope_head_dim values). The paged
cache holds only these, side by side: 576 values a token and layer for V3, one KV head.
Attention runs over them directly: W_UK (the key half of kv_b_proj) is folded into each
head's query, so a query is [q_nope @ W_UK, q_rope] against the cached [latent, k_rope];
the weighted sum of latents is expanded by W_UV (the value half) afterwards. The values
read are the whole cached vector (a latent cache's K is its V); the rotary key's share of
the sum is dropped before W_UV. Every attention backend serves it as multi-query attention
with a 576-wide head, prefill and decode alike, so expanded K/V never exist."""

from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import yarn_apply_mscale

from tome.layers.attention import Attention
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.rmsnorm import RMSNorm
from tome.layers.rotary import apply_rotary, rope_parameters

# The q_a and kv_a norms' eps: transformers (after DeepSeek's and Kimi's own code) builds
# them with the norm's default, not the config's rms_norm_eps.
LATENT_NORM_EPS = 1e-6


class LatentExpansion(nn.Module):
    """kv_b_proj: per head, the rows that expand a latent into the head's key without
    rotary (W_UK) and its value (W_UV). Absorbed, never applied as a linear layer, so not
    an nn.Linear: the loader's rewrites of linear layers pass it by."""

    def __init__(self, num_heads: int, nope_dim: int, v_head_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.num_heads, self.nope_dim, self.v_head_dim = num_heads, nope_dim, v_head_dim
        self.weight = nn.Parameter(
            torch.empty(num_heads * (nope_dim + v_head_dim), latent_dim), requires_grad=False
        )

    def per_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [heads, nope, latent] and W_UV [heads, v, latent], views of the weight."""
        per_head = self.weight.view(self.num_heads, -1, self.weight.shape[1])
        return per_head.split([self.nope_dim, self.v_head_dim], dim=1)


class LatentAttention(nn.Module):
    def __init__(self, hf: Any, interleaved_rope: bool, rotary: bool = True) -> None:
        """hf: a DeepSeek-style transformers config. interleaved_rope: whether the rotary
        dimensions pair up as (0, 1), (2, 3), ... (DeepSeek's own layout) rather than as
        the two halves. rotary: False where those dimensions are not rotated (Kimi
        Linear)."""
        super().__init__()
        self.rotary = rotary
        self.num_heads = hf.num_attention_heads
        self.nope_dim, self.rope_dim = hf.qk_nope_head_dim, hf.qk_rope_head_dim
        self.v_head_dim, self.kv_lora_rank = hf.v_head_dim, hf.kv_lora_rank
        self.interleaved_rope = interleaved_rope
        qk_head_dim = self.nope_dim + self.rope_dim
        bias = bool(getattr(hf, "attention_bias", False))
        if hf.q_lora_rank:
            self.q_a_proj = nn.Linear(hf.hidden_size, hf.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(hf.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(hf.q_lora_rank, self.num_heads * qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(hf.hidden_size, self.num_heads * qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(
            hf.hidden_size, self.kv_lora_rank + self.rope_dim, bias=bias
        )
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = LatentExpansion(
            self.num_heads, self.nope_dim, self.v_head_dim, self.kv_lora_rank
        )
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hf.hidden_size, bias=bias)
        # YaRN's mscale_all_dim scales every dimension's scores, not only the rotary ones.
        scale = qk_head_dim**-0.5
        if rotary:
            scale = yarn_apply_mscale(rope_parameters(hf), scale)
        self.attn = Attention(self.num_heads, 1, self.kv_lora_rank + self.rope_dim, scale)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor] | None,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """cos_sin: the batch's rotary cos and sin; None without rotary."""
        tokens = x.shape[0]
        q = self._queries(x).view(tokens, self.num_heads, -1)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], -1)
        latent = self.kv_a_layernorm(latent.contiguous())
        k_rope = k_rope[:, None, :]
        if self.rotary:
            q_rope, k_rope = self._rotate(q_rope, cos_sin), self._rotate(k_rope, cos_sin)
        w_uk, w_uv = self.kv_b_proj.per_head()
        # Per head: q_nope [tokens, nope] @ W_UK [nope, latent].
        q_latent = torch.bmm(q_nope.transpose(0, 1), w_uk).transpose(0, 1)
        query = torch.cat((q_latent, q_rope), dim=-1)
        key = torch.cat((latent[:, None, :], k_rope), dim=-1)
        out = self.attn(query, key, key, meta)[..., : self.kv_lora_rank]
        # Per head: the latents' weighted sum [tokens, latent] @ W_UV^T [latent, v].
        values = torch.bmm(out.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)
        return self.o_proj(values.reshape(tokens, self.num_heads * self.v_head_dim))

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def _rotate(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [tokens, heads, rope_dim] rotated. Interleaved pairs are gathered into halves
        first (evens, then odds), as transformers' DeepSeek-V3 does: queries and keys are
        permuted alike, so their products are those of the pairwise rotation."""
        if self.interleaved_rope:
            x = torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)
        return apply_rotary(x.contiguous(), *cos_sin)
