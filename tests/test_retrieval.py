"""Retrieval: sentence boundaries, chunking within a token limit with overlaps (batched token
counts and cut points checked against the model's tokenizer), BM25 finding a needle in a
document of thousands of sentences (English and Chinese) with the right citation, and dense
fusion checked against reciprocal rank fusion computed by hand."""

import logging
import random
from itertools import pairwise
from typing import ClassVar

import jieba
import pytest

from tome.assistant.retrieval import (
    ChunkingConfig,
    PassageIndex,
    Section,
    SourceText,
    chunk_sources,
    cited_numbers,
    format_context,
    reciprocal_rank_fusion,
    split_sentences,
)
from tome.assistant.retrieval.terms import _segmenter, search_terms
from tome.assistant.retrieval.token_count import token_counter
from tome.errors import InvalidRequestError, TomeError
from tome.eval.filler_text import CHINESE_SENTENCES, ENGLISH_SENTENCES
from tome.loader.tokenizer import Tokenizer


def sentence_texts(text: str) -> list[str]:
    return [sentence.text for sentence in split_sentences(text)]


def test_english_sentences_keep_abbreviations_initials_and_decimals_whole():
    text = (
        'Dr. Smith measured 3.14 metres, e.g. in the hall. Was it right? "Yes!" he said.\n'
        "Then J. R. R. Tolkien wrote about approx. five hobbits... The End.\n\n"
        "A new paragraph, see www.example.com for more. It ends here"
    )
    assert sentence_texts(text) == [
        "Dr. Smith measured 3.14 metres, e.g. in the hall.",
        "Was it right?",
        '"Yes!" he said.',
        "Then J. R. R. Tolkien wrote about approx. five hobbits...",
        "The End.",
        "A new paragraph, see www.example.com for more.",
        "It ends here",
    ]


def test_chinese_sentences_end_after_closing_quotes_and_split_from_english():
    text = "他说：“明天下雨。”我们就不去了！真的吗？也许；再看吧……\n好。Mixed text works. 最后一句"
    assert sentence_texts(text) == [
        "他说：“明天下雨。”",
        "我们就不去了！",
        "真的吗？",
        "也许；",
        "再看吧……",
        "好。",
        "Mixed text works.",
        "最后一句",
    ]


def test_paragraph_breaks_are_kept_as_separators():
    sentences = split_sentences("One. Two.\n\n三。四。")
    assert [s.separator for s in sentences] == ["", " ", "\n\n", ""]


def filler(pool, count: int, seed: int) -> list[str]:
    """Random filler sentences, never the same one twice in a row (so a run of sentences
    can be located in the text without ambiguity)."""
    rng, sentences = random.Random(seed), []
    while len(sentences) < count:
        sentence = rng.choice(pool)
        if not sentences or sentence != sentences[-1]:
            sentences.append(sentence)
    return sentences


def make_section_text(sentences: list[str], chinese: bool) -> str:
    return ("" if chinese else " ").join(sentences)


def consume_passages(passages, sentences: list[str], chinese: bool, overlap: int):
    """Check each passage is a run of whole sentences, starting `overlap` sentences before
    the previous one ended (or right after it when the overlap could not fit), covering all."""
    joiner = "" if chinese else " "
    previous_end, starts = 0, []
    for passage in passages:
        start = next(
            s
            for s in range(max(previous_end - overlap, 0), previous_end + 1)
            if passage.text.startswith(sentences[s])
        )
        end = next(
            e
            for e in range(len(sentences), start, -1)
            if passage.text == joiner.join(sentences[start:e])
        )
        assert end > previous_end, "a passage must bring at least one new sentence"
        starts.append((start, previous_end))
        previous_end = end
    assert previous_end == len(sentences)
    return starts


@pytest.mark.parametrize("chinese", [False, True])
@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_passages_fit_the_model_tokenizer_limit_and_overlap(hf_tokenizer, chinese, overlap):
    pool = CHINESE_SENTENCES if chinese else ENGLISH_SENTENCES
    sentences = filler(pool, 300, seed=7)
    source = SourceText("s", "Book", [Section("Ch", make_section_text(sentences, chinese), 1)])
    tokenizer = Tokenizer(hf_tokenizer, frozenset())
    passages = chunk_sources([source], ChunkingConfig(96, overlap), tokenizer)

    for passage in passages:
        assert len(hf_tokenizer.encode(passage.text, add_special_tokens=False)) <= 96
    starts = consume_passages(passages, sentences, chinese, overlap)
    joiner = "" if chinese else " "
    for start, previous_end in starts[1:]:
        shared = previous_end - start
        if shared < overlap:
            # Fewer shared sentences only when one more would not leave room for a new one.
            wider = joiner.join(sentences[start - 1 : previous_end + 1])
            assert len(hf_tokenizer.encode(wider, add_special_tokens=False)) > 96
        else:
            assert shared == overlap


