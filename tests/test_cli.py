"""The `tome` command through typer's CliRunner: run and chat answer with the model's greedy
text, bad flags cost one "error:" line and a non-zero exit (no traceback), --help lists
the commands; and parse_size."""

import pytest
from typer.testing import CliRunner

from tests.reference import load_reference, reference_greedy
from tome.cli import app
from tome.cli_options import parse_size
from tome.errors import InvalidRequestError

SMALL_KV = ["--kv-cache-memory", "32MiB"]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def greedy_text(tiny_llama, hf_tokenizer):
    """What transformers answers, greedily, to a one-message chat."""
    reference = load_reference(tiny_llama)

    def answer(message: str, max_tokens: int) -> str:
        ids = hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": message}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        tokens, _ = reference_greedy(reference, list(ids), max_tokens)
        if hf_tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(hf_tokenizer.eos_token_id) + 1]
        return hf_tokenizer.decode(tokens, skip_special_tokens=True)

    return answer


def assert_one_error_line(result) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")


def test_help_lists_run_and_chat(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.output and "chat" in result.output


def test_run_prints_the_greedy_answer(runner, tiny_llama, greedy_text):
    args = ["run", "Hello", "--model", str(tiny_llama), "--max-tokens", "5", *SMALL_KV]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = greedy_text("Hello", 5)
    assert expected.strip()
    assert expected in result.stdout


def test_run_raw_sends_the_prompt_without_template(runner, tiny_llama, hf_tokenizer):
    reference = load_reference(tiny_llama)
    tokens, _ = reference_greedy(reference, hf_tokenizer.encode("Hello"), 4)
    expected = hf_tokenizer.decode(tokens, skip_special_tokens=True)
    args = ["run", "Hello", "--raw", "--model", str(tiny_llama), "--max-tokens", "4", *SMALL_KV]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert expected in result.stdout


@pytest.mark.parametrize(
    "bad",
    [
        ["--temperature", "-1"],
        ["--kv-cache-memory", "12XB"],
        ["--dtype", "int3"],
        ["--top-p", "0"],
        ["--max-tokens", "0"],
        ["--max-model-len", "5000"],  # beyond the 1024 window: a long message, one line
        ["--quantization", "int3"],
    ],
)
def test_bad_flags_give_one_error_line(runner, tiny_llama, bad):
    result = runner.invoke(app, ["run", "Hello", "--model", str(tiny_llama), *SMALL_KV, *bad])
    assert_one_error_line(result)


@pytest.mark.parametrize(
    "bad",
    [
        ["--prefill-min-share", "2"],
        ["--max-num-partial-prefills", "0"],
        ["--long-prefill-token-threshold", "0"],
        ["--max-num-batched-tokens", "8"],
    ],
)
def test_bad_scheduling_flags_of_serve_give_one_error_line(runner, tiny_llama, bad):
    result = runner.invoke(app, ["serve", str(tiny_llama), *SMALL_KV, *bad])
    assert_one_error_line(result)


@pytest.mark.parametrize(
    "command",
    [
        ["run", "Hello", "--model"],
        ["chat", "--model"],
        ["serve"],
        ["eval", "run", "--model"],
        ["eval", "ppl", "--model"],
        ["bench", "context", "--model"],
        ["bench", "assistant", "--model"],
    ],
)
def test_every_model_command_refuses_a_bad_quantization_in_one_line(runner, tiny_llama, command):
    result = runner.invoke(app, [*command, str(tiny_llama), *SMALL_KV, "--quantization", "int3"])
    assert_one_error_line(result)
    assert "quantization must be one of int8, int4, int4-g64" in result.stderr


def test_quantization_flags_reach_the_engine_config(runner, tiny_llama, monkeypatch):
    configs = []
    monkeypatch.setattr("tome.server.serve.serve", lambda engine, server: configs.append(engine))
    args = ["serve", str(tiny_llama), "--quantization", "int4-g64", "--no-quantize-head"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["serve", str(tiny_llama)]).exit_code == 0
    assert [(c.quantization, c.quantize_head) for c in configs] == [
        ("int4-g64", False),
        (None, True),
    ]


def test_quantization_help_lists_the_schemes(runner):
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "--quantization" in result.output and "--no-quantize-head" in result.output
    assert "int8, int4, int4-g64, int4-g128, fp8, fp8-block, mxfp4" in result.output


def test_run_answers_with_int8_weights(runner, tiny_llama):
    args = ["run", "Hello", "--model", str(tiny_llama), "--max-tokens", "3", *SMALL_KV]
    result = runner.invoke(app, [*args, "--quantization", "int8"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


def test_missing_model_gives_one_error_line(runner, tmp_path):
    result = runner.invoke(app, ["run", "Hello", "--model", str(tmp_path / "nothing")])
    assert_one_error_line(result)


def test_chat_answers_then_exits(runner, tiny_llama, greedy_text):
    args = ["chat", "--model", str(tiny_llama), "--max-tokens", "4", "--temperature", "0"]
    result = runner.invoke(app, [*args, *SMALL_KV], input="hi\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "you>" in result.stdout and "tome>" in result.stdout
    expected = greedy_text("hi", 4)
    assert expected.strip()
    assert expected in result.stdout


def test_chat_ends_at_end_of_input(runner, tiny_llama):
    args = ["chat", "--model", str(tiny_llama), "--max-tokens", "2", *SMALL_KV]
    result = runner.invoke(app, args, input="")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GiB", 2 * 2**30),
        ("500MB", 500 * 10**6),
        ("1.5KiB", 1536),
        ("123", 123),
        ("64b", 64),
        (" 4 kb ", 4000),
        ("3mib", 3 * 2**20),
        ("1gb", 10**9),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12XB", "", "GiB", "-1GiB", "1e9", "2 GiB extra", "1,5GB"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidRequestError) as exc_info:
        parse_size(text)
    assert "\n" not in str(exc_info.value)
