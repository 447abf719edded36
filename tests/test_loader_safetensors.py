"""Safetensors checkpoints: every tensor arrives under its HF name, equal to the HF model's."""

import re
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tome.errors import ModelLoadError
from tome.loader import ModelSource, iter_weights, load_hf_config
from tome.models.config import ModelConfig

FAMILIES = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
}


def _tiny_model(family: str, tied: bool) -> transformers.PreTrainedModel:
    config = FAMILIES[family](
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _save(model: transformers.PreTrainedModel, path: Path, **kwargs) -> ModelSource:
    model.save_pretrained(path, **kwargs)
    return ModelSource("hf_dir", path)


def _load(source: ModelSource) -> dict[str, torch.Tensor]:
    config = ModelConfig.from_hf(load_hf_config(source))
    return dict(iter_weights(source, config))


def _expected(model: transformers.PreTrainedModel) -> dict[str, torch.Tensor]:
    expected = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        del expected["lm_head.weight"]  # the model reads the head from embed_tokens
    return expected


def _assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("tied", [False, True])
def test_single_file(family, tied, tmp_path):
    model = _tiny_model(family, tied)
    _assert_same(_load(_save(model, tmp_path)), _expected(model))


def test_sharded(tmp_path):
    model = _tiny_model("qwen2", tied=False)
    source = _save(model, tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 3
    _assert_same(_load(source), _expected(model))


def test_redundant_tensors_are_skipped(tmp_path):
    model = _tiny_model("llama", tied=True)
    source = _save(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    _assert_same(_load(source), _expected(model))


def test_missing_shard(tmp_path):
    source = _save(_tiny_model("llama", tied=False), tmp_path, max_shard_size="40KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    config = ModelConfig.from_hf(load_hf_config(source))
    with pytest.raises(ModelLoadError, match=re.escape(shard.name)):
        iter_weights(source, config)  # refused before any tensor is read


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file(damage, tmp_path):
    source = _save(_tiny_model("llama", tied=False), tmp_path)
    file = tmp_path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(b"\xff" * 64 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=re.escape("model.safetensors")):
        _load(source)


def test_no_weights(tmp_path):
    source = _save(_tiny_model("llama", tied=False), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=re.escape("no .safetensors")):
        _load(source)
