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