def test_a_sentence_longer_than_the_limit_is_cut_between_words():
    long_sentence = " ".join(f"word{i}," for i in range(200)) + " end."
    text = f"Short one. {long_sentence} Short two."
    source = SourceText("s", "Book", [Section("Ch", text)])
    passages = chunk_sources([source], ChunkingConfig(max_tokens=40, overlap_sentences=0))

    # The default estimate counts four ASCII characters as a token.
    assert all(len(p.text) <= 4 * 40 for p in passages)
    assert len(passages) > 5
    assert " ".join(p.text for p in passages) == text
    # Cuts fall after the long sentence's commas, never inside a word or a short sentence.
    assert all(p.text.endswith((",", ".")) for p in passages)
    assert passages[0].text.startswith("Short one. word0,")


def test_a_chinese_sentence_without_commas_is_cut_between_characters():
    sentence = "长" * 230 + "。"
    passages = chunk_sources(
        [SourceText("s", "书", [Section("章", sentence, 2)])], ChunkingConfig(50)
    )
    # The default estimate counts a Han character as a token.
    assert [len(p.text) for p in passages] == [50, 50, 50, 50, 31]
    assert "".join(p.text for p in passages) == sentence


def test_batched_token_counts_equal_the_tokenizers_own_counts(hf_tokenizer):
    sentences = filler(ENGLISH_SENTENCES, 40, seed=3) + filler(CHINESE_SENTENCES, 40, seed=3)
    texts = [
        *sentences,
        *(" " + s for s in sentences),
        "\n\nA new paragraph.",
        "",
        "  ",
        "<|im_start|>",
    ]
    tokenizer = Tokenizer(hf_tokenizer, frozenset())

    assert tokenizer.count_tokens(texts) == [len(hf_tokenizer.encode(text)) for text in texts]
    counter = token_counter(tokenizer)
    expected = [len(hf_tokenizer.encode(text, add_special_tokens=False)) for text in texts]
    assert counter.count_many(texts) == expected
    assert counter.count_many(texts[::-1]) == expected[::-1]
    assert counter(texts[0]) == expected[0]


@pytest.mark.parametrize("chinese", [False, True])
def test_over_long_sentences_are_cut_as_late_as_the_model_tokenizer_allows(hf_tokenizer, chinese):
    if chinese:  # no punctuation at all: cut between characters
        text = "".join(filler(CHINESE_SENTENCES, 40, seed=5))
        text = "".join(c for c in text if c not in "。，、；！？：“”")
    else:  # no full stop: cut after a comma or a space
        text = " ".join(filler(ENGLISH_SENTENCES, 60, seed=5)).replace(".", ",")
    source = SourceText("s", "Book", [Section("Ch", text)])
    passages = chunk_sources([source], ChunkingConfig(48, 0), Tokenizer(hf_tokenizer, frozenset()))

    def tokens(piece: str) -> int:
        return len(hf_tokenizer.encode(piece, add_special_tokens=False))

    assert len(passages) > 10
    assert ("" if chinese else " ").join(p.text for p in passages) == text
    assert all(p.token_count == tokens(p.text) <= 48 for p in passages)
    for passage, following in pairwise(passages):
        # One more character (or word) would not have fitted.
        more = following.text[0] if chinese else " " + following.text.split(" ")[0]
        assert tokens(passage.text + more) > 48


def test_an_encoder_without_batch_counting_gives_the_same_passages(hf_tokenizer):
    class OneAtATime:
        def encode(self, text: str) -> list[int]:
            return hf_tokenizer.encode(text)

    sentences = filler(ENGLISH_SENTENCES, 100, seed=9) + filler(CHINESE_SENTENCES, 100, seed=9)
    long_one = " ".join(f"word{i}," for i in range(120)) + " end."
    text = (
        make_section_text(sentences[:100], False)
        + " "
        + long_one
        + "\n\n"
        + "".join(sentences[100:])
    )
    source = SourceText("s", "Book", [Section("Ch", text)])
    config = ChunkingConfig(64, 1)

    batched = chunk_sources([source], config, Tokenizer(hf_tokenizer, frozenset()))
    assert chunk_sources([source], config, OneAtATime()) == batched
    assert all(p.token_count == len(hf_tokenizer.encode(p.text)) for p in batched)


def build_book(pool, needle: str, needle_page: int, chinese: bool) -> SourceText:
    """Forty pages of ~100 random filler sentences each; the needle sits on one page."""
    rng = random.Random(11)
    sections = []
    for page in range(1, 41):
        sentences = rng.choices(pool, k=100)
        if page == needle_page:
            sentences.insert(57, needle)
        sections.append(
            Section(f"Chapter {(page - 1) // 10 + 1}", make_section_text(sentences, chinese), page)
        )
    return SourceText("book-1", "The Long Book", sections)


