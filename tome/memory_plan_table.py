"""`tome plan` output: the memory plan as a rich table."""

from rich.console import Console
from rich.table import Table

from tome.engine.memory_plan import SEQUENCE_TOKENS, MemoryPlan
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
            f"recurrent state: {format_bytes(plan.state.bytes_per_sequence)} a sequence, "
            f"whatever its length; {plan.state.seats} running sequences and "
            f"{plan.state.checkpoints} prefix-cache checkpoints hold "
            f"{format_bytes(plan.state_bytes)}"
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
    if plan.state_bytes:
        print_sequence_state(plan, console)


def print_sequence_state(plan: MemoryPlan, console: Console) -> None:
    """One sequence's recurrent state beside its KV at SEQUENCE_TOKENS."""
    kv, state = plan.kv[0], plan.state.bytes_per_sequence
    table = Table(title="One sequence: KV against recurrent state")
    for column in ("tokens", f"KV ({kv.kv_dtype})", "state", "state's share"):
        table.add_column(column, justify="right")
    for tokens in SEQUENCE_TOKENS:
        kv_bytes = kv.bytes_per_token * tokens
        share = f"{state / (state + kv_bytes):.1%}"
        table.add_row(f"{tokens:,}", format_bytes(kv_bytes), format_bytes(state), share)
    console.print(table)
