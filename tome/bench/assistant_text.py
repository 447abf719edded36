"""Text for the reading assistant's benchmark, the same for the same seed: the evaluation's
filler sentences interleaved with sentences built from its word lists.

The filler alone is a few dozen sentences repeated, which deflate squeezes twentyfold and
BM25 sees as a tiny vocabulary; mixing in two-word sentences drawn from two hundred nouns
gives text that compresses and indexes more like a book's."""

import random
from collections.abc import Iterator

from tome.eval.filler_text import CHINESE_SENTENCES, ENGLISH_SENTENCES
from tome.eval.haystack import SEPARATOR
from tome.eval.word_lists import CHINESE_WORDS, ENGLISH_WORDS

TEMPLATE_SHARE = 0.5  # of sentences built from the word lists rather than drawn from filler

ENGLISH_TEMPLATES = (
    "The {a} was left beside the {b} for {n} days.",
    "Nobody expected to find a {a} in the {b}, but there it was.",
    "She counted {n} of them, and each {a} had its own {b}.",
    "A {a} and a {b} appear on page {n} of the old guide.",
    "When the {a} broke, he mended it with a piece of the {b}.",
)
# No digits: in the Chinese text a number can only come from a planted fact.
CHINESE_TEMPLATES = (
    "桌上的{a}让人想起了{b}。",
    "他在{a}和{b}之间犹豫了很久。",
    "说起{a}，大家总会想到{b}。",
    "那个{a}旁边一直放着一个{b}。",
    "她把{a}送给了住在隔壁、喜欢{b}的老人。",
)

_FILLER = {"en": ENGLISH_SENTENCES, "zh": CHINESE_SENTENCES}
_WORDS = {"en": ENGLISH_WORDS, "zh": CHINESE_WORDS}
_TEMPLATES = {"en": ENGLISH_TEMPLATES, "zh": CHINESE_TEMPLATES}


def sentences(language: str, rng: random.Random) -> Iterator[str]:
    """An endless stream of sentences in `language` ("en" or "zh")."""
    filler, words, templates = _FILLER[language], _WORDS[language], _TEMPLATES[language]
    while True:
        if rng.random() < TEMPLATE_SHARE:
            a, b = rng.sample(words, 2)
            yield rng.choice(templates).format(a=a, b=b, n=rng.randint(2, 999))
        else:
            yield rng.choice(filler)


def text_of_length(language: str, chars: int, rng: random.Random) -> str:
    """Whole sentences, joined as the language joins them, up to about `chars` characters."""
    parts, length = [], 0
    for sentence in sentences(language, rng):
        if length >= chars:
            break
        parts.append(sentence)
        length += len(sentence) + len(SEPARATOR[language])
    return SEPARATOR[language].join(parts)