@pytest.mark.parametrize(
    ("chinese", "needle", "question"),
    [
        (
            False,
            "The secret ingredient of the lighthouse keeper's stew was smoked paprika.",
            "What was the secret ingredient in the lighthouse keeper's stew?",
        ),
        (
            True,
            "邮局的老局长把那枚翡翠印章藏在钟楼的第三层。",
            "老局长把翡翠印章藏在哪里？",
        ),
    ],
)
def test_a_question_retrieves_the_passage_that_answers_it(chinese, needle, question):
    pool = CHINESE_SENTENCES if chinese else ENGLISH_SENTENCES
    book = build_book(pool, needle, needle_page=27, chinese=chinese)
    index = PassageIndex.from_sources([book], ChunkingConfig(max_tokens=128))
    assert len(index.passages) > 100

    hits = index.search(question, k=3)
    holding = [hit for hit in hits if needle in hit.passage.text]
    assert holding, [hit.passage.text for hit in hits]
    context = format_context(hits)
    citation = context.citations[holding[0].citation_number]
    assert (citation.source_id, citation.page, citation.section_title) == (
        "book-1",
        27,
        "Chapter 3",
    )
    assert f"[{holding[0].citation_number}] (The Long Book, Chapter 3, p. 27) " in context.text


def test_context_block_numbers_passages_and_maps_answer_citations():
    sources = [
        SourceText("a", "Alpha", [Section("Intro", "Apples are red.")]),
        SourceText("b", "Beta", [Section(None, "Apples and pears are fruit.", 4)]),
    ]
    index = PassageIndex.from_sources(sources)
    context = format_context(index.search("apples pears", k=5))

    assert (
        context.text
        == "[1] (Beta, p. 4) Apples and pears are fruit.\n\n[2] (Alpha, Intro) Apples are red."
    )
    assert {n: (c.source_id, c.page) for n, c in context.citations.items()} == {
        1: ("b", 4),
        2: ("a", None),
    }
    answer = "Pears are fruit [1]; apples are red [2][1] and blue [1, 3]."
    assert cited_numbers(answer) == [1, 2, 3]
    assert context.unknown_citations(answer) == [3]


def test_reciprocal_rank_fusion_matches_the_formula():
    fused = reciprocal_rank_fusion([[2, 0, 1], [0, 3]], size=5)
    expected = [1 / 62 + 1 / 61, 1 / 63, 1 / 61, 1 / 62, 0.0]
    assert fused.tolist() == pytest.approx(expected)


class ConceptEmbedder:
    """A toy embedder: one axis per concept, words vote for theirs."""

    CONCEPTS: ClassVar = {
        "car": 0,
        "automobile": 0,
        "fuel": 0,
        "apples": 1,
        "bananas": 1,
        "sweet": 1,
    }

    def embed(self, texts):
        vectors = []
        for text in texts:
            vector = [0.0, 0.0]
            for word in text.lower().replace(".", "").split():
                if word in self.CONCEPTS:
                    vector[self.CONCEPTS[word]] += 1.0
            vectors.append(vector)
        return vectors


def test_dense_scores_fuse_with_bm25_by_rank():
    passages = ["Bananas and apples are sweet.", "The automobile needs fuel.", "A car is outside."]
    sources = [SourceText(str(i), f"Doc {i}", [Section(None, t)]) for i, t in enumerate(passages)]

    lexical_only = PassageIndex.from_sources(sources).search("car", k=3)
    assert [hit.passage.source_id for hit in lexical_only] == ["2"]

    fused = PassageIndex.from_sources(sources, embedder=ConceptEmbedder()).search("car", k=3)
    # BM25 ranks only doc 2; cosine ranks docs 1 and 2 (tied, document order) then doc 0.
    assert [hit.passage.source_id for hit in fused] == ["2", "1", "0"]
    assert [hit.score for hit in fused] == pytest.approx([1 / 61 + 1 / 62, 1 / 61, 1 / 63])
    assert [hit.citation_number for hit in fused] == [1, 2, 3]


def test_dense_scores_find_what_shares_no_word_with_the_question():
    sources = [SourceText("d", "Doc", [Section(None, "The automobile needs fuel.")])]
    assert PassageIndex.from_sources(sources).search("car", k=1) == []
    index = PassageIndex.from_sources(sources, embedder=ConceptEmbedder())
    assert index.search("car", k=1)[0].passage.text == "The automobile needs fuel."


def test_empty_sources_and_queries_are_refused():
    with pytest.raises(InvalidRequestError):
        PassageIndex.from_sources([SourceText("e", "Empty", [Section(None, "  \n ")])])
    index = PassageIndex.from_sources([SourceText("d", "Doc", [Section(None, "Some text.")])])
    with pytest.raises(InvalidRequestError):
        index.search("   ")
    with pytest.raises(InvalidRequestError):
        ChunkingConfig(max_tokens=0)


def test_an_embedder_giving_the_wrong_number_of_vectors_is_refused():
    class ShortEmbedder:
        def embed(self, texts):
            return [[1.0, 0.0]]

    sources = [SourceText("d", "Doc", [Section(None, "One. Two.\n\nThree.")])]
    with pytest.raises(TomeError):
        PassageIndex.from_sources(sources, ChunkingConfig(2), embedder=ShortEmbedder())


def test_jieba_loads_without_logging(caplog):
    jieba.setLogLevel(logging.DEBUG)  # as in a fresh process: jieba logs its loading
    _segmenter.cache_clear()
    with caplog.at_level(logging.DEBUG):
        assert "图书馆" in search_terms("图书馆")
    assert [record for record in caplog.records if record.name == "jieba"] == []
