"""GGUF files: names mapped to HF, tensors dequantized, llama's q/k rotary permutation undone."""

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers

from tests.gguf_files import FAMILIES, tiny_model, write_gguf
from tome.errors import ModelLoadError, UnsupportedArchitectureError
from tome.loader import ModelSource, Tokenizer, iter_weights, load_hf_config, resolve_model
from tome.models.config import ModelConfig


def _expected(model: transformers.PreTrainedModel) -> dict[str, torch.Tensor]:
    expected = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        del expected["lm_head.weight"]
    return expected


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("tied", [False, True])
def test_converted_model_matches_hf(family, tied, tmp_path):
    model = tiny_model(family, tied)
    path = write_gguf(model, family, tmp_path / "tiny.gguf")
    loaded = dict(iter_weights(ModelSource("gguf", path), ModelConfig.from_hf(model.config)))
    expected = _expected(model)
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], tensor), name


def test_quantized_tensors_keep_their_shape(tmp_path):
    model = tiny_model("llama", tied=False)
    path = write_gguf(model, "llama", tmp_path / "tiny.gguf", lambda name: "Q8_0")
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
    config = ModelConfig.from_hf(tiny_model("llama", tied=False).config)
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
