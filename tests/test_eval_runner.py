"""The grid end to end through our engine with a tiny random model: answers are
transformers' greedy text for the chat-templated prompt; every item is answered and scored;
the JSON report's aggregates agree with its items; one PNG heatmap per task and language;
a grid longer than the model's window is refused before anything runs."""

import json

import pytest
from matplotlib.image import imread

from tests.reference import load_reference, reference_greedy
from tome import LLM
from tome.errors import PromptTooLongError
from tome.eval import EvalConfig, ItemSpec, TokenCounter, generate_item
from tome.eval.engine_backend import EngineBackend
from tome.eval.main import run_eval


@pytest.fixture(scope="module")
def backend(tiny_llama) -> EngineBackend:
    return EngineBackend(LLM(str(tiny_llama), kv_cache_memory=32 * 2**20))


def test_engine_grid_writes_scores_and_heatmaps(backend, tiny_llama, tmp_path):
    config = EvalConfig(
        tasks=("passkey",),  # the shortest answers: a random model never stops early
        languages=("en", "zh"),
        lengths=(512, 640),
        depths=(0.0, 1.0),
        samples=1,
        out=tmp_path,
    )
    report = json.loads(run_eval(config, backend).read_text())

    items = report["items"]
    assert len(items) == 2 * 2 * 2  # languages x lengths x depths
    for item in items:
        assert isinstance(item["output"], str) and item["expected"]
        assert 0.0 <= item["score"] <= 1.0
        assert abs(item["prompt_tokens"] - item["context_length"]) <= 0.03 * item["context_length"]
    mean = sum(i["score"] for i in items) / len(items)
    assert report["overall"] == pytest.approx(mean)
    assert report["by_task"]["passkey"]["n"] == 8
    assert report["by_language"]["zh"]["n"] == 4
    assert set(report["by_length"]) == {"512", "640"}
    assert set(report["by_depth"]) == {"0.0", "1.0"}
    assert len(report["cells"]) == 8  # one sample per cell
    assert report["model"] == tiny_llama.name

    for task in config.tasks:
        for language in config.languages:
            image = imread(tmp_path / f"heatmap_{task}_{language}.png")
            assert image.shape[0] > 100 and image.shape[1] > 100


def test_a_context_over_the_window_is_refused_before_running(backend, tmp_path):
    window = backend.llm.engine.max_model_len
    config = EvalConfig(tasks=("passkey",), lengths=(window,), out=tmp_path)
    with pytest.raises(PromptTooLongError, match="does not fit"):
        run_eval(config, backend)
    assert not any(tmp_path.iterdir())


def test_engine_answers_are_greedy_replies_to_the_chat_templated_prompt(
    backend, tiny_llama, hf_tokenizer
):
    item = generate_item(ItemSpec("passkey", "zh", 384, 0.5, 0, 3), TokenCounter(hf_tokenizer))
    ids = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": item.prompt}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    tokens, _ = reference_greedy(load_reference(tiny_llama), list(ids), item.max_answer_tokens)
    if hf_tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(hf_tokenizer.eos_token_id)]
    assert backend([item]) == [hf_tokenizer.decode(tokens, skip_special_tokens=True)]
