"""Time to first token of a question about an ~8k-token document pinned through /v1/caching,
against the same question asked with another document of the same length sent inline (cold:
it starts with other tokens, so the prefix cache holds none of it), on `tome serve` with the
embedded SmolLM2; and what the usage ledger billed for each.

    python bench/context_cache_ttft.py [--tokens 8000] [--port 8134] [--markdown OUT.md]

It starts its own server (a temporary data dir and SQLite ledger, open mode) and stops it
at the end. The documents are filler prose from tome/eval, measured in the served model's
own tokens through /v1/tokenize."""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tome.eval.haystack import build_haystack
from tome.eval.token_counter import TokenCounter
from tome.store import Database, UsageEntry, UsageStore

MODEL = "smol"
QUESTION = "In one sentence, what does the document say about the harbour?"
ANSWER_TOKENS = 16
HEADROOM = 128  # the chat template, the question and the answer beside the document
STARTUP_TIMEOUT_S = 600


class ServerTokenizer:
    """A TextEncoder over the server's /v1/tokenize: the served model's own tokens."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def encode(self, text: str) -> list[int]:
        response = self.client.post("/tokenize", json={"prompt": text})
        response.raise_for_status()
        return response.json()["tokens"]


@dataclass
class Row:
    label: str
    seconds: float  # time to first token; for the cache, the time to make it
    billed: UsageEntry


def start_server(data_dir: Path, port: int, database_url: str, log: IO[bytes]) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        "from tome.cli import app; app()",
        "serve",
        "--port",
        str(port),
        "--served-model-name",
        MODEL,
        "--database-url",
        database_url,
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "TOME_DATA_DIR": str(data_dir)}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(root: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(f"{root}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not come up")


def document(counter: TokenCounter, tokens: int, seed: int) -> list[dict]:
    """The document as chat messages. Its first words differ from seed to seed, so two
    documents share no full KV block and neither warms the other."""
    text = build_haystack(counter, "en", tokens, [], random.Random(seed))
    return [{"role": "system", "content": f"Record {seed}. Answer from it.\n\n{text}"}]


def ask(client: httpx.Client, messages: list[dict]) -> tuple[float, str]:
    """Stream one answer: seconds to its first token, and its request id."""
    body = {
        "model": MODEL,
        "messages": [*messages, {"role": "user", "content": QUESTION}],
        "max_tokens": ANSWER_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    started, first, request_id = time.perf_counter(), None, None
    with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            request_id = chunk["id"]
            if first is None and chunk["choices"]:
                first = time.perf_counter() - started
    return first, request_id


def billed(store: UsageStore, request_id: str) -> UsageEntry:
    """The request's ledger row; the ledger writes in the background."""
    deadline = time.monotonic() + 60
    while (entry := store.entry(request_id)) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"no ledger row for {request_id}")
        time.sleep(0.1)
    return entry


def measure(client: httpx.Client, store: UsageStore, tokens: int) -> tuple[list[Row], int]:
    counter = TokenCounter(ServerTokenizer(client))
    window = client.post("/tokenize", json={"prompt": "x"}).json()["max_model_len"]
    tokens = min(tokens, window - HEADROOM)
    ask(client, [{"role": "system", "content": "Warm up."}])  # first-request costs, not timed
    pinned, inline = document(counter, tokens, seed=1), document(counter, tokens, seed=2)
    started = time.perf_counter()
    response = client.post("/caching", json={"model": MODEL, "messages": pinned, "ttl": 600})
    response.raise_for_status()
    made = time.perf_counter() - started
    cache_id = response.json()["id"]
    reference = [{"role": "cache", "content": f"cache_id={cache_id}"}]
    cached_ttft, cached_id = ask(client, reference)
    cold_ttft, cold_id = ask(client, inline)
    rows = [
        Row("making the cache (POST /v1/caching)", made, billed(store, cache_id)),
        Row("question on the cache (`cache` message)", cached_ttft, billed(store, cached_id)),
        Row("same question, another document inline", cold_ttft, billed(store, cold_id)),
    ]
    return rows, tokens


def table(rows: list[Row], tokens: int) -> str:
    lines = [
        f"Document: {tokens} tokens of filler prose; question: {QUESTION!r}, "
        f"{ANSWER_TOKENS} answer tokens, greedy.",
        "",
        "| request | time to first token | ledger: prompt tokens | ledger: cached tokens |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        seconds = f"{row.seconds:.2f} s" + (" (to make)" if row.label.startswith("making") else "")
        lines.append(
            f"| {row.label} | {seconds} | {row.billed.prompt_tokens} | {row.billed.cached_tokens} |"
        )
    ratio = rows[1].seconds / rows[2].seconds
    lines += ["", f"Cached time to first token: {ratio:.1%} of the cold one."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8000, help="the document's length")
    parser.add_argument("--port", type=int, default=8134)
    parser.add_argument("--markdown", type=Path, help="also append the table to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tome-cache-bench-") as data:
        data_dir = Path(data)
        database_url = f"sqlite:///{data_dir / 'tome.db'}"
        root, log_path = f"http://127.0.0.1:{args.port}", data_dir / "server.log"
        with log_path.open("wb") as log:
            process = start_server(data_dir, args.port, database_url, log)
            try:
                wait_ready(root, process, log_path)
                with httpx.Client(base_url=f"{root}/v1", timeout=600) as client:
                    store = UsageStore(Database(database_url))
                    rows, tokens = measure(client, store, args.tokens)
            finally:
                process.terminate()
                process.wait(timeout=60)
    report = table(rows, tokens)
    print(report)
    if args.markdown is not None:
        with args.markdown.open("a") as out:
            out.write(report + "\n")


if __name__ == "__main__":
    main()
