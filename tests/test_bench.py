"""`tome bench` on tiny random models: both sides run in their own processes and the report
has a row for every measurement. No timing assertions: only that the numbers exist."""

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tome.bench import BenchConfig, run_bench
from tome.bench.config import parse_int_list
from tome.bench.measure import measure
from tome.bench.report import Report
from tome.bench.results import SideResult
from tome.bench.spec import ModelSpec
from tome.bench.targets import issue_targets
from tome.bench.workloads import Workload
from tome.cli import app
from tome.errors import InvalidRequestError
from tome.loader import ModelSource

TINY_WORKLOAD = dict(
    prefill_lengths=(32,), decode_batches=(1, 2), decode_prompt_len=32, decode_tokens=4
)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def assert_measured(side, name: str, prefill_lengths=(32,)) -> None:
    assert side.name == name
    assert set(side.prefill_tps) == set(prefill_lengths)
    assert set(side.decode_tps) == {(1, 32), (2, 32)}
    assert all(v > 0 for v in [*side.prefill_tps.values(), *side.decode_tps.values()])
    assert side.peak_rss_bytes > 0


def test_bench_runs_both_sides_and_writes_markdown(tiny_llama, tmp_path):
    markdown = tmp_path / "bench.md"
    config = BenchConfig(model=str(tiny_llama), markdown=markdown, **TINY_WORKLOAD)
    report = run_bench(config, quiet())
    assert_measured(report.ours, "tome")
    assert_measured(report.hf, "transformers")
    labels = [row[0] for row in report.rows()]
    assert labels == [
        "prefill 32 tokens (tok/s)",
        "decode batch 1 after 32 (tok/s)",
        "decode batch 2 after 32 (tok/s)",
        "peak RSS (MiB)",
    ]
    text = markdown.read_text()
    assert "| decode batch 2 after 32 (tok/s) |" in text
    assert ">= 1.5x transformers" in text


def test_bench_dummy_from_a_bare_config(tiny_llama, tmp_path):
    # Only config.json: the benchmark supplies token ids and a placeholder tokenizer.
    config_file = tmp_path / "config.json"
    config_file.write_text((tiny_llama / "config.json").read_text())
    window = json.loads(config_file.read_text())["max_position_embeddings"]
    workload = {**TINY_WORKLOAD, "prefill_lengths": (32, window)}
    report = run_bench(BenchConfig(dummy=str(config_file), **workload), quiet())
    # A window-long prompt is measured one short: our engine keeps a slot for the answer.
    assert_measured(report.ours, "tome", prefill_lengths=(32, window - 1))
    assert_measured(report.hf, "transformers", prefill_lengths=(32, window - 1))
    assert report.model.dummy


def synthetic_report(hf: SideResult | None) -> Report:
    workload = Workload((8192,), (1, 16), (2048,), 64, vocab_size=100)
    model = ModelSpec("m", ModelSource("gguf", Path("m.gguf")), False, "float32", "cpu")
    ours = SideResult(
        "tome", {8192: 450.0}, {(1, 2048): 30.0, (16, 2048): 200.0}, peak_rss_bytes=2**30
    )
    return Report(model, workload, ours, hf, issue_targets(workload))


def test_report_marks_targets_met_and_missed():
    hf = SideResult(
        "transformers",
        {8192: 409.0},
        {(1, 2048): 22.0, (16, 2048): 100.0},
        peak_rss_bytes=2**31,
    )
    rows = {row[0]: row for row in synthetic_report(hf).rows()}
    assert rows["prefill 8192 tokens (tok/s)"][3:] == ("1.10x", ">= 1x transformers: met (1.10x)")
    assert rows["decode batch 1 after 2048 (tok/s)"][4] == ">= 1.5x transformers: MISSED (1.36x)"
    assert (
        rows["decode batch 16 after 2048 (tok/s)"][4]
        == ">= 8x tome decode batch 1 after 2048: MISSED (6.67x)"
    )
    assert rows["peak RSS (MiB)"][1:] == ("1,024", "2,048", "0.50x", "")


def test_report_title_names_the_weight_quantization():
    report = synthetic_report(None)
    assert "quantized" not in report.title
    report.model = replace(report.model, quantization="int4-g64", quantize_head=False)
    assert "ours quantized to int4-g64 but the embedding and LM head" in report.title


def test_report_without_transformers():
    rows = synthetic_report(None).rows()
    assert all(row[2] == "-" and row[3] == "-" for row in rows)
    assert ">= 1.5x transformers: not measured" in [row[4] for row in rows]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--decode-batches", "1,x"], "--decode-batches must be a comma-separated list"),
        (["--prefill-lengths", "0"], "prefill lengths must be >= 1"),
        (["--dtype", "float8"], "dtype must be auto or one of"),
        (["--decode-tokens", "1"], "--decode-tokens must be >= 2"),
        (["--prefill-repeats", "0"], "--prefill-repeats must be >= 1"),
        (["--model", "x", "--dummy", "y"], "give --model or --dummy, not both"),
        (["--gguf-weights", "q4"], "gguf_weights must be auto or dequantize"),
        (["--quantization", "int3"], "quantization must be one of int8, int4"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message):
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_decode_longer_than_the_window_is_refused(tiny_llama):
    config = BenchConfig(model=str(tiny_llama), decode_prompt_len=4096)
    with pytest.raises(InvalidRequestError, match="exceeds the model's window"):
        run_bench(config, quiet())


class ScriptedBench:
    """A side whose prefills take the speeds it is given, in turn."""

    def __init__(self, prefill_speeds: list[float]) -> None:
        self.prefill_speeds = prefill_speeds
        self.prompts: list[list[int]] = []

    def has_room(self, key) -> bool:
        return True

    def prefill_tps(self, prompt: list[int]) -> float:
        self.prompts.append(prompt)
        return self.prefill_speeds.pop(0)

    def decode_tps(self, prompts: list[list[int]], max_tokens: int) -> float:
        return 1.0


def test_a_prefill_row_is_the_median_of_its_repeats():
    side = ScriptedBench([900.0, 100.0, 500.0, 40.0, 60.0, 50.0])
    workload = Workload((64, 128), (1,), (16,), 4, vocab_size=100, prefill_repeats=3)
    result = measure("scripted", side, workload)
    assert result.prefill_tps[64] == 500.0  # of 900, 100, 500; an outlier either way is out
    assert result.prefill_tps[128] == 50.0
    assert [len(p) for p in side.prompts] == [64, 64, 64, 128, 128, 128]
    assert side.prompts[0] == side.prompts[1] == side.prompts[2]


def test_parse_int_list():
    assert parse_int_list("512, 2048,512", "--x") == (512, 2048)
    with pytest.raises(InvalidRequestError):
        parse_int_list("", "--x")
