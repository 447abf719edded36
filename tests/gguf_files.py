"""Tiny models written as GGUF files the way llama.cpp's converter writes them."""

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers

FAMILIES = {
    "llama": (transformers.LlamaConfig, {"attention_bias": True}),
    "qwen2": (transformers.Qwen2Config, {}),
    "qwen3": (transformers.Qwen3Config, {}),
}


def tiny_model(family: str, tied: bool, **overrides) -> transformers.PreTrainedModel:
    config_class, extra = FAMILIES[family]
    config = config_class(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied,
        **{**extra, **overrides},
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (interleave halves)."""
    per_head = weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weights.shape)


def write_gguf(
    model: transformers.PreTrainedModel,
    arch: str,
    path: Path,
    qtype_of: Callable[[str], str] = lambda name: "F32",
) -> Path:
    """Convert like llama.cpp: its own tensor names, q/k permuted for llama, each 2-D
    tensor quantized by the gguf package to the type `qtype_of(GGUF name)` names."""
    config = model.config
    arch_id = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, arch)
    for hf_name, tensor in model.state_dict().items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue
        base, suffix = hf_name.rsplit(".", 1)
        data = tensor.numpy()
        if arch == "llama" and ".q_proj." in hf_name:
            data = _llama_cpp_permute(data, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in hf_name:
            data = _llama_cpp_permute(data, config.num_key_value_heads)
        name = f"{names.get_name(base)}.{suffix}"
        qtype = gguf.GGMLQuantizationType[qtype_of(name)]
        if qtype != gguf.GGMLQuantizationType.F32 and data.ndim == 2:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
