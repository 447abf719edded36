"""Kimi Linear (transformers' `kimi_linear`): a hybrid of Kimi Delta Attention (KDA, linear
attention with a fixed-size state per sequence; layers/kimi_delta_attention.py) and latent
attention without rotary embeddings (DeepSeek's MLA in its absorbed form, NoPE), with
DeepSeek-V3's MoE: sigmoid router with selection bias, routed plus shared experts.

Which layer is which comes from the config's `layer_types` ("linear_attention" for KDA,
"full_attention" for MLA) and `mlp_layer_types` ("dense" or "sparse"); transformers derives
them from the checkpoint's `linear_attn_config` (kda_layers / full_attn_layers, numbered
from 1) and `first_k_dense_replace`. No positions are rotated anywhere: KDA's recurrence
carries the order of tokens, and the MLA layers see it through it.

Checkpoints name the MoE block `block_sparse_moe` with experts' w1/w2/w3 (gate, down, up),
dense layers' MLP `mlp` (a checkpoint saved by transformers names those
`block_sparse_moe` too; both load), and each KDA layer's q/k/v projections and their
convolutions separately (fused here into qkv_proj and conv1d)."""

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tome.errors import ModelLoadError
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.kimi_delta_attention import KimiDeltaAttention
from tome.layers.latent_attention import LatentAttention
from tome.layers.rmsnorm import RMSNorm
from tome.models.config import ModelConfig
from tome.models.deepseek import DeepseekForCausalLM, DeepseekMoE, layer_of_tensor
from tome.models.llama import LlamaDecoderLayer, LlamaMLP

DELTA_LAYER, LATENT_LAYER = "linear_attention", "full_attention"  # as layer_types names them
ATTENTION_KINDS = (DELTA_LAYER, LATENT_LAYER)
MLP_KINDS = ("dense", "sparse")
# A KDA layer's tensors that are shards of one of ours: name -> (fused name, shard).
DELTA_SHARDS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "q_conv1d": ("conv1d", 0),
    "k_conv1d": ("conv1d", 1),
    "v_conv1d": ("conv1d", 2),
}
FUSED_DELTA_WEIGHTS = ("qkv_proj", "conv1d")  # each q, k and v's rows in that order
# Expert projections: ours -> the checkpoint's.
EXPERT_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
OUR_EXPERT = re.compile(r"\.experts\.(\d+)\.(gate_proj|down_proj|up_proj)\.")
THEIR_EXPERT = re.compile(r"\.experts\.(\d+)\.(w1|w2|w3)\.")
DELTA_SHARD_NAME = re.compile(r"\.self_attn\.(" + "|".join(DELTA_SHARDS) + r")\.weight$")


class KimiLinearModel(nn.Module):
    """Embedding, decoder layers, final norm; no rotary embedding."""

    def __init__(
        self,
        config: ModelConfig,
        make_attention: Callable[[int], nn.Module],
        make_mlp: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, make_attention(i), make_mlp(i))
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        residual = self.embed_tokens(input_ids)
        x = None
        for layer in self.layers:
            x = layer(x, residual, None, meta)
        return self.norm(x, residual)


class KimiLinearForCausalLM(DeepseekForCausalLM):
    def __init__(self, config: ModelConfig) -> None:
        _check_layer_kinds(config)
        super().__init__(config)

    def make_model(self) -> nn.Module:
        return KimiLinearModel(self.config, self.make_attention, self.make_mlp)

    def make_attention(self, layer_index: int) -> nn.Module:
        hf = self.config.hf_config
        if self._is_delta(layer_index):
            return KimiDeltaAttention(hf)
        return LatentAttention(hf, interleaved_rope=False, rotary=False)

    def make_mlp(self, layer_index: int) -> nn.Module:
        if self.config.hf_config.mlp_layer_types[layer_index] == "sparse":
            return DeepseekMoE(self.config)
        return LlamaMLP(self.config)

    def kv_namespace(self, prompt_len: int) -> bytes:
        return b""  # no rope whose keys could depend on the prompt's length

    def _is_delta(self, layer: int) -> bool:
        return self.config.hf_config.layer_types[layer] == DELTA_LAYER

    def _to_checkpoint(self, name: str) -> str:
        layer = layer_of_tensor(name)
        if layer < 0 or self.config.hf_config.mlp_layer_types[layer] != "sparse":
            return name
        name = name.replace(".mlp.", ".block_sparse_moe.")
        return OUR_EXPERT.sub(lambda m: f".experts.{m[1]}.{EXPERT_NAMES[m[2]]}.", name)

    def _from_checkpoint(self, name: str) -> str:
        ours = {theirs: our for our, theirs in EXPERT_NAMES.items()}
        name = name.replace(".block_sparse_moe.", ".mlp.")
        return THEIR_EXPERT.sub(lambda m: f".experts.{m[1]}.{ours[m[2]]}.", name)

    def _target(self, name: str) -> tuple[str, int]:
        # Latent attention layers have a q_proj too, loaded as it is named.
        match = DELTA_SHARD_NAME.search(name)
        if match and self._is_delta(layer_of_tensor(name)):
            fused, shard = DELTA_SHARDS[match.group(1)]
            return name.replace(f".{match.group(1)}.", f".{fused}."), shard
        return super()._target(name)

    def _unpacked_shapes(self, name: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        if not _is_fused_delta_weight(name):
            return super()._unpacked_shapes(name, shape)
        fused = name.split(".")[-2]
        return {
            name.replace(f".{fused}.", f".{original}."): (shape[0] // 3, *shape[1:])
            for original, (target, _) in DELTA_SHARDS.items()
            if target == fused
        }

    def _shard_view(self, target_name: str, shard: int, data: torch.Tensor) -> torch.Tensor:
        if _is_fused_delta_weight(target_name):
            rows = data.shape[0] // 3
            return data.narrow(0, shard * rows, rows)
        return super()._shard_view(target_name, shard, data)

    def _shard_count(self, target: str) -> int:
        if _is_fused_delta_weight(target):
            return 3
        return super()._shard_count(target)


def _is_fused_delta_weight(name: str) -> bool:
    return name.endswith(tuple(f".self_attn.{fused}.weight" for fused in FUSED_DELTA_WEIGHTS))


def _check_layer_kinds(config: ModelConfig) -> None:
    """Refuse, as one line, a layer whose kind this file does not implement."""
    hf: Any = config.hf_config
    for name, kinds in (("layer_types", ATTENTION_KINDS), ("mlp_layer_types", MLP_KINDS)):
        types = list(getattr(hf, name, None) or [])
        if len(types) != config.num_hidden_layers:
            raise ModelLoadError(
                f"{name} lists {len(types)} layers; the model has {config.num_hidden_layers}"
            )
        for layer, kind in enumerate(types):
            if kind not in kinds:
                raise ModelLoadError(
                    f"layer {layer} has {name[:-1].replace('_', ' ')} {kind!r}; Kimi Linear's "
                    f"are {' and '.join(repr(k) for k in kinds)}"
                )
    if config.num_cache_layers == 0:
        raise ModelLoadError("a Kimi Linear model needs at least one full_attention layer")
