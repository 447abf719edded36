"""Where a model's files are: a Hugging Face checkpoint folder or a single GGUF file.

`resolve_model` turns what a person typed (nothing, a path, or a Hub id) into one of those,
downloading from the Hub only when the string cannot be a local path."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from tome.errors import ModelLoadError
from tome.loader.default_model import embedded_model_path
from tome.loader.error_text import one_line

# Only what the loader and tokenizer read. "model*" rather than "*" keeps us from fetching
# duplicate weights some repos also ship (Mistral's consolidated.safetensors doubles a
# download) and the original PyTorch .bin files.
HUB_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template*",
]


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["hf_dir", "gguf"]
    path: Path

    @property
    def name(self) -> str:
        """Short name for logs and the API's model list."""
        if self.kind == "gguf":
            return self.path.stem
        return _hub_id_from_cache(self.path) or self.path.name


def resolve_model(model: str | None) -> ModelSource:
    """None -> the embedded default; a folder or .gguf file -> itself; else a Hub id."""
    if model is None:
        return ModelSource("gguf", embedded_model_path())
    if not model.strip():
        # Path("") is ".", which would quietly load whatever folder we run in.
        raise ModelLoadError("the model name is empty")
    path = Path(model).expanduser()
    if path.is_dir():
        return _checkpoint_dir(path.resolve())
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{model}: expected a .gguf file or a model folder")
        return ModelSource("gguf", path.resolve())
    if _looks_like_path(model):
        raise ModelLoadError(f"{model}: no such file or directory")
    return _checkpoint_dir(_download(model))


def _checkpoint_dir(path: Path) -> ModelSource:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face checkpoint?")
    return ModelSource("hf_dir", path)


def _looks_like_path(model: str) -> bool:
    # A Hub id is "name" or "org/name"; anything else the user typed must have meant a path.
    if model.startswith((".", "/", "~")) or model.endswith(".gguf"):
        return True
    try:
        validate_repo_id(model)
    except HFValidationError:
        return True
    return False


def _download(model_id: str) -> Path:
    try:
        return Path(snapshot_download(model_id, allow_patterns=HUB_ALLOW_PATTERNS))
    # The hub client raises many unrelated types (HTTP, offline, gated, not found, disk);
    # for the user they all mean the same thing.
    except Exception as exc:
        raise ModelLoadError(
            f"could not fetch {model_id!r} from the Hugging Face Hub: {one_line(exc)}"
        ) from exc


def _hub_id_from_cache(path: Path) -> str | None:
    # The Hub cache stores a snapshot as .../models--org--name/snapshots/<commit>.
    repo_folder = path.parent.parent.name
    if path.parent.name == "snapshots" and repo_folder.startswith("models--"):
        return repo_folder.removeprefix("models--").replace("--", "/")
    return None
