"""Streaming answers in the terminal: one-shot (`tome run`) and the REPL (`tome chat`)."""

import itertools
from collections.abc import Sequence as Seq

from rich.console import Console

from tome.engine.engine import Engine
from tome.engine.sampling_params import SamplingParams

_request_counter = itertools.count()


def stream_answer(
    engine: Engine, prompt: str | Seq[int], params: SamplingParams, console: Console
) -> str:
    """Generate one answer, printing text as it arrives; returns the whole text."""
    request_id = f"cli-{next(_request_counter)}"
    engine.add_request(request_id, prompt, params)
    text = ""
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == request_id:
                console.print(out.delta_text, end="", markup=False, highlight=False, soft_wrap=True)
                text = out.text
    console.print()
    return text


def chat_loop(engine: Engine, params: SamplingParams, system: str | None, console: Console) -> None:
    """Read a line, answer it with the whole conversation as context, repeat."""
    history = [{"role": "system", "content": system}] if system else []
    console.print("[dim]Type a message; /reset clears the conversation, /exit leaves.[/]")
    while True:
        try:
            line = console.input("[bold green]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = history[:1] if system else []
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        console.print("[bold blue]tome>[/] ", end="")
        answer = stream_answer(
            engine, engine.tokenizer.apply_chat_template(history), params, console
        )
        history.append({"role": "assistant", "content": answer})
