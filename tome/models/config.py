"""ModelConfig: the few numbers a model file needs, read from a transformers config."""

from dataclasses import dataclass, field
from typing import Any

from tome.errors import ModelLoadError, UnsupportedArchitectureError
from tome.layers.rotary import context_window

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "KimiLinearForCausalLM",
)
# Layer types (a config's `layer_types`) that keep a fixed-size recurrent state instead of
# KV in the paged cache.
RECURRENT_LAYER_TYPES = ("linear_attention",)
# Families whose attention has q/k/v biases, and those with RMSNorm on q and k per head.
QKV_BIAS_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM")
QK_NORM_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int  # the window, stretched where rope scaling stretches it
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    # Mistral-style sliding-window attention; None when the model attends to everything.
    sliding_window: int | None = None
    # Latent attention (DeepSeek's MLA) caches one vector per token and layer, the
    # compressed latent and the rotary key side by side, read as both K and V.
    latent_cache_dim: int | None = None
    # Layers with K/V in the paged cache; in a hybrid model (Kimi Linear) the others keep
    # recurrent state instead. None: every layer.
    num_cache_layers: int | None = None
    hf_config: Any = field(repr=False, default=None)

    def __post_init__(self) -> None:
        _check_supported(self.architecture)
        if self.num_cache_layers is None:
            self.num_cache_layers = self.num_hidden_layers
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @property
    def cache_kv_heads(self) -> int:
        """KV heads per token and layer in the paged cache."""
        return 1 if self.latent_cache_dim else self.num_key_value_heads

    @property
    def cache_head_dim(self) -> int:
        return self.latent_cache_dim or self.head_dim

    @property
    def cache_tensors_per_layer(self) -> int:
        """2 for K and V; 1 for a latent cache, whose one tensor serves as both."""
        return 1 if self.latent_cache_dim else 2

    @classmethod
    def from_hf(cls, hf_config: Any) -> "ModelConfig":
        """Build from a transformers PretrainedConfig (from config.json or a GGUF file)."""
        architectures = getattr(hf_config, "architectures", None) or [
            _architecture_from_model_type(getattr(hf_config, "model_type", ""))
        ]
        architecture = architectures[0]
        # Before reading fields: other families name them differently (GPT-2 has no
        # intermediate_size), which would surface as an AttributeError.
        _check_supported(architecture)
        heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        return cls(
            architecture=architecture,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rms_norm_eps=hf_config.rms_norm_eps,
            max_position_embeddings=context_window(hf_config),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            attention_bias=_attention_bias(architecture, hf_config),
            qk_norm=architecture in QK_NORM_ARCHITECTURES,
            sliding_window=_sliding_window(hf_config),
            latent_cache_dim=_latent_cache_dim(hf_config),
            num_cache_layers=_cache_layer_count(hf_config),
            hf_config=hf_config,
        )


def _attention_bias(architecture: str, hf_config: Any) -> bool:
    if architecture in QKV_BIAS_ARCHITECTURES:
        # Qwen2-MoE's config says so as qkv_bias (default on); Qwen2's always has them.
        return bool(getattr(hf_config, "qkv_bias", True))
    return bool(getattr(hf_config, "attention_bias", False))


def _sliding_window(hf_config: Any) -> int | None:
    # Qwen2/3 configs carry a sliding_window that is off unless use_sliding_window is set.
    if getattr(hf_config, "use_sliding_window", True) is False:
        return None
    return getattr(hf_config, "sliding_window", None)


def _latent_cache_dim(hf_config: Any) -> int | None:
    rank = getattr(hf_config, "kv_lora_rank", None)
    return rank + hf_config.qk_rope_head_dim if rank else None


def _cache_layer_count(hf_config: Any) -> int:
    layer_types = getattr(hf_config, "layer_types", None) or []
    recurrent = sum(1 for kind in layer_types if kind in RECURRENT_LAYER_TYPES)
    return hf_config.num_hidden_layers - recurrent


def _check_supported(architecture: str) -> None:
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def _architecture_from_model_type(model_type: str) -> str:
    by_type = {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "mixtral": "MixtralForCausalLM",
        "qwen2_moe": "Qwen2MoeForCausalLM",
        "qwen3_moe": "Qwen3MoeForCausalLM",
        "deepseek_v2": "DeepseekV2ForCausalLM",
        "deepseek_v3": "DeepseekV3ForCausalLM",
        "kimi_k2": "DeepseekV3ForCausalLM",
        "kimi_linear": "KimiLinearForCausalLM",
    }
    if model_type not in by_type:
        raise UnsupportedArchitectureError(f"model_type {model_type!r} is not supported")
    return by_type[model_type]
