"""A real `tome serve` process on 127.0.0.1 for the server tests: started on a free port,
waited for through /health, read through /metrics, stopped at the end of the module."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tome.store import Database, KeyStore

STARTUP_TIMEOUT_S = 180  # imports and model load on two busy cores


def create_keys(data_dir: Path, tier: str, *names: str) -> dict[str, str]:
    """API keys by name, made in the data dir's database before a server starts there, so
    that it runs in keyed mode."""
    store = KeyStore(Database(f"sqlite:///{data_dir / 'tome.db'}"))
    return {name: store.create(tier, name=name)[0] for name in names}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, model: Path, data_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.database_url = f"sqlite:///{data_dir / 'tome.db'}"
        self.log_path = data_dir / "server.log"
        command = [
            sys.executable,
            "-c",
            "from tome.cli import app; app()",
            "serve",
            str(model),
            "--port",
            str(self.port),
            "--served-model-name",
            "tiny",
            "--database-url",
            self.database_url,
            "--log-level",
            "warning",
            *args,
        ]
        env = {**os.environ, "TOME_DATA_DIR": str(data_dir)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.root}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the server did not come up:\n{self.log_path.read_text()}")

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by name, labels written into the name: a{k="v"}."""
        text = httpx.get(f"{self.root}/metrics", timeout=30).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def wait_until_idle(self, timeout_s: float = 60) -> dict[str, float]:
        """Poll /metrics until nothing runs or waits and the KV pool is back to empty."""
        deadline = time.monotonic() + timeout_s
        while True:
            metrics = self.metrics()
            idle = (
                metrics["tome_running_requests"] == 0
                and metrics["tome_waiting_requests"] == 0
                and metrics["tome_kv_cache_usage_ratio"] == 0
            )
            if idle or time.monotonic() > deadline:
                return metrics
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
