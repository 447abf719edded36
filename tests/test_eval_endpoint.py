"""The endpoint backend end to end through the official openai client, against a small
HTTP server on 127.0.0.1 that reads each prompt the way a person would (finds the pass
key, the asked key's numbers, follows the variable chain, counts the words) and answers
in the prompt's language, Chinese with full-width digits. Every item must then score 1:
the needles can be found from the prompt alone, the request and response travel intact,
and scoring reads the answers. Error statuses and unreachable servers are one clear error."""

import json
import re
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from tome.cli import app
from tome.errors import InvalidRequestError
from tome.eval import TASKS, EvalConfig, ItemSpec, TokenCounter, generate_item, score
from tome.eval.endpoint_backend import EndpointBackend
from tome.eval.main import run_eval

SERVED_MODEL = "reader"
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def read_and_answer(prompt: str) -> str:
    """What a careful reader of the prompt would answer."""
    question = prompt.rsplit("\n\n", 1)[1]
    chinese = re.search(r"[\u4e00-\u9fff]", question) is not None
    if key := re.search(r"magic numbers? for (\w+) mentioned|「(.+?)」", question):
        name = re.escape(key.group(1) or key.group(2))
        found = re.findall(rf"(?:for {name} is: |「{name}」的特殊魔法数字之一是：)(\d+)", prompt)
    elif "pass key" in question or "通行密钥" in question:
        found = re.findall(r"(?:pass key is |通行密钥是)(\d+)", prompt)[:1]
    elif value := re.search(r"value (\d+)|赋值为 (\d+)", question):
        found = _chain(prompt, value.group(1) or value.group(2))
    else:
        listed = re.split(r", |、", prompt.split("\n\n")[1].rstrip(".。"))
        found = [word for word, _ in Counter(listed).most_common(10)]
    if chinese:
        return ("答案是：" + "、".join(found) + "。").translate(FULL_WIDTH)
    return "The answer is: " + ", ".join(found) + "."


def _chain(prompt: str, value: str) -> list[str]:
    holders, assignments = [value], re.findall(r"VAR ([A-Z]+) = (?:VAR )?(\w+)", prompt)
    for name, source in assignments:  # a chain is written in order
        if source in holders:
            holders.append(name)
    return holders[1:]


class ReaderHandler(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []  # what the server received, for the tests to read

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ReaderHandler.requests.append(body)
        if body["model"] != SERVED_MODEL:
            error = {"message": f"model {body['model']} not found", "type": "not_found"}
            return self._send(404, {"error": error})
        answer = read_and_answer(body["messages"][-1]["content"])
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": SERVED_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReaderHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_every_task_scores_one_through_the_endpoint(base_url, hf_tokenizer, tmp_path):
    backend = EndpointBackend.connect(base_url, None, SERVED_MODEL, hf_tokenizer, concurrency=3)
    config = EvalConfig(lengths=(768, 1024), depths=(0.0, 0.5, 1.0), samples=2, out=tmp_path)
    ReaderHandler.requests.clear()
    report = json.loads(run_eval(config, backend).read_text())

    assert report["overall"] == 1.0
    assert all(item["score"] == 1.0 for item in report["items"])
    assert set(report["by_task"]) == set(TASKS)
    sent = ReaderHandler.requests
    assert len(sent) == len(report["items"])
    assert all(r["temperature"] == 0.0 and r["max_tokens"] >= 48 for r in sent)
    for task in TASKS:
        for language in ("en", "zh"):
            pixels = imread(tmp_path / f"heatmap_{task}_{language}.png")[..., :3]
            red, green = pixels[..., 0], pixels[..., 1]
            green, red = green > red + 0.3, red > green + 0.3
            assert green.sum() > 1000 and red.sum() < green.sum() / 20


def test_wrong_answers_score_zero(base_url, hf_tokenizer):
    counter = TokenCounter(hf_tokenizer)
    item = generate_item(ItemSpec("niah_single", "zh", 512, 0.5, 0, 1), counter)
    other = generate_item(ItemSpec("niah_single", "zh", 512, 0.5, 0, 2), counter)
    backend = EndpointBackend.connect(base_url, None, SERVED_MODEL, hf_tokenizer)
    [answer] = backend([other])
    assert score(answer, other.answers, "zh") == 1.0
    assert score(answer, item.answers, "zh") == 0.0


def test_an_error_status_is_one_clear_error(base_url, hf_tokenizer):
    item = generate_item(ItemSpec("passkey", "en", 256, 0.5, 0, 1), TokenCounter(hf_tokenizer))
    backend = EndpointBackend.connect(base_url, None, "missing", hf_tokenizer)
    with pytest.raises(InvalidRequestError, match="answered 404"):
        backend([item])


def test_an_unreachable_endpoint_is_one_clear_error(closed_port_url, hf_tokenizer):
    item = generate_item(ItemSpec("passkey", "en", 256, 0.5, 0, 1), TokenCounter(hf_tokenizer))
    backend = EndpointBackend.connect(closed_port_url, None, "m", hf_tokenizer, max_retries=0)
    with pytest.raises(InvalidRequestError, match="cannot reach"):
        backend([item])


def test_cli_runs_the_grid_against_the_endpoint(base_url, tiny_llama, tmp_path):
    args = ["eval", "run", "--base-url", base_url, "--model", SERVED_MODEL]
    args += ["--tokenizer", str(tiny_llama), "--tasks", "passkey,niah_multivalue"]
    args += ["--languages", "zh", "--lengths", "512", "--depths", "0.5", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["overall"] == 1.0 and len(report["items"]) == 2
    assert report["model"] == SERVED_MODEL
