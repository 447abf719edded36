"""A model folder for `--dummy CONFIG`: the config alone, plus a placeholder tokenizer.

Our engine loads a tokenizer for every model (it detokenizes as it generates), while a
config.json usually comes without one. The benchmark feeds token ids, never text, so any
tokenizer that can decode every id will do: one word per id."""

import shutil
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tome.errors import ModelLoadError
from tome.loader import ModelSource, load_hf_config


def dummy_model_dir(config: str, into: Path) -> ModelSource:
    """Copy the config (a config.json file or a folder holding one) into `into` and save a
    placeholder tokenizer covering the model's vocabulary beside it."""
    path = Path(config).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise ModelLoadError(f"{config}: no such config file (give a config.json or its folder)")
    shutil.copyfile(config_file, into / "config.json")
    source = ModelSource("hf_dir", into)
    vocab_size = load_hf_config(source).vocab_size
    placeholder_tokenizer(vocab_size).save_pretrained(into)
    return source


def placeholder_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)
