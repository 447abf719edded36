"""A transformers config and tokenizer from a GGUF file's metadata.

transformers' GGUF support reads most architectures, but for MoE files it leaves the
expert sizes at their defaults, reads llama.cpp's Mixtral (a `llama` file with experts) as
a dense Llama, and does not know `deepseek2` (DeepSeek-V2/V3, Moonlight, Kimi-K2) or
`kimi-linear` (gguf_kimi_linear.py) at all. Those are completed or built here from
llama.cpp's own keys."""

import tempfile
from pathlib import Path
from typing import Any

import gguf
import transformers
from gguf import GGUFReader, GGUFValueType
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from tome.loader import gguf_kimi_linear
from tome.loader.gguf_latent_attention import latent_attention_fields

# GGUF metadata key -> the transformers config attribute it sets.
MOE_FIELDS = {
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}
# Architectures transformers' GGUF support refuses, whose config is built here.
OWN_CONFIGS = ("deepseek2", gguf_kimi_linear.ARCHITECTURE)
# llama.cpp's expert_gating_func values.
SIGMOID_GATING = 2
# The Mixtral fields a llama file's config carries over.
MIXTRAL_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
    "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "bos_token_id", "eos_token_id",
)  # fmt: skip


def gguf_config(path: Path, reader: GGUFReader) -> PretrainedConfig:
    architecture = _field(reader, "general.architecture")
    if architecture == "deepseek2":
        return _deepseek_config(reader)
    if architecture == gguf_kimi_linear.ARCHITECTURE:
        return gguf_kimi_linear.kimi_linear_config(reader)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    for key, attribute in MOE_FIELDS.items():
        value = _field(reader, f"{architecture}.{key}")
        if value is not None:
            setattr(config, attribute, int(value))
    if architecture == "llama" and _field(reader, "llama.expert_count"):
        return _mixtral_config(config, reader)
    return config


def gguf_tokenizer(path: Path, reader: GGUFReader) -> PreTrainedTokenizerBase:
    """transformers' tokenizer for the file. For an architecture its GGUF support refuses,
    a copy of the file's tokenizer metadata under the `llama` architecture is read instead:
    the tokenizer does not depend on the architecture."""
    if _field(reader, "general.architecture") not in OWN_CONFIGS:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "tokenizer.gguf"
        _write_tokenizer_metadata(reader, copy)
        return AutoTokenizer.from_pretrained(folder, gguf_file=copy.name)


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _mixtral_config(llama: PretrainedConfig, reader: GGUFReader) -> PretrainedConfig:
    fields = {name: getattr(llama, name) for name in MIXTRAL_FIELDS if hasattr(llama, name)}
    return transformers.MixtralConfig(
        **fields,
        num_local_experts=int(_field(reader, "llama.expert_count")),
        num_experts_per_tok=int(_field(reader, "llama.expert_used_count")),
        architectures=["MixtralForCausalLM"],
    )


def _deepseek_config(reader: GGUFReader) -> PretrainedConfig:
    """DeepSeek-V2 or V3 from llama.cpp's deepseek2 keys: V3 where the experts are chosen
    on sigmoid scores (expert_gating_func, or the correction bias exp_probs_b present)."""

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"deepseek2.{key}", default)

    names = {tensor.name for tensor in reader.tensors}
    is_v3 = meta("expert_gating_func") == SIGMOID_GATING or any(
        name.endswith("exp_probs_b.bias") for name in names
    )
    groups = int(meta("expert_group_count", 1))
    fields = dict(
        vocab_size=int(meta("vocab_size", len(_field(reader, "tokenizer.ggml.tokens", [])))),
        hidden_size=int(meta("embedding_length")),
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")),
        num_attention_heads=int(meta("attention.head_count")),
        num_key_value_heads=int(meta("attention.head_count")),
        **latent_attention_fields(meta),
        moe_intermediate_size=int(meta("expert_feed_forward_length")),
        n_routed_experts=int(meta("expert_count")),
        num_experts_per_tok=int(meta("expert_used_count")),
        n_shared_experts=int(meta("expert_shared_count", 0)),
        first_k_dense_replace=int(meta("leading_dense_block_count", 0)),
        routed_scaling_factor=float(meta("expert_weights_scale", 1.0)),
        norm_topk_prob=bool(meta("expert_weights_norm", False)),
        n_group=groups,
        topk_group=int(meta("expert_group_used_count", 1)),
        rope_parameters=_deepseek_rope(meta),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )
    if is_v3:
        # llama.cpp's deepseek2 rotates interleaved pairs, whatever the HF config said.
        return transformers.DeepseekV3Config(
            **fields, rope_interleave=True, architectures=["DeepseekV3ForCausalLM"]
        )
    method = "group_limited_greedy" if groups > 1 else "greedy"
    return transformers.DeepseekV2Config(
        **fields, topk_method=method, architectures=["DeepseekV2ForCausalLM"]
    )


def _deepseek_rope(meta) -> dict[str, Any]:
    """Default rope, or YaRN with mscale_all_dim from llama.cpp's yarn_log_multiplier
    (0.1 x mscale_all_dim in deepseek2 files). The file does not keep mscale apart: DeepSeek's
    configs set it equal to mscale_all_dim."""
    theta = float(meta("rope.freq_base", 10000.0))
    if meta("rope.scaling.type") != "yarn":
        return {"rope_type": "default", "rope_theta": theta}
    mscale = float(meta("rope.scaling.yarn_log_multiplier", 0.0)) / 0.1
    return {
        "rope_type": "yarn",
        "rope_theta": theta,
        "factor": float(meta("rope.scaling.factor")),
        "original_max_position_embeddings": int(meta("rope.scaling.original_context_length")),
        "mscale": mscale,
        "mscale_all_dim": mscale,
        "beta_fast": float(meta("rope.scaling.yarn_beta_fast", 32.0)),
        "beta_slow": float(meta("rope.scaling.yarn_beta_slow", 1.0)),
    }


def _write_tokenizer_metadata(reader: GGUFReader, path: Path) -> None:
    writer = gguf.GGUFWriter(path, "llama")
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
