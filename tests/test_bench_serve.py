"""`tome bench serve` against a live `tome serve` and against the bare engine: every request
completes, and the table has throughput and latency percentiles. No timing assertions."""

import pytest
from typer.testing import CliRunner

from tests.live_server import LiveServer
from tome.cli import app

WORKLOAD = ["--num-prompts", "6", "--concurrency", "3", "--prompt-len", "20", "--output-len", "4"]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    live = LiveServer(
        tiny_llama, tmp_path_factory.mktemp("bench_serve"), "--kv-cache-memory", "16MiB"
    )
    yield live
    live.stop()


def assert_complete_table(result) -> None:
    assert result.exit_code == 0, result.output
    assert "requests completed / failed" in result.output
    assert "6 / 0" in result.output
    for metric in ("output throughput", "TTFT p99", "TPOT median", "ITL mean"):
        assert metric in result.output


def test_against_a_live_server(server, tmp_path):
    markdown = tmp_path / "bench.md"
    args = ["bench", "serve", "--base-url", server.base_url, "--model", "tiny", *WORKLOAD]
    result = CliRunner().invoke(app, [*args, "--markdown", str(markdown)], env={"COLUMNS": "200"})
    assert_complete_table(result)
    assert "| requests completed / failed | 6 / 0 |" in markdown.read_text()


def test_against_the_bare_engine(tiny_llama):
    args = ["bench", "serve", "--model", str(tiny_llama), *WORKLOAD]
    assert_complete_table(CliRunner().invoke(app, args, env={"COLUMNS": "200"}))


def test_an_unreachable_server_is_one_error_line():
    args = ["bench", "serve", "--base-url", "http://127.0.0.1:9/v1", "--model", "x", *WORKLOAD]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error" in result.output.lower()


MIXED = [
    "--workload",
    "mixed",
    "--num-long-prompts",
    "2",
    "--long-prompt-len",
    "600",
    "--num-prompts",
    "4",
    "--prompt-len",
    "5",
    "--output-len",
    "3",
    "--request-rate",
    "20",
    "--short-delay",
    "0",
]


def assert_complete_mixed_table(text: str) -> None:
    assert "requests (long + short) / failed 6 / 0" in text
    for metric in ("short TTFT alone", "short pro TTFT p99", "short free TTFT p50"):
        assert metric in text
    assert "long request total time, max (s)" in text


def test_mixed_workload_against_a_live_server(server, tmp_path):
    markdown = tmp_path / "bench.md"
    args = ["bench", "serve", "--base-url", server.base_url, "--model", "tiny", *MIXED]
    result = CliRunner().invoke(app, [*args, "--markdown", str(markdown)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = markdown.read_text()
    assert_complete_mixed_table(text.replace("| ", "").replace(" |", ""))
    # Each long prompt reached the server whole: 600 words, at least a token each.
    row = next(line for line in text.splitlines() if line.startswith("| long prompt tokens"))
    assert all(int(n) >= 600 for n in row.split("|")[2].split(","))


def test_mixed_workload_against_the_bare_engine(tiny_llama, tmp_path):
    markdown = tmp_path / "bench.md"
    args = ["bench", "serve", "--model", str(tiny_llama), *MIXED, "--markdown", str(markdown)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert_complete_mixed_table(markdown.read_text().replace("| ", "").replace(" |", ""))
