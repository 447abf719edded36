"""GET /v1/models names how a live `tome serve --quantization int8` holds its weights."""

import httpx
import pytest

from tests.conftest import make_tiny_model
from tests.live_server import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, hf_tokenizer_dir):
    # Wide enough for every layer to take int8's and int4's groups.
    model = make_tiny_model(
        "llama",
        tmp_path_factory.mktemp("model"),
        hf_tokenizer_dir,
        hidden_size=128,
        intermediate_size=256,
    )
    data_dir = tmp_path_factory.mktemp("server")
    live = LiveServer(model, data_dir, "--kv-cache-memory", "16MiB", "--quantization", "int8")
    yield live
    live.stop()


def test_models_report_the_quantization(server):
    models = httpx.get(f"{server.base_url}/models").json()
    assert models["object"] == "list"
    [card] = models["data"]
    assert card["id"] == "tiny" and card["object"] == "model"
    assert card["quantization"] == "int8"
    answer = httpx.post(
        f"{server.base_url}/completions",
        json={"model": "tiny", "prompt": "Hello", "max_tokens": 2, "temperature": 0},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
