"""Streaming answers in the terminal: one-shot (`tome run`) and the REPL (`tome chat`)."""

import itertools
from collections.abc import Callable
from collections.abc import Sequence as Seq
from functools import partial

from rich.console import Console

from tome.engine.engine import Engine
from tome.engine.outputs import RequestOutput
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError

Message = dict[str, str]
# (earlier user and assistant turns, the new question) -> the answer, streamed as it comes
Reply = Callable[[list[Message], str], str]
_request_counter = itertools.count()


def stream_answer(
    engine: Engine, prompt: str | Seq[int], params: SamplingParams, console: Console
) -> RequestOutput:
    """Generate one answer, printing text as it arrives; returns the final output (the
    whole text, and how many prompt tokens the prefix cache supplied)."""
    request_id = f"cli-{next(_request_counter)}"
    engine.add_request(request_id, prompt, params)
    final = RequestOutput(request_id, [])
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == request_id:
                console.print(out.delta_text, end="", markup=False, highlight=False, soft_wrap=True)
                final = out
    console.print()
    return final


def plain_reply(
    engine: Engine, params: SamplingParams, system: str | None, console: Console
) -> Reply:
    """The plain chat: the model answers the whole conversation, after `system` if any."""
    return partial(_plain_answer, engine, params, system, console)


def chat_loop(reply: Reply, console: Console) -> None:
    """Read a line, answer it with `reply` given the conversation so far, repeat."""
    history: list[Message] = []
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
            history = []
            continue
        if not line:
            continue
        console.print("[bold blue]tome>[/] ", end="")
        try:
            answer = reply(history, line)
        except InvalidRequestError as exc:  # a question too long, say: the chat goes on
            console.print(f"\n[bold red]error:[/] {exc.message}", soft_wrap=True)
            continue
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer}]


def _plain_answer(
    engine: Engine,
    params: SamplingParams,
    system: str | None,
    console: Console,
    history: list[Message],
    question: str,
) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        *history,
        {"role": "user", "content": question},
    ]
    return stream_answer(
        engine, engine.tokenizer.apply_chat_template(messages), params, console
    ).text
