"""GGUF files: names mapped to HF, tensors dequantized, llama's q/k rotary permutation undone."""

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers

from tome.errors import ModelLoadError, UnsupportedArchitectureError
from tome.loader import ModelSource, Tokenizer, iter_weights, load_hf_config, resolve_model
from tome.models.config import ModelConfig

FAMILIES = {
    "llama": (transformers.LlamaConfig, {"attention_bias": True}),
    "qwen2": (transformers.Qwen2Config, {}),
    "qwen3": (transformers.Qwen3Config, {}),
}


def _tiny_model(family: str, tied: bool) -> transformers.PreTrainedModel:
    config_class, extra = FAMILIES[family]
    config = config_class(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied,
        **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (interleave halves)."""
    per_head = weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weights.shape)


def _write_gguf(model: transformers.PreTrainedModel, arch: str, path: Path, qtype: str) -> Path:
    """Convert like llama.cpp: its own tensor names, q/k permuted for llama, 2-D tensors
    quantized to `qtype`."""
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
        if qtype == "Q8_0" and data.ndim == 2:
            quant = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, quant), raw_dtype=quant)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _expected(model: transformers.PreTrainedModel) -> dict[str, torch.Tensor]:
    expected = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        del expected["lm_head.weight"]
    return expected


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("tied", [False, True])
def test_converted_model_matches_hf(family, tied, tmp_path):
    model = _tiny_model(family, tied)
    path = _write_gguf(model, family, tmp_path / "tiny.gguf", "F32")
    loaded = dict(iter_weights(ModelSource("gguf", path), ModelConfig.from_hf(model.config)))
    expected = _expected(model)
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], tensor), name


def test_quantized_tensors_keep_their_shape(tmp_path):
    model = _tiny_model("llama", tied=False)
    path = _write_gguf(model, "llama", tmp_path / "tiny.gguf", "Q8_0")
    loaded = dict(iter_weights(ModelSource("gguf", path), ModelConfig.from_hf(model.config)))
    for name, tensor in _expected(model).items():
        # Q8_0 keeps 8 bits per value with one scale per 32: error far below the 0.02 std.
        torch.testing.assert_close(loaded[name], tensor, atol=1e-3, rtol=0)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((128, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    config = ModelConfig.from_hf(_tiny_model("llama", tied=False).config)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        iter_weights(ModelSource("gguf", path), config)


@pytest.fixture(scope="module")
def embedded() -> tuple[ModelSource, ModelConfig]:
    source = resolve_model(None)
    return source, ModelConfig.from_hf(load_hf_config(source))


@pytest.mark.slow
def test_embedded_config(embedded):
    _, config = embedded
    assert config.architecture == "LlamaForCausalLM"
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (576, 30, 49152)
    assert config.tie_word_embeddings


@pytest.mark.slow
def test_embedded_weights_match_transformers_gguf_loader(embedded):
    source, config = embedded
    ours = dict(iter_weights(source, config))
    # transformers' own GGUF path: its name map, dequantization and reverse permutation.
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        source.path.parent, gguf_file=source.path.name, config=config.hf_config, dtype=torch.float32
    ).state_dict()
    del reference["lm_head.weight"]  # tied to the embedding
    assert sorted(ours) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


def _truncated_copy(source: ModelSource, size: int, tmp_path: Path) -> ModelSource:
    with source.path.open("rb") as file:
        data = file.read(size)
    truncated = ModelSource("gguf", tmp_path / "cut.gguf")
    truncated.path.write_bytes(data)
    return truncated


@pytest.mark.slow
@pytest.mark.parametrize("size", [1000, 2_000_000])
def test_truncated_gguf_weights(size, embedded, tmp_path):
    # 1 kB cuts the metadata; 2 MB ends inside the first tensors (data starts at ~1.7 MB).
    source, config = embedded
    truncated = _truncated_copy(source, size, tmp_path)
    with pytest.raises(ModelLoadError, match=re.escape("cut.gguf is not a readable GGUF")):
        iter_weights(truncated, config)


@pytest.mark.slow
def test_truncated_gguf_config_and_tokenizer(embedded, tmp_path):
    truncated = _truncated_copy(embedded[0], 1000, tmp_path)
    with pytest.raises(ModelLoadError, match=re.escape("cut.gguf")):
        load_hf_config(truncated)
    with pytest.raises(ModelLoadError, match=re.escape("cut.gguf")):
        Tokenizer.from_source(truncated)
