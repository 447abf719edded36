"""run_bench: settle the model, run each side in its own process, print the table."""

import tempfile
from datetime import date
from pathlib import Path

import psutil
from rich.console import Console
from transformers import PretrainedConfig

from tome.bench.config import BenchConfig
from tome.bench.context_fit import ContextFit, context_fit
from tome.bench.device_peak import MEASURE, PRESETS
from tome.bench.dummy_model import dummy_model_dir
from tome.bench.report import Report
from tome.bench.results import SideResult
from tome.bench.roofline import Roofline
from tome.bench.spec import ModelSpec
from tome.bench.targets import issue_targets
from tome.bench.worker import run_side_in_subprocess
from tome.bench.workloads import Workload
from tome.engine.config import DTYPES, KV_CACHE_DTYPES
from tome.engine.kv_cache import kv_bytes_per_token, kv_cache_dtype
from tome.engine.memory_plan import parameter_count, weight_bytes
from tome.engine.model_loading import choose_dtype
from tome.errors import InvalidRequestError, TomeError
from tome.layers.rotary import context_window
from tome.loader import ModelSource, load_hf_config, resolve_model
from tome.models.config import ModelConfig
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
        measure_peak = config.wants_roofline and config.roofline_peak == MEASURE
        console.print("running tome ...")
        ours = run_side_in_subprocess("tome", model, workload, measure_peak)
        hf = None if config.skip_hf else _run_hf(model, workload, console)
    roofline = _roofline(config, model, hf_config, ours) if config.wants_roofline else None
    report = Report(model, workload, ours, hf, issue_targets(workload), roofline)
    console.print(report.rich_table())
    fit = context_fit(ModelConfig.from_hf(hf_config), model.dtype) if roofline else None
    if fit:
        console.print(fit.rich_table())
    if config.markdown:
        _write_markdown(config.markdown, report, fit)
        console.print(f"appended the table to {config.markdown}")
    return report


def _run_hf(model: ModelSpec, workload: Workload, console: Console) -> SideResult | None:
    """transformers' side; if its process dies, the table still shows ours."""
    console.print("running transformers ...")
    try:
        return run_side_in_subprocess("transformers", model, workload)
    except TomeError as exc:
        console.print(f"[bold yellow]warning:[/] {exc}; the table shows tome alone")
        return None


def _roofline(
    config: BenchConfig, model: ModelSpec, hf_config: PretrainedConfig, ours: SideResult
) -> Roofline:
    """The roofline of our engine's run: its dtypes, its sparse prefill, the device peak
    measured in its process (or the preset asked for)."""
    peak = ours.device_peak or PRESETS[config.roofline_peak]
    model_config = ModelConfig.from_hf(hf_config)
    # The pool's dtype as the engine resolves it, without the device check (that ran in
    # the worker, and on a GPU would start CUDA in this process).
    if model.kv_cache_dtype == "auto":
        kv_dtype = kv_cache_dtype(model.torch_dtype, model.torch_device)
    else:
        kv_dtype = KV_CACHE_DTYPES[model.kv_cache_dtype]
    return Roofline(
        config=model_config,
        weight_itemsize=_weight_itemsize(model_config, model),
        kv_bytes_per_token=kv_bytes_per_token(model_config, kv_dtype),
        peak=peak,
        decode_tokens=config.decode_tokens,
        sparse=model.sparse_prefill,
    )


def _weight_itemsize(config: ModelConfig, model: ModelSpec) -> float:
    """Bytes a parameter keeps in our engine: the dtype's size, or what the weights
    quantized at load keep over the parameters."""
    if model.quantization is None:
        return model.torch_dtype.itemsize
    loaded = weight_bytes(
        config, model.torch_dtype, model.torch_device, model.quantization, model.quantize_head
    )
    return loaded / parameter_count(config)


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
        quantization=config.quantization,
        quantize_head=config.quantize_head,
        int8_activations=config.int8_activations,
        rope_scaling=config.rope_scaling,
        sparse_prefill=config.sparse_prefill,
        prefill_chunk=config.prefill_chunk,
        gguf_weights=config.gguf_weights,
    )


def _workload(config: BenchConfig, hf_config: PretrainedConfig, console: Console) -> Workload:
    window = context_window(hf_config)
    longest_decode = max(config.decode_prompt_lens)
    if longest_decode + config.decode_tokens > window:
        raise InvalidRequestError(
            f"a {longest_decode}-token decode prompt plus {config.decode_tokens} tokens "
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
        decode_prompt_lens=config.decode_prompt_lens,
        decode_tokens=config.decode_tokens,
        prefill_repeats=config.prefill_repeats,
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


def _write_markdown(path: Path, report: Report, fit: ContextFit | None) -> None:
    with path.open("a") as file:
        file.write(f"\n### {date.today().isoformat()}\n\n{report.markdown()}")
        if fit:
            file.write(f"\n{fit.markdown()}")
