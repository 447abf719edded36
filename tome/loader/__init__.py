"""Model loading: where the files are, the config, weights (safetensors, GGUF, dummy) and
the tokenizer."""

from tome.loader.default_model import embedded_model_path
from tome.loader.dummy_weights import dummy_weights
from tome.loader.hf_config import load_hf_config
from tome.loader.model_source import ModelSource, resolve_model
from tome.loader.tokenizer import Tokenizer
from tome.loader.weights import iter_weights

__all__ = [
    "ModelSource",
    "Tokenizer",
    "dummy_weights",
    "embedded_model_path",
    "iter_weights",
    "load_hf_config",
    "resolve_model",
]
