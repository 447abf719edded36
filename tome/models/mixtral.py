"""Mixtral: Llama attention, and in every layer a sparse block of experts chosen by a
softmax router, top-k always renormalised; the weights stay float32, as transformers keeps
them. Checkpoints name the block `block_sparse_moe` and the experts' gate, down and up
projections w1, w2 and w3."""

import torch
from torch import nn

from tome.layers.moe import FusedExperts, softmax_top_k
from tome.models.config import ModelConfig
from tome.models.sparse_moe import SparseMoeForCausalLM


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hf = config.hf_config
        self.top_k = hf.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, hf.num_local_experts, bias=False)
        self.experts = FusedExperts(
            hf.num_local_experts, config.hidden_size, config.intermediate_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = softmax_top_k(self.gate(x), self.top_k, renormalize=True)
        return self.experts(x, weights, ids)


class MixtralForCausalLM(SparseMoeForCausalLM):
    CHECKPOINT_RENAMES = (
        (".mlp.", ".block_sparse_moe."),
        (".gate_proj.", ".w1."),
        (".down_proj.", ".w2."),
        (".up_proj.", ".w3."),
    )

    def make_mlp(self, layer_index: int) -> nn.Module:
        return MixtralSparseMoeBlock(self.config)
