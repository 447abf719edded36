"""Prompt assembly: whole documents when they fit (reused through the prefix cache on the next
question), cited retrieval when they do not, and a clear error when nothing fits. Prompt ids
are checked against transformers' own chat template; retrieval against known answers."""

import random
import re

import pytest

from tome import LLM, SamplingParams
from tome.assistant.assembly import QuestionTooLongError, assemble
from tome.assistant.documents import Section, extract
from tome.assistant.retrieval import SourceText
from tome.errors import InvalidRequestError, PromptTooLongError
from tome.loader.tokenizer import Tokenizer

WINDOW = 1024  # the tiny models' max_position_embeddings
ANSWER_BUDGET = 64
NOTES = """# Field notes

## Birds

The heron waited by the reed bed for most of the morning. Two kingfishers crossed the
pond at noon, and a wren sang from the hawthorn hedge beside the gate.

## Trees

The old oak by the mill lost a branch in the March storm. Its acorns were counted in
October: about four hundred, fewer than the year before.

## Weather

Rain fell on eleven days of the month. The warmest afternoon reached twenty-three degrees,
and the river rose above the second stone of the ford.
"""
PLACES = ["harbour", "market", "bridge", "station", "library", "orchard", "mill", "school"]
CHINESE_PLACES = ["港口", "市场", "桥头", "车站", "图书馆", "果园", "磨坊", "学校"]
NEEDLE_PAGE = 37


@pytest.fixture(scope="module")
def tokenizer(hf_tokenizer) -> Tokenizer:
    return Tokenizer(hf_tokenizer, frozenset())


@pytest.fixture(scope="module")
def notes() -> SourceText:
    document = extract(NOTES.encode(), "notes.md")
    return SourceText("notes.md", document.title, document.sections)


def reference_ids(hf_tokenizer, messages: list[dict]) -> list[int]:
    """transformers' own prompt ids for the messages."""
    return hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def test_full_mode_puts_every_section_whole_in_the_prompt(tokenizer, hf_tokenizer, notes):
    prompt = assemble([notes], [], "When did the branch fall?", tokenizer, WINDOW, ANSWER_BUDGET)

    assert prompt.mode == "full"
    assert prompt.citations == {}
    assert prompt.prompt_token_ids == reference_ids(hf_tokenizer, prompt.messages)
    assert prompt.window_tokens_used == len(prompt.prompt_token_ids) <= WINDOW - ANSWER_BUDGET
    decoded = hf_tokenizer.decode(prompt.prompt_token_ids)
    for section in notes.sections:
        assert section.text in decoded
        assert section.title in decoded


def test_next_question_shares_the_whole_previous_prompt_token_for_token(tokenizer, notes):
    first = assemble([notes], [], "How many acorns?", tokenizer, WINDOW, ANSWER_BUDGET)
    conversation = [
        {"role": "user", "content": "How many acorns?"},
        {"role": "assistant", "content": "About four hundred."},
    ]
    second = assemble([notes], conversation, "And the rain?", tokenizer, WINDOW, ANSWER_BUDGET)

    assert second.mode == "full"
    assert second.prompt_token_ids[: len(first.prompt_token_ids)] == first.prompt_token_ids
    assert first.messages[0] == second.messages[0]


def test_follow_up_question_reuses_the_cached_document(tiny_llama, tokenizer, notes):
    llm = LLM(str(tiny_llama), kv_cache_memory=64 << 20)
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    question = "Which bird sang from the hedge?"
    first = assemble([notes], [], question, tokenizer, WINDOW, ANSWER_BUDGET)
    answer = llm.generate(first.prompt_token_ids, greedy)[0]
    conversation = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer.text},
    ]
    second = assemble([notes], conversation, "And the heron?", tokenizer, WINDOW, ANSWER_BUDGET)
    follow_up = llm.generate(second.prompt_token_ids, greedy)[0]

    document_tokens = len(tokenizer.encode(extract(NOTES.encode(), "notes.md").text))
    assert second.mode == "full"
    assert follow_up.num_cached_tokens >= document_tokens


def english_page(page: int, rng: random.Random) -> str:
    if page == NEEDLE_PAGE:
        return "The secret launch code of the observatory is 4417. It changes every spring."
    return " ".join(
        f"On day {rng.randrange(1, 400)} the keeper counted {rng.randrange(2, 90)} boats "
        f"near the {rng.choice(PLACES)}."
        for _ in range(6)
    )


def chinese_page(page: int, rng: random.Random) -> str:
    if page == NEEDLE_PAGE:
        return "天文台的秘密发射密码是四四一七。这个密码每年春天更换。"
    return "".join(
        f"第{rng.randrange(1, 400)}天，看守人在{rng.choice(CHINESE_PLACES)}附近数了"
        f"{rng.randrange(2, 90)}条船。"
        for _ in range(6)
    )


