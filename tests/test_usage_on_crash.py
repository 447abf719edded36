"""Usage is written when a request is admitted and brought up to date while it streams: a
server killed (SIGKILL) in the middle of a streamed answer leaves that request's ledger
row with its prompt tokens and the tokens streamed until shortly before, and a server
started again on the same database serves and bills as before."""

import time

import openai

from tests.live_server import LiveServer, create_keys
from tome.server.generation import PROGRESS_TOKENS
from tome.store import Database, UsageStore

MESSAGES = [{"role": "user", "content": "Tell me a very long story about a lighthouse."}]


def usage_row(database_url: str, request_id: str, status: str, timeout: float = 30.0):
    store = UsageStore(Database(database_url))
    deadline = time.monotonic() + timeout
    while (entry := store.entry(request_id)) is None or entry.status != status:
        assert time.monotonic() < deadline, entry
        time.sleep(0.05)
    return entry


def test_a_killed_stream_keeps_its_usage(tiny_llama, tmp_path):
    key = create_keys(tmp_path, "free", "reader")["reader"]
    server = LiveServer(tiny_llama, tmp_path)
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)
    try:
        whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1)
        stream = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=900, stream=True
        )
        received, request_id = 0, None
        for chunk in stream:
            request_id = chunk.id
            received += sum(1 for choice in chunk.choices if choice.delta.content)
            if received >= 4 * PROGRESS_TOKENS:
                break
        running = usage_row(server.database_url, request_id, "running")
        while running.completion_tokens < PROGRESS_TOKENS:
            running = usage_row(server.database_url, request_id, "running")
        server.process.kill()  # SIGKILL: no shutdown, no final row
        server.process.wait(timeout=30)
    finally:
        server.stop()
    row = UsageStore(Database(server.database_url)).entry(request_id)
    assert row.status == "running"
    assert row.prompt_tokens == whole.usage.prompt_tokens
    assert PROGRESS_TOKENS <= row.completion_tokens <= 900

    again = LiveServer(tiny_llama, tmp_path)
    try:
        client = openai.OpenAI(base_url=again.base_url, api_key=key, max_retries=0, timeout=120)
        answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
        final = usage_row(again.database_url, answer.id, "finished")
        assert (final.prompt_tokens, final.completion_tokens) == (
            answer.usage.prompt_tokens,
            answer.usage.completion_tokens,
        )
    finally:
        again.stop()
    assert UsageStore(Database(again.database_url)).entry(request_id) == row
