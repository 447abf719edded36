"""Weights from a Hugging Face checkpoint folder: one model.safetensors or index-listed shards."""

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tome.errors import ModelLoadError
from tome.loader.error_text import one_line

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def iter_safetensors_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in the checkpoint under its stored name and dtype.

    The file list is checked before the first tensor is read, so a missing shard fails
    at once rather than after minutes of loading."""
    return _read_tensors(_weight_files(folder))


def safetensors_tensor_names(folder: Path) -> list[str]:
    """Every tensor name in the checkpoint, from the files' headers alone."""
    names = []
    for file in _weight_files(folder):
        try:
            with safe_open(file, framework="pt") as reader:
                names.extend(reader.keys())
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(
                f"{file.name} is not a readable safetensors file: {one_line(exc)}"
            ) from exc
    return names


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        files = _shards_in_index(index)
    elif (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors weights (.bin files are not supported)")
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"weight shard {file.name} listed in {INDEX_FILE} is missing")
    return files


def _shards_in_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{index} is not a valid safetensors index: {one_line(exc)}") from exc
    return [index.parent / name for name in shard_names]


def _read_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        try:
            with safe_open(file, framework="pt") as reader:
                for name in reader.keys():  # noqa: SIM118 (safe_open is not iterable)
                    yield name, reader.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(
                f"{file.name} is not a readable safetensors file: {one_line(exc)}"
            ) from exc
