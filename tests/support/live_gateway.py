"""Helpers of the tests that run a real `polydistill serve` in a subprocess: make a key through
the CLI, and wait until the gateway answers `/health` (failing with its log if it exits)."""

import subprocess
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from polydistill.serve.commands import keys_app


def create_key(db: str, *args: str) -> str:
    """`keys create --db DB ARGS` in this process; the key it prints."""
    result = CliRunner().invoke(keys_app, ["create", "--db", db, *args])
    assert result.exit_code == 0, result.output
    return result.output.strip()


def wait_healthy(server: subprocess.Popen, port: int, log: Path, timeout_s: float = 120) -> None:
    """Until `GET /health` on `port` says ok; the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok":
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the gateway did not start: {log.read_text()}"
        time.sleep(0.2)