def long_book(chinese: bool) -> SourceText:
    """Sixty pages of look-alike filler, one page (NEEDLE_PAGE) holding the answer."""
    rng = random.Random(3)
    page_text = chinese_page if chinese else english_page
    sections = [
        Section(f"Chapter {1 + page // 10}", page_text(page, rng), page) for page in range(1, 61)
    ]
    return SourceText("logbook.pdf", "Keeper's logbook", sections)


def cited_number_of(prompt_text: str, needle: str) -> int:
    """The [n] that the passage holding `needle` carries in the prompt."""
    blocks = [block for block in prompt_text.split("\n\n") if needle in block]
    assert blocks, "the answer's passage is not in the prompt"
    return int(re.match(r"\[(\d+)\]", blocks[0]).group(1))


@pytest.mark.parametrize(
    ("chinese", "question", "needle"),
    [
        (False, "What is the launch code of the observatory?", "launch code of the observatory"),
        (True, "天文台的发射密码是什么？", "天文台的秘密发射密码"),
    ],
)
def test_retrieval_puts_the_answering_passage_in_the_prompt_with_its_page(
    tokenizer, hf_tokenizer, chinese, question, needle
):
    book = long_book(chinese)
    whole = "\n\n".join(section.text for section in book.sections)
    assert len(tokenizer.encode(whole)) > WINDOW

    prompt = assemble([book], [], question, tokenizer, WINDOW, ANSWER_BUDGET)

    assert prompt.mode == "retrieval"
    assert prompt.prompt_token_ids == reference_ids(hf_tokenizer, prompt.messages)
    assert prompt.window_tokens_used == len(prompt.prompt_token_ids) <= WINDOW - ANSWER_BUDGET
    assert "[n]" in prompt.messages[0]["content"]
    number = cited_number_of(prompt.messages[-1]["content"], needle)
    citation = prompt.citations[number]
    assert (citation.source_id, citation.page) == ("logbook.pdf", NEEDLE_PAGE)
    assert citation.section_title == f"Chapter {1 + NEEDLE_PAGE // 10}"
    # Only that passage names the observatory: BM25 must rank it first.
    assert number == 1


def test_retrieval_fills_the_window_with_the_best_ranked_passages(tokenizer):
    book = long_book(False)
    question = "How many boats did the keeper count near the harbour?"

    prompt = assemble([book], [], question, tokenizer, WINDOW, ANSWER_BUDGET)

    limit = WINDOW - ANSWER_BUDGET
    largest_page = max(len(tokenizer.encode(section.text)) for section in book.sections)
    assert prompt.mode == "retrieval"
    assert sorted(prompt.citations) == list(range(1, len(prompt.citations) + 1))
    # Every page matches the question, so only lack of room stops another passage going in:
    # what is left is less than one page and its label.
    assert limit - largest_page - 32 < prompt.window_tokens_used <= limit


def test_retrieval_drops_the_oldest_turns_when_the_conversation_is_too_long(tokenizer):
    turns = []
    for n in range(12):
        turns.append({"role": "user", "content": f"Question {n}: " + "tell me more " * 20})
        turns.append({"role": "assistant", "content": f"Answer {n}: " + "here is more " * 20})
    question = "What is the launch code of the observatory?"

    prompt = assemble([long_book(False)], turns, question, tokenizer, WINDOW, ANSWER_BUDGET)

    assert prompt.mode == "retrieval"
    assert prompt.window_tokens_used <= WINDOW - ANSWER_BUDGET
    kept = prompt.messages[1:-1]
    assert kept, "the newest turns should still fit"
    assert kept == turns[-len(kept) :]
    assert kept[0]["role"] == "user"
    assert len(kept) < len(turns)


def test_a_question_too_long_for_the_window_is_a_typed_error(tokenizer, notes):
    question = "Why " + "really " * 400 + "?"
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]

    with pytest.raises(QuestionTooLongError, match="the question alone") as error:
        assemble([notes], conversation, question, tokenizer, 256, ANSWER_BUDGET)
    assert isinstance(error.value, PromptTooLongError)


def test_an_answer_budget_as_large_as_the_window_is_refused(tokenizer, notes):
    with pytest.raises(InvalidRequestError, match="answer budget"):
        assemble([notes], [], "Why?", tokenizer, 256, 256)


def test_an_empty_question_is_refused(tokenizer, notes):
    with pytest.raises(InvalidRequestError, match="question is empty"):
        assemble([notes], [], "  ", tokenizer, WINDOW, ANSWER_BUDGET)
