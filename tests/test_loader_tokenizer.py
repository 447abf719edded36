"""The tokenizer wrapper: GGUF vocabulary conversion, chat templates, end-of-generation ids."""

import json
from pathlib import Path

import pytest
import tokenizers
from transformers import PreTrainedTokenizerFast

from tome.errors import InvalidRequestError, ModelLoadError
from tome.loader import ModelSource, Tokenizer, resolve_model

WORDS = ["<unk>", "<s>", "</s>", "<|end|>", "user", "assistant", "hello", "world"]
TEMPLATE = (
    "{% if messages[0]['role'] != 'user' %}{{ raise_exception('start with a user turn') }}"
    "{% endif %}{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} "
    "<|end|> {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
)


def _tiny_tokenizer_dir(path: Path, chat_template: str | None, eos: object = None) -> ModelSource:
    """A word-level tokenizer that adds <s> itself, like Llama's."""
    raw = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    )
    raw.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    raw.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    raw.decoder = tokenizers.decoders.WordPiece()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    hf.chat_template = chat_template
    hf.save_pretrained(path)
    if eos is not None:
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return ModelSource("hf_dir", path)


def test_generation_config_adds_eos_ids(tmp_path):
    tokenizer = Tokenizer.from_source(_tiny_tokenizer_dir(tmp_path, TEMPLATE, eos=[2, 3]))
    assert tokenizer.eos_token_ids == {2, 3}
    other = Tokenizer.from_source(_tiny_tokenizer_dir(tmp_path / "int", TEMPLATE, eos=3))
    assert other.eos_token_ids == {2, 3}
    plain = Tokenizer.from_source(_tiny_tokenizer_dir(tmp_path / "none", TEMPLATE))
    assert plain.eos_token_ids == {2}


def test_chat_template_does_not_double_bos(tmp_path):
    tokenizer = Tokenizer.from_source(_tiny_tokenizer_dir(tmp_path, TEMPLATE))
    assert tokenizer.encode("hello world") == [1, 6, 7]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}])
    assert ids == [1, 4, 6, 3, 5]


def test_template_errors_are_invalid_requests(tmp_path):
    tokenizer = Tokenizer.from_source(_tiny_tokenizer_dir(tmp_path, TEMPLATE))
    with pytest.raises(InvalidRequestError, match="start with a user turn"):
        tokenizer.apply_chat_template([{"role": "assistant", "content": "hello"}])


def test_model_without_chat_template(tmp_path):
    tokenizer = Tokenizer.from_source(_tiny_tokenizer_dir(tmp_path, chat_template=None))
    with pytest.raises(InvalidRequestError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hello"}])


def test_folder_without_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="tokenizer"):
        Tokenizer.from_source(ModelSource("hf_dir", tmp_path))


@pytest.fixture(scope="module")
def smollm() -> Tokenizer:
    return Tokenizer.from_source(resolve_model(None))


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    ["The quick brown fox.", "长上下文语言模型读整本书。", "emoji 🎉🚀 and ü", " lead\n\ttabs "],
)
def test_embedded_round_trip(smollm, text):
    ids = smollm.encode(text)
    assert ids and all(0 <= i < smollm.vocab_size for i in ids)
    assert smollm.decode(ids) == text


@pytest.mark.slow
def test_embedded_vocabulary_and_eos(smollm):
    assert smollm.vocab_size == 49152
    assert smollm.hf.convert_ids_to_tokens([0, 1, 2]) == [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    ]
    assert smollm.eos_token_ids == {2}
    assert {0, 1, 2} <= smollm.all_special_ids
    assert smollm.decode([1, 2], skip_special_tokens=True) == ""


@pytest.mark.slow
def test_embedded_chat_template_is_chatml(smollm):
    ids = smollm.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    text = smollm.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert ids[0] == 1 and ids.count(1) == 3  # each turn's <|im_start|> is one special id
