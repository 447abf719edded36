"""DeepSeek-V2 and DeepSeek-V3 (and the models built on them: Moonlight, Kimi-K2): the
decoder of llama.py with latent attention (layers/latent_attention.py) and, from layer
`first_k_dense_replace` on, a sparse block of routed experts plus always-on shared experts.

V2 routes on softmax scores (greedy or group-limited top-k, never renormalised); V3 on
sigmoid scores steered by `e_score_correction_bias`, within the best groups, renormalised
when `norm_topk_prob` (layers/moe_routing.py). Both scale the routed weights by
`routed_scaling_factor`. The router's weights and bias stay float32 in a bfloat16 model, as
transformers keeps them, and it computes in float32."""

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tome.errors import ModelLoadError
from tome.layers.latent_attention import LatentAttention
from tome.layers.moe import FusedExperts
from tome.layers.moe_routing import deepseek_v2_top_k, deepseek_v3_top_k
from tome.models.config import ModelConfig
from tome.models.llama import LlamaMLP
from tome.models.sparse_moe import SparseMoeForCausalLM

LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.")


class Float32Router(nn.Module):
    """A router's weight [experts, hidden], and V3's selection bias [experts]: float32
    whatever dtype the model is cast to."""

    def __init__(self, num_experts: int, hidden_size: int, has_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size), requires_grad=False)
        if has_bias:
            self.e_score_correction_bias = nn.Parameter(
                torch.empty(num_experts), requires_grad=False
            )

    def _apply(self, fn: Callable, recurse: bool = True) -> "Float32Router":
        return super()._apply(lambda t: fn(t).float(), recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight)


class DeepseekMoE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hf = config.hf_config
        # V3's router also serves Kimi Linear.
        self.is_v3 = config.architecture != "DeepseekV2ForCausalLM"
        self.hf = hf
        num_experts = routed_experts(hf)
        self.gate = Float32Router(num_experts, config.hidden_size, has_bias=self.is_v3)
        self.experts = FusedExperts(num_experts, config.hidden_size, hf.moe_intermediate_size)
        shared_size = hf.moe_intermediate_size * hf.n_shared_experts
        self.shared_experts = LlamaMLP(config, shared_size, bias=_mlp_bias(hf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self._route(self.gate(x))
        return self.experts(x, weights, ids) + self.shared_experts(x)

    def _route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hf = self.hf
        if self.is_v3:
            return deepseek_v3_top_k(
                logits,
                self.gate.e_score_correction_bias,
                hf.num_experts_per_tok,
                hf.n_group,
                hf.topk_group,
                bool(hf.norm_topk_prob),
                hf.routed_scaling_factor,
            )
        return deepseek_v2_top_k(
            logits,
            hf.num_experts_per_tok,
            hf.topk_method,
            hf.n_group,
            hf.topk_group,
            hf.routed_scaling_factor,
        )


class DeepseekForCausalLM(SparseMoeForCausalLM):
    def __init__(self, config: ModelConfig) -> None:
        _check_routing(config)
        super().__init__(config)

    def make_attention(self, layer_index: int) -> nn.Module:
        # V2 rotates interleaved pairs (as complex numbers); V3 says which in its config.
        is_v3 = self.config.architecture == "DeepseekV3ForCausalLM"
        interleaved = bool(getattr(self.config.hf_config, "rope_interleave", True)) or not is_v3
        return LatentAttention(self.config.hf_config, interleaved)

    def make_mlp(self, layer_index: int) -> nn.Module:
        hf = self.config.hf_config
        if layer_index >= (hf.first_k_dense_replace or 0):
            return DeepseekMoE(self.config)
        return LlamaMLP(self.config, bias=_mlp_bias(hf))

    def load_weights(self, weights: Iterable[tuple[str, Any]], device=None) -> None:
        """DeepSeek-V3's checkpoints carry its multi-token-prediction module as layers
        past num_hidden_layers; like transformers, the model skips them."""
        layers = self.config.num_hidden_layers
        super().load_weights(
            ((name, t) for name, t in weights if layer_of_tensor(name) < layers), device
        )

    def _target(self, name: str) -> tuple[str, int]:
        # Latent attention's projections are loaded as they are named (its q_proj is not
        # part of a fused q/k/v).
        if ".self_attn." in name:
            return name, 0
        return super()._target(name)


def routed_experts(hf) -> int:
    """DeepSeek's configs count their routed experts as n_routed_experts, Kimi Linear's as
    num_experts."""
    return getattr(hf, "n_routed_experts", None) or hf.num_local_experts


def layer_of_tensor(name: str) -> int:
    """The decoder layer a checkpoint tensor belongs to; -1 for the embedding, norm, head."""
    match = LAYER_NAME.match(name)
    return int(match.group(1)) if match else -1


def _mlp_bias(hf) -> bool:
    return bool(getattr(hf, "mlp_bias", False))


def _check_routing(config: ModelConfig) -> None:
    """Refuse, as one line, routing settings the router cannot follow."""
    hf = config.hf_config
    groups, experts = hf.n_group or 1, routed_experts(hf)
    if experts % groups or (hf.topk_group or 0) > groups:
        raise ModelLoadError(
            f"{experts} routed experts in n_group={hf.n_group} groups with "
            f"topk_group={hf.topk_group} is not a valid grouping"
        )
    method = getattr(hf, "topk_method", "noaux_tc")
    if config.architecture == "DeepseekV2ForCausalLM" and method not in (
        "greedy",
        "group_limited_greedy",
    ):
        raise ModelLoadError(f"DeepSeek-V2 topk_method {method!r} is not supported")
