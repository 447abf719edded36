"""`tome plan` output: the memory plan as a rich table."""

from rich.console import Console
from rich.table import Table

from tome.engine.memory_plan import MemoryPlan
from tome.layers.weight_quantization import WEIGHT_QUANTIZATIONS


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def print_memory_plan(plan: MemoryPlan, console: Console) -> None:
    quantized = ""
    if plan.quantization is not None:
        quantized = f" quantized to {WEIGHT_QUANTIZATIONS[plan.quantization].label}"
    console.print(
        f"weights: {plan.parameters:,} parameters in {plan.dtype}{quantized} = "
        f"{format_bytes(plan.weight_bytes)}; device memory {format_bytes(plan.device_memory)}; "
        f"model window {plan.model_window:,} tokens"
    )
    if plan.state_bytes:
        console.print(
            f"recurrent state: {format_bytes(plan.state_bytes)} a sequence, whatever its length"
        )
    total = "weights + state + KV" if plan.state_bytes else "weights + KV"
    table = Table(title=f"KV cache for {plan.max_model_len:,} tokens")
    for column in ("KV dtype", "bytes/token", "KV", total, "fits", "max tokens"):
        table.add_column(column, justify="left" if column == "KV dtype" else "right")
    for kv in plan.kv:
        table.add_row(
            kv.kv_dtype,
            f"{kv.bytes_per_token:,}",
            format_bytes(kv.kv_bytes),
            format_bytes(plan.weight_bytes + plan.state_bytes + kv.kv_bytes),
            "[green]yes[/]" if kv.fits else "[red]no[/]",
            f"{kv.max_tokens:,}",
        )
    console.print(table)
    console.print(
        "int8 and fp8 include one float32 scale per token and head. Activations and the "
        "runtime need some memory beyond weights + KV."
    )
