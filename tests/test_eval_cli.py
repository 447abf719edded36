"""`tome eval` through typer's CliRunner: the sub-app and its run command are listed, and
every bad flag (unknown task or language, unreadable length or depth, a length over the
model's window, an unreachable or malformed endpoint) costs one "error:" line and exit 1."""

import json
import socket

import pytest
from typer.testing import CliRunner

from tome.cli import app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def assert_one_error_line(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


def test_eval_and_run_are_listed(runner):
    assert "eval" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "run" in result.output


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--tasks", "passkey,haystack"], "unknown task 'haystack'"),
        (["--languages", "en,fr"], "unknown language 'fr'"),
        (["--lengths", "4x"], "cannot read '4x' as a context length"),
        (["--depths", "0,1.5"], "depths are fractions from 0 to 1"),
        (["--depths", "middle"], "--depths must be fractions"),
        (["--samples", "0"], "--samples must be >= 1"),
        (["--base-url", "ftp://host/v1", "--model", "m"], "must start with http"),
        (["--base-url", "http://127.0.0.1:9/v1"], "--base-url needs --model"),
    ],
)
def test_bad_flags_cost_one_error_line(runner, tiny_llama, tmp_path, flags, fragment):
    args = ["eval", "run", "--out", str(tmp_path), "--tokenizer", str(tiny_llama), *flags]
    assert_one_error_line(runner.invoke(app, args), fragment)


def test_a_length_over_the_window_costs_one_error_line(runner, tiny_llama, tmp_path):
    args = ["eval", "run", "--model", str(tiny_llama), "--kv-cache-memory", "32MiB"]
    args += ["--tasks", "passkey", "--lengths", "4k", "--out", str(tmp_path)]
    assert_one_error_line(runner.invoke(app, args), "does not fit")


def test_an_unreachable_endpoint_costs_one_error_line(runner, tiny_llama, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["eval", "run", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m"]
    args += ["--tokenizer", str(tiny_llama), "--tasks", "passkey", "--languages", "en"]
    args += ["--lengths", "256", "--depths", "0.5", "--out", str(tmp_path)]
    assert_one_error_line(runner.invoke(app, args), "cannot reach")


def test_a_run_with_sparse_prefill_scores_every_cell(runner, tiny_llama, tmp_path):
    args = ["eval", "run", "--model", str(tiny_llama), "--kv-cache-memory", "32MiB"]
    args += ["--tasks", "passkey", "--languages", "en", "--lengths", "600", "--depths", "0.5"]
    args += ["--sparse-prefill", '{"min_context": 256, "vertical": 16, "slash": 16']
    args += ["--out", str(tmp_path)]
    assert_one_error_line(runner.invoke(app, args), "--sparse-prefill")
    args[-3] += "}"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["by_task"]["passkey"]["n"] == 1
