"""Search terms of mixed Chinese and English text: jieba's words for runs of Chinese,
lowercased letters-and-digits words for the rest.

jieba's search mode also yields the shorter words inside a long one (图书馆 gives 图书 and
书馆 too), so a question that names part of a compound still meets it.
"""

import logging
import re
from functools import cache

import jieba

_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+")


def search_terms(text: str) -> list[str]:
    """The terms BM25 indexes and queries with, in text order."""
    terms: list[str] = []
    position = 0
    for run in _HAN_RUN.finditer(text):
        terms += _WORD.findall(text[position : run.start()].lower())
        terms += _segmenter().lcut_for_search(run.group())
        position = run.end()
    terms += _WORD.findall(text[position:].lower())
    return terms


@cache
def _segmenter() -> jieba.Tokenizer:
    # jieba logs its dictionary loading to stderr at DEBUG level; only its warnings matter.
    jieba.setLogLevel(logging.WARNING)
    segmenter = jieba.Tokenizer()
    segmenter.initialize()
    return segmenter
