"""run_bench: settle the model, run each side in its own process, print the table."""

import tempfile
from datetime import date
from pathlib import Path

import psutil
from rich.console import Console
from transformers import PretrainedConfig

from tome.bench.config import BenchConfig
from tome.bench.dummy_model import dummy_model_dir
from tome.bench.report import Report
from tome.bench.spec import ModelSpec
from tome.bench.targets import issue_targets
from tome.bench.worker import run_side_in_subprocess
from tome.bench.workloads import Workload
from tome.engine.config import DTYPES
from tome.engine.model_loading import choose_dtype
from tome.errors import InvalidRequestError
from tome.layers.rotary import context_window
from tome.loader import ModelSource, load_hf_config, resolve_model
from tome.models.rope_override import apply_rope_override, check_rope_override

BUSY_PERCENT = 20
BUSY_SAMPLE_SECONDS = 0.5


def run_bench(config: BenchConfig, console: Console | None = None) -> Report:
    """Run our engine, then transformers (unless skipped), and print one table."""
    console = console or Console()
    # The dummy folder must outlive both worker processes.
    with tempfile.TemporaryDirectory(prefix="tome-bench-") as scratch:
        source = (
            dummy_model_dir(config.dummy, Path(scratch))
            if config.dummy
            else resolve_model(config.model)
        )
        hf_config = load_hf_config(source)
        apply_rope_override(hf_config, check_rope_override(config.rope_scaling))
        model = _model_spec(config, source, hf_config)
        workload = _workload(config, hf_config, console)
        console.print(f"[bold]tome bench[/]: {model.name}, {model.dtype} on {model.device}")
        _warn_if_busy(console)
        console.print("running tome ...")
        ours = run_side_in_subprocess("tome", model, workload)
        hf = None
        if not config.skip_hf:
            console.print("running transformers ...")
            hf = run_side_in_subprocess("transformers", model, workload)
    report = Report(model, workload, ours, hf, issue_targets(workload))
    console.print(report.rich_table())
    if config.markdown:
        _write_markdown(config.markdown, report)
        console.print(f"appended the table to {config.markdown}")
    return report


def _model_spec(config: BenchConfig, source: ModelSource, hf_config: PretrainedConfig) -> ModelSpec:
    device = config.resolved_device()
    dtype = choose_dtype(config.dtype, hf_config, device)
    dtype_name = next(name for name, value in DTYPES.items() if value == dtype)
    return ModelSpec(
        name=config.dummy or source.name,
        source=source,
        dummy=config.dummy is not None,
        dtype=dtype_name,
        device=device.type,
        kv_cache_dtype=config.kv_cache_dtype,
        rope_scaling=config.rope_scaling,
        sparse_prefill=config.sparse_prefill,
    )


def _workload(config: BenchConfig, hf_config: PretrainedConfig, console: Console) -> Workload:
    window = context_window(hf_config)
    if config.decode_prompt_len + config.decode_tokens > window:
        raise InvalidRequestError(
            f"a {config.decode_prompt_len}-token decode prompt plus {config.decode_tokens} tokens "
            f"exceeds the model's window of {window}"
        )
    too_long = [n for n in config.prefill_lengths if n > window]
    if too_long:
        raise InvalidRequestError(
            f"prefill length {too_long[0]} exceeds the model's window of {window}"
        )
    if window in config.prefill_lengths:
        # Our engine keeps the last position for the answer, so a prompt fills the window
        # less one; both sides measure that length.
        console.print(f"prefill {window} is measured at {window - 1} tokens (the window less one)")
    lengths = tuple(dict.fromkeys(min(n, window - 1) for n in config.prefill_lengths))
    return Workload(
        prefill_lengths=lengths,
        decode_batches=config.decode_batches,
        decode_prompt_len=config.decode_prompt_len,
        decode_tokens=config.decode_tokens,
        vocab_size=hf_config.vocab_size,
        seed=config.seed,
    )


def _warn_if_busy(console: Console) -> None:
    # Torch's CPU threads wait on each other at every op: one other busy process on a small
    # machine can make both sides several times slower, and the table meaningless.
    busy = psutil.cpu_percent(interval=BUSY_SAMPLE_SECONDS)
    if busy > BUSY_PERCENT:
        console.print(
            f"[bold yellow]warning:[/] the CPUs are already {busy:.0f}% busy; "
            "timings will be low and noisy"
        )


def _write_markdown(path: Path, report: Report) -> None:
    with path.open("a") as file:
        file.write(f"\n### {date.today().isoformat()}\n\n{report.markdown()}")
