"""The OpenAPI schema tells the truth: schemathesis fuzzes a live `tome serve` from its own
/openapi.json with every check (documented statuses, content types and bodies; requests the
schema allows are accepted and those it forbids refused; no 5xx; 405s with `Allow`; the
stateful phase follows the links between operations), with a fixed seed and a few examples
per operation so that it stays within a couple of minutes on two cores."""

import subprocess
import sys

import pytest

from tests.live_server import LiveServer

SEED = 1
EXAMPLES = 10

# What the schema cannot say, per operation (one include-name each: separate include-path
# and include-method keys match either): a valid request can still be refused for what
# it points at rather than for its shape.
CONFIG = """
# An upload's bytes decide whether it is a document (400: no text; 415: not a format read
# here). In multipart, a "file" mutated to another JSON type is just its bytes ("true" is a
# valid text file): negative data may be accepted there.
[[operations]]
include-name = "POST /v1/files"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "400", "401", "403", "404", "413", "415",
]
checks.negative_data_rejection.expected-statuses = ["2xx", "4xx"]

# The conversation's state (regenerate needs a question to answer again) and the server's
# configuration (web_search needs --search-url) are not the body's shape: a 400.
[[operations]]
include-name = "POST /v1/conversations/{conversation_id}/answers"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404"]

# A URL attachment is fetched: a host that does not resolve (nothing resolves in the test
# sandbox) is a 502, a non-public address a 400, a slow page a 504.
[[operations]]
include-name = "POST /v1/conversations/{conversation_id}/attachments"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "400", "401", "403", "404", "413", "415", "502", "504",
]
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "504"]
"""


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    live = LiveServer(tiny_llama, tmp_path_factory.mktemp("openapi"), "--kv-cache-memory", "16MiB")
    yield live
    live.stop()


def test_the_schema_holds_under_fuzzing(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file",
        str(config),
        "run",
        f"{server.root}/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
