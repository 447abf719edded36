"""Generated eval items, checked with the tokenizer itself and plain string search: the same
seed gives the same item and another seed other needles; every answer can be read from
the prompt; prompts are as long as asked; needles sit at the asked depth on a sentence
boundary; Chinese haystacks are Chinese."""

import re
from collections import Counter

import pytest

from tome.errors import InvalidRequestError
from tome.eval import TASKS, ItemSpec, TokenCounter, generate_item
from tome.eval.config import EvalConfig
from tome.eval.filler_text import CHINESE_SENTENCES, ENGLISH_SENTENCES
from tome.eval.runner import grid_specs

LANGUAGES = ("en", "zh")
EVERY_TASK = [(task, language) for task in TASKS for language in LANGUAGES]
HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def counter(hf_tokenizer) -> TokenCounter:
    return TokenCounter(hf_tokenizer)


def make(counter, task, language, length=1024, depth=0.5, seed=0):
    depth = depth if TASKS[task].uses_depth else None
    return generate_item(ItemSpec(task, language, length, depth, 0, seed), counter)


def haystack_of(prompt: str) -> str:
    """The long text between the instructions and the question."""
    return prompt.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]


@pytest.mark.parametrize(("task", "language"), EVERY_TASK)
def test_same_seed_same_item_other_seed_other_needles(counter, task, language):
    first = make(counter, task, language, seed=1)
    assert make(counter, task, language, seed=1) == first
    other = make(counter, task, language, seed=2)
    assert other.prompt != first.prompt
    assert set(other.answers) != set(first.answers)


@pytest.mark.parametrize(("task", "language"), EVERY_TASK)
def test_prompt_length_within_two_percent_of_the_target(hf_tokenizer, counter, task, language):
    for length in (1024, 4096):
        item = make(counter, task, language, length=length)
        measured = len(hf_tokenizer.encode(item.prompt, add_special_tokens=False))
        assert abs(measured - length) <= 0.02 * length, (task, language, length, measured)
        assert item.prompt_tokens == measured


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("task", ["passkey", "niah_single", "niah_multikey", "niah_multivalue"])
def test_every_answer_is_in_the_prompt_once(counter, task, language):
    item = make(counter, task, language)
    assert item.answers
    for answer in item.answers:
        assert len(re.findall(rf"(?<!\d){answer}(?!\d)", item.prompt)) == (
            2 if task == "passkey" else 1  # the passkey needle says it twice
        )


@pytest.mark.parametrize("language", LANGUAGES)
def test_variable_tracking_answers_are_the_chain_of_the_asked_value(counter, language):
    item = make(counter, "variable_tracking", language)
    value = re.search(r"(\d+)\D*$", item.prompt).group(1)
    assignments = dict(re.findall(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)", item.prompt))
    holders = {value}
    while True:  # follow the assignments until no new variable takes the value
        reached = holders | {n for n, s in assignments.items() if s.removeprefix("VAR ") in holders}
        if reached == holders:
            break
        holders = reached
    assert set(item.answers) == holders - {value}
    assert len(holders) == 6 and len(assignments) == 10  # a distractor chain is there too


@pytest.mark.parametrize("language", LANGUAGES)
def test_common_words_answers_are_the_most_frequent_words(counter, language):
    for length in (512, 4096):
        item = make(counter, "common_words", language, length=length)
        words = re.split(r", |、", haystack_of(item.prompt).rstrip(".。"))
        counts = Counter(words).most_common()
        assert {word for word, _ in counts[:10]} == set(item.answers)
        assert counts[9][1] > counts[10][1]  # no tie at the border


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_sits_at_the_depth_on_a_sentence_boundary(hf_tokenizer, counter, language, depth):
    item = make(counter, "niah_single", language, length=2048, depth=depth)
    haystack = haystack_of(item.prompt)
    needle = re.search(r"[^.。]*" + item.answers[0] + r"[.。]", haystack)
    before = haystack[: needle.start()]
    assert before == "" or before.rstrip()[-1] in ".!?。！？"

    def tokens(text: str) -> int:
        return len(hf_tokenizer.encode(text, add_special_tokens=False))

    assert abs(tokens(before) / tokens(haystack) - depth) < 0.03


def test_variable_chain_starts_at_the_depth_and_stays_in_order(hf_tokenizer, counter):
    item = make(counter, "variable_tracking", "en", length=2048, depth=0.4)
    haystack = haystack_of(item.prompt)
    positions = [haystack.index(f"VAR {name} =") for name in item.answers]
    assert positions == sorted(positions)
    head = len(hf_tokenizer.encode(haystack[: positions[0]], add_special_tokens=False))
    assert abs(head / len(hf_tokenizer.encode(haystack, add_special_tokens=False)) - 0.4) < 0.03


@pytest.mark.parametrize("task", ["passkey", "niah_multikey", "common_words"])
def test_chinese_items_are_chinese(counter, task):
    item = make(counter, task, "zh")
    body = re.sub(r"\d+", "", haystack_of(item.prompt))
    letters = [ch for ch in body if ch.isalpha()]
    assert letters and all(HAN.match(ch) for ch in letters)
    head, question = item.prompt.split("\n\n", 1)[0], item.prompt.rsplit("\n\n", 1)[1]
    for text in (head, question):
        letters = [ch for ch in text if ch.isalpha()]
        assert len(letters) >= 5 and all(HAN.match(ch) for ch in letters)


def test_filler_holds_no_digits_and_sentences_end_properly():
    for sentence in ENGLISH_SENTENCES:
        assert not re.search(r"\d", sentence) and sentence[-1] in ".!?"
    for sentence in CHINESE_SENTENCES:
        assert not re.search(r"[0-9A-Za-z]", sentence) and sentence[-1] in "。！？"
    assert len(set(ENGLISH_SENTENCES)) >= 50 and len(set(CHINESE_SENTENCES)) >= 50


def test_a_context_too_short_for_the_needles_is_one_clear_error(counter):
    with pytest.raises(InvalidRequestError, match=r"too short|needles alone"):
        make(counter, "niah_multikey", "zh", length=64)


def test_every_grid_cell_and_sample_gets_its_own_seed():
    config = EvalConfig(lengths=(1024,), depths=(0.0, 0.5, 1.0), samples=3)
    specs = grid_specs(config, 1024)
    needle_tasks = sum(task.uses_depth for task in TASKS.values())
    assert len(specs) == 2 * 3 * (3 * needle_tasks + len(TASKS) - needle_tasks)
    assert len({spec.seed for spec in specs}) == len(specs)
