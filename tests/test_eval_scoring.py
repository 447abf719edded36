"""Scoring on answers known to be right or wrong, in English and Chinese: full-width digits,
punctuation of either language, spaces between Han characters, numbers inside longer
numbers, partial recall, thinking that never reached an answer."""

import pytest

from tome.eval import ItemSpec, TokenCounter, generate_item, score
from tome.eval.scoring import normalize


@pytest.mark.parametrize(
    ("answer", "expected", "language", "right"),
    [
        ("The pass key is 71432.", ("71432",), "en", 1.0),
        ("**71432**", ("71432",), "en", 1.0),
        ("The pass key is 71423.", ("71432",), "en", 0.0),
        ("The pass key is 714325.", ("71432",), "en", 0.0),
        ("I could not find a pass key.", ("71432",), "en", 0.0),
        ("通行密钥是７１４３２。", ("71432",), "zh", 1.0),
        ("答案：“71432”！", ("71432",), "zh", 1.0),
        ("通行密钥是71423。", ("71432",), "zh", 0.0),
        ("我没有找到通行密钥。", ("71432",), "zh", 0.0),
    ],
)
def test_single_answers(answer, expected, language, right):
    assert score(answer, expected, language) == right


def test_several_expected_values_score_the_fraction_recalled():
    values = ("3530829", "7624039", "1810111", "2215279")
    assert score("3530829, 7624039, 1810111 and 2215279", values, "en") == 1.0
    assert score("The numbers are 2215279 and 3530829.", values, "en") == 0.5
    assert score("魔法数字分别是：３５３０８２９、７６２４０３９。", values, "zh") == 0.5
    assert score("No numbers here.", values, "en") == 0.0


def test_variable_names_match_whole_words_in_any_case():
    names = ("KEMUB", "CRDLS", "BQGBC", "NNCHC", "RNBSD")
    assert score("KEMUB, CRDLS, BQGBC, NNCHC, RNBSD", names, "en") == 1.0
    assert score("kemub and crdls", names, "en") == 0.4
    assert score("XKEMUB, CRDLSX", names, "en") == 0.0
    assert score("变量有：KEMUB、CRDLS和BQGBC。", names, "zh") == 0.6


def test_common_words_in_either_language():
    english = ("apple", "river", "candle")
    assert score("1. Apple 2. River 3. Candle", english, "en") == 1.0
    assert score("apples, rivers", english, "en") == 0.0
    chinese = ("苹果", "河流", "蜡烛")
    assert score("出现最多的词语是：苹 果、河流。", chinese, "zh") == pytest.approx(2 / 3)
    assert score("出现最多的是香蕉和灯塔。", chinese, "zh") == 0.0


def test_thinking_without_an_answer_scores_nothing():
    assert score("<think>The pass key is 71432.</think>I don't know.", ("71432",), "en") == 0.0
    assert score("<think>hmm</think>The pass key is 71432.", ("71432",), "en") == 1.0


def test_normalize_maps_full_width_forms_and_drops_punctuation():
    assert normalize("ＡＢＣ，１２３！", "en") == "abc 123"
    assert normalize("「灯塔」的 数字 是：１２３。", "zh") == "灯塔的数字是123"


@pytest.mark.parametrize("language", ["en", "zh"])
def test_an_items_own_answers_score_one_and_another_items_zero(hf_tokenizer, language):
    counter = TokenCounter(hf_tokenizer)
    items = [
        generate_item(ItemSpec("niah_multivalue", language, 512, 0.5, 0, seed), counter)
        for seed in (1, 2)
    ]
    right = "、".join(items[0].answers)
    assert score(right, items[0].answers, language) == 1.0
    assert score(right, items[1].answers, language) == 0.0
