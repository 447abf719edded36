"""Read a model's transformers config from config.json or from a GGUF file's metadata."""

import json
from pathlib import Path

import transformers
from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

from tome.errors import ModelLoadError, UnsupportedArchitectureError
from tome.loader.error_text import one_line
from tome.loader.gguf_metadata_cache import converted_metadata_dir
from tome.loader.model_source import ModelSource

# model_types whose config.json needs remote code in transformers, read as the config
# class they copy: Kimi-K2 ships DeepSeek-V3's config under its own name.
MODEL_TYPE_ALIASES = {"kimi_k2": "deepseek_v3"}


def load_hf_config(source: ModelSource) -> PretrainedConfig:
    """The transformers config for `source`; ModelConfig.from_hf picks our numbers from it."""
    model_type = None
    if source.kind == "hf_dir":
        # Checked first so an unknown model_type reads as "unsupported", not as a
        # transformers stack trace about Auto classes.
        model_type = _check_model_type(source.path / "config.json")
    try:
        if source.kind == "gguf":
            return AutoConfig.from_pretrained(converted_metadata_dir(source.path))
        if model_type in MODEL_TYPE_ALIASES:
            return _aliased_config(source.path / "config.json", model_type)
        return AutoConfig.from_pretrained(source.path)
    except Exception as exc:
        raise ModelLoadError(
            f"could not read the config of {source.path}: {one_line(exc)}"
        ) from exc


def _check_model_type(config_file: Path) -> str:
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(
            f"{config_file} is not a readable JSON object: {one_line(exc)}"
        ) from exc
    if model_type not in CONFIG_MAPPING and model_type not in MODEL_TYPE_ALIASES:
        raise UnsupportedArchitectureError(
            f"{config_file}: model_type {model_type!r} is unknown to "
            f"transformers {transformers.__version__}"
        )
    return model_type


def _aliased_config(config_file: Path, model_type: str) -> PretrainedConfig:
    fields = json.loads(config_file.read_text())
    fields.pop("auto_map", None)
    fields["model_type"] = MODEL_TYPE_ALIASES[model_type]
    return CONFIG_MAPPING[fields["model_type"]].from_dict(fields)
