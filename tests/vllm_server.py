"""A real vLLM server (the CPU build, `.venv-vllm`) on a free loopback port, for tests.

    with vllm_server(checkpoint_dir) as base_url:   # http://127.0.0.1:PORT
        ...

`.venv-vllm` is made by `make install-vllm` (a prerequisite of `make test`); without it
the fixture fails, saying so, rather than skipping: the served-teacher tests are part of the
suite. The server runs in its own process group, killed as a whole on exit; the tail of its
log is quoted if it dies or never becomes ready.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
STARTUP_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(process: subprocess.Popen, base_url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vLLM exited with {process.returncode} while starting:\n{_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        time.sleep(1.0)
    pytest.fail(f"vLLM not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _context_length(model_dir: Path) -> int:
    """At most 512 tokens, and no more than the model's positions (world teachers: 256)."""
    config = json.loads((model_dir / "config.json").read_text())
    return min(512, int(config.get("max_position_embeddings") or 512))


@contextlib.contextmanager
def vllm_server(model_dir: Path, log: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """A vLLM OpenAI-compatible server for `model_dir` (float32, eager, any number of
    log-probs), writing its output to `log`; yields its base URL."""
    if not VLLM_PYTHON.exists():
        pytest.fail(
            f"{VLLM_PYTHON} is missing: run `make test` (or `make install-vllm`) "
            "to install vLLM's CPU build for the served-teacher tests"
        )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(_context_length(model_dir)),
        "--max-logprobs", "-1", "--dtype", "float32",
        # Eager: torch.compile's warm-up adds about 80 s on two cores and changes no number.
        "--enforce-eager",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait_ready(process, base_url, log, timeout_s)
        yield base_url
    finally:
        _stop(process)
