"""Qwen2-MoE and Qwen3-MoE: Llama attention (q/k/v bias for Qwen2-MoE, q/k norms for
Qwen3-MoE) and sparse blocks of experts chosen by a softmax router, top-k renormalised only
when `norm_topk_prob`, the weights cast to the model's dtype as transformers casts them.
Qwen2-MoE adds a shared expert scaled by sigmoid(shared_expert_gate(x)). Layers listed in
`mlp_only_layers`, or off the `decoder_sparse_step` stride, keep a dense MLP."""

import torch
from torch import nn

from tome.layers.moe import FusedExperts, softmax_top_k
from tome.models.config import ModelConfig
from tome.models.llama import LlamaMLP
from tome.models.sparse_moe import SparseMoeForCausalLM


class QwenMoeSparseBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hf = config.hf_config
        self.top_k = hf.num_experts_per_tok
        self.renormalize = bool(getattr(hf, "norm_topk_prob", False))
        self.gate = nn.Linear(config.hidden_size, hf.num_experts, bias=False)
        self.experts = FusedExperts(hf.num_experts, config.hidden_size, hf.moe_intermediate_size)
        shared_size = getattr(hf, "shared_expert_intermediate_size", 0)
        self.shared_expert = LlamaMLP(config, shared_size) if shared_size else None
        self.shared_expert_gate = (
            nn.Linear(config.hidden_size, 1, bias=False) if shared_size else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = softmax_top_k(self.gate(x), self.top_k, self.renormalize)
        out = self.experts(x, weights.to(x.dtype), ids)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


class QwenMoeForCausalLM(SparseMoeForCausalLM):
    def make_mlp(self, layer_index: int) -> nn.Module:
        hf = self.config.hf_config
        sparse = (
            layer_index not in (getattr(hf, "mlp_only_layers", None) or [])
            and hf.num_experts > 0
            and (layer_index + 1) % getattr(hf, "decoder_sparse_step", 1) == 0
        )
        return QwenMoeSparseBlock(self.config) if sparse else LlamaMLP(self.config)
