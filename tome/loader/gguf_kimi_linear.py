"""Kimi Linear GGUF files (llama.cpp's `kimi-linear`) read back as transformers'
`kimi_linear`: the config from llama.cpp's keys, the KDA tensors under checkpoint names
with checkpoint values. Latent attention and the MoE are named as in `deepseek2` files.

What llama.cpp's converter writes differently, undone here:
- which layers are KDA: attention.head_count_kv lists each layer's KV heads, 0 for a KDA
  layer (1 for an MLA layer: llama.cpp runs latent attention as MQA); the dense MLP layers
  are the first leading_dense_block_count;
- KDA's head count has no key (llama.cpp takes attention.head_count): it is the size of a
  KDA layer's ssm_a;
- A_log is stored as A = -exp(A_log) (`ssm_a`, a tensor without .weight);
- each short convolution [channels, 1, taps] is stored [1, channels, 1, taps] (3-D after
  llama-quantize), dt_bias as ssm_dt.bias, b_proj as ssm_beta, o_norm as ssm_norm;
- the router's renormalisation has no key: llama.cpp always renormalises Kimi's routed
  weights, as Kimi Linear's configs ask (moe_renormalize)."""

from typing import Any

import torch
import transformers
from gguf import ExpertGatingFuncType, GGUFReader
from transformers import PretrainedConfig

from tome.errors import ModelLoadError
from tome.loader.gguf_latent_attention import latent_attention_fields

ARCHITECTURE = "kimi-linear"
DELTA_LAYER, LATENT_LAYER = "linear_attention", "full_attention"  # as layer_types names them
# Kimi Linear's router scores experts with a sigmoid, always.
SIGMOID_GATING = ExpertGatingFuncType.SIGMOID
# GGUF block tensor -> the KDA module it holds the weight of.
KIMI_NAMES = {
    "ssm_conv1d_q": "self_attn.q_conv1d",
    "ssm_conv1d_k": "self_attn.k_conv1d",
    "ssm_conv1d_v": "self_attn.v_conv1d",
    "ssm_f_a": "self_attn.f_a_proj",
    "ssm_f_b": "self_attn.f_b_proj",
    "ssm_g_a": "self_attn.g_a_proj",
    "ssm_g_b": "self_attn.g_b_proj",
    "ssm_beta": "self_attn.b_proj",
    "ssm_norm": "self_attn.o_norm",
}
# GGUF block tensor -> the whole checkpoint name of a KDA parameter.
KIMI_WHOLE_NAMES = {"ssm_a": "self_attn.A_log", "ssm_dt": "self_attn.dt_bias"}
CONVOLUTIONS = tuple(f".{name}.weight" for name in ("q_conv1d", "k_conv1d", "v_conv1d"))


def kimi_linear_config(reader: GGUFReader) -> PretrainedConfig:
    """transformers' KimiLinearConfig from a kimi-linear file's keys; a file whose layer
    pattern is not one per layer, or whose router is not sigmoid, is refused as one line."""

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{ARCHITECTURE}.{key}", default)

    layers = int(meta("block_count"))
    kv_heads = meta("attention.head_count_kv")
    if not isinstance(kv_heads, list) or len(kv_heads) != layers:
        raise ModelLoadError(
            f"{ARCHITECTURE}.attention.head_count_kv must list the KV heads of each of the "
            f"{layers} layers (0 for a KDA layer); the file has {kv_heads!r}"
        )
    gating = meta("expert_gating_func", SIGMOID_GATING)
    if gating != SIGMOID_GATING:
        raise ModelLoadError(
            f"{ARCHITECTURE}.expert_gating_func is {gating}; Kimi Linear's router scores "
            f"experts with a sigmoid ({SIGMOID_GATING.value})"
        )
    layer_types = [LATENT_LAYER if heads else DELTA_LAYER for heads in kv_heads]
    dense = int(meta("leading_dense_block_count", 0))
    heads = int(meta("attention.head_count"))
    vocab_size = meta("vocab_size")
    if vocab_size is None:  # older converters: one token a row of the embedding
        vocab_size = len(_field(reader, "tokenizer.ggml.tokens", []))
    return transformers.KimiLinearConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(meta("embedding_length")),
        intermediate_size=int(meta("feed_forward_length")),
        moe_intermediate_size=int(meta("expert_feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        **latent_attention_fields(meta),
        num_local_experts=int(meta("expert_count")),
        num_experts_per_tok=int(meta("expert_used_count")),
        n_shared_experts=int(meta("expert_shared_count", 0)),
        routed_scaling_factor=float(meta("expert_weights_scale", 1.0)),
        norm_topk_prob=bool(meta("expert_weights_norm", True)),
        n_group=int(meta("expert_group_count", 1)),
        topk_group=int(meta("expert_group_used_count", 1)),
        layer_types=layer_types,
        mlp_layer_types=["dense" if i < dense else "sparse" for i in range(layers)],
        linear_head_dim=int(meta("kda.head_dim")),
        linear_num_heads=_delta_heads(reader, layer_types, heads),
        linear_conv_kernel_dim=int(meta("ssm.conv_kernel")),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        architectures=["KimiLinearForCausalLM"],
    )


def restore_delta_tensor(name: str, weight: torch.Tensor) -> torch.Tensor:
    """A KDA tensor (under its checkpoint `name`) back in the checkpoint's value and shape;
    any other tensor as it is."""
    if name.endswith(".A_log"):
        return torch.log(-weight).reshape(1, 1, -1, 1)
    if name.endswith(CONVOLUTIONS):
        return weight.reshape(-1, 1, weight.shape[-1])
    return weight


def _delta_heads(reader: GGUFReader, layer_types: list[str], default: int) -> int:
    """KDA's head count: the size of the first KDA layer's ssm_a (one A per head)."""
    if DELTA_LAYER not in layer_types:
        return default
    layer = layer_types.index(DELTA_LAYER)
    name = f"blk.{layer}.ssm_a"
    tensor = next((t for t in reader.tensors if t.name == name), None)
    if tensor is None:
        raise ModelLoadError(
            f"layer {layer} is a KDA layer (head_count_kv 0) but the file has no {name}"
        )
    return int(tensor.n_elements)


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()
