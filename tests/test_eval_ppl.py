"""`tome eval ppl`: perplexities equal exp(mean NLL) from transformers' own forward, for the
checkpoint's rope and a linear extension; windows past a setting's reach are skipped; the
command writes its JSON and plot; bad input costs one error line."""

import json
import math

import pytest
import torch
import transformers
from typer.testing import CliRunner

from tests.conftest import make_tiny_model
from tests.reference import load_reference
from tome.cli import app
from tome.eval.perplexity import rope_label, sweep_perplexity

WINDOW = 64
LINEAR = {"rope_type": "linear", "factor": 2}
TEXT = (
    "The harbour lights came on one by one as the evening fell, and the ferry crossed the "
    "lake for the last time that day. Fishermen mended their nets on the quay while gulls "
    "argued over the scraps. In the town above, bakers were already asleep, and the only "
    "sound was a radio playing somewhere behind an open window. "
) * 3


@pytest.fixture(scope="module")
def short_window_model(tmp_path_factory, hf_tokenizer_dir):
    """A tiny Llama whose window is 64 tokens, so windows end within a short text."""
    path = tmp_path_factory.mktemp("ppl_model")
    return make_tiny_model("llama", path, hf_tokenizer_dir, max_position_embeddings=WINDOW)


@torch.inference_mode()
def reference_perplexity(model, ids: list[int], length: int) -> float:
    """exp of the mean NLL of tokens length//2 .. length-1 of the first `length` tokens."""
    logits = model(torch.tensor([ids[:length]])).logits[0].float()
    start = length // 2
    nll = torch.nn.functional.cross_entropy(
        logits[start - 1 : length - 1], torch.tensor(ids[start:length])
    )
    return math.exp(float(nll))


def linear_reference(path):
    config = transformers.AutoConfig.from_pretrained(path)
    config.rope_parameters = {**config.rope_parameters, "rope_type": "linear", "factor": 2.0}
    return load_reference(path, config=config)


def test_perplexity_equals_transformers(short_window_model, hf_tokenizer):
    ids = hf_tokenizer.encode(TEXT)
    assert len(ids) > 2 * WINDOW
    lengths = [16, 40, WINDOW, 100, 10 * WINDOW]
    points = list(sweep_perplexity(str(short_window_model), ids, lengths, [None, LINEAR]))
    assert [(p.rope, p.context_length) for p in points] == [
        (rope, n) for rope in ("none", rope_label(LINEAR)) for n in lengths
    ]
    by_setting = {"none": load_reference(short_window_model)}
    by_setting[points[-1].rope] = linear_reference(short_window_model)
    for point in points:
        fits = point.context_length < point.window and point.context_length <= len(ids)
        if not fits:
            assert point.perplexity is None and point.note
            continue
        expected = reference_perplexity(by_setting[point.rope], ids, point.context_length)
        assert point.perplexity == pytest.approx(expected, rel=1e-4)
        assert point.scored_tokens == point.context_length - point.context_length // 2
    scored = {(p.rope, p.context_length) for p in points if p.perplexity is not None}
    assert ("none", WINDOW) not in scored  # the window is full: no room for the answer
    assert (points[-1].rope, 100) in scored  # the linear extension doubles the window
    assert points[0].window == WINDOW and points[-1].window == 2 * WINDOW


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_command_writes_json_and_plot(runner, short_window_model, tmp_path):
    text = tmp_path / "book.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "out"
    args = ["eval", "ppl", "--model", str(short_window_model), "--text", str(text)]
    args += ["--lengths", "16,32,64", "--rope", "none", "--rope", json.dumps(LINEAR)]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output
    report = json.loads((out / "ppl.json").read_text())
    assert report["text"] == str(text)
    cells = {(p["rope"], p["context_length"]): p["perplexity"] for p in report["points"]}
    assert len(cells) == 6
    assert cells[("none", 64)] is None
    assert all(v > 1 for k, v in cells.items() if k != ("none", 64))
    assert (out / "ppl.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_builtin_chinese_text(runner, short_window_model, tmp_path):
    args = ["eval", "ppl", "--model", str(short_window_model), "--builtin", "zh"]
    result = runner.invoke(app, [*args, "--lengths", "48", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (point,) = json.loads((tmp_path / "ppl.json").read_text())["points"]
    assert point["perplexity"] > 1 and point["scored_tokens"] == 24


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--text", "no/such/book.txt"], ["no/such/book.txt"]),
        (["--lengths", "1k,lots"], ["'lots'", "context length"]),
        (["--rope", "{yarn"], ["--rope"]),
        (["--rope", '{"rope_type":"yarn"}'], ["factor"]),
        (["--builtin", "fr"], ["--builtin"]),
        (["--builtin", "en", "--text", "book.txt"], ["not both"]),
    ],
)
def test_bad_input_is_one_error_line(runner, short_window_model, flags, fragments):
    result = runner.invoke(app, ["eval", "ppl", "--model", str(short_window_model), *flags])
    assert_one_error_line(result, *fragments)
