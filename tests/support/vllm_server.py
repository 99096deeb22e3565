"""A real vLLM server (the CPU build, `.venv-vllm`) on a free loopback port, for tests.

    with vllm_server(checkpoint_dir, log) as base_url:   # http://127.0.0.1:PORT
        ...
    with vllm_servers(checkpoint_dir, [log_a, log_b]) as servers:   # started side by side
        servers[1].kill()                                            # a server dying mid-run

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
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


def served_context_length(model_dir: Path) -> int:
    """At most 512 tokens, and no more than the model's positions (world teachers: 256)."""
    config = json.loads((model_dir / "config.json").read_text())
    return min(512, int(config.get("max_position_embeddings") or 512))


@dataclass
class VllmServer:
    base_url: str
    process: subprocess.Popen

    def kill(self) -> None:
        """Kill the server's whole process group at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _start(model_dir: Path, log: Path) -> VllmServer:
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(served_context_length(model_dir)),
        "--max-logprobs", "-1", "--dtype", "float32",
        # Eager: torch.compile's warm-up adds about 80 s on two cores and changes no number.
        "--enforce-eager",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return VllmServer(f"http://127.0.0.1:{port}", process)


@contextlib.contextmanager
def vllm_servers(
    model_dir: Path, logs: Sequence[Path], timeout_s: float = STARTUP_TIMEOUT_S
) -> Iterator[list[VllmServer]]:
    """One vLLM server of `model_dir` per log, all started at once (see `vllm_server`)."""
    if not VLLM_PYTHON.exists():
        pytest.fail(
            f"{VLLM_PYTHON} is missing: run `make test` (or `make install-vllm`) "
            "to install vLLM's CPU build for the served-teacher tests"
        )
    servers: list[VllmServer] = []
    try:
        for log in logs:
            servers.append(_start(model_dir, log))
        for server, log in zip(servers, logs, strict=True):
            _wait_ready(server.process, server.base_url, log, timeout_s * len(logs))
        yield servers
    finally:
        for server in servers:
            _stop(server.process)


@contextlib.contextmanager
def vllm_server(model_dir: Path, log: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """A vLLM OpenAI-compatible server for `model_dir` (float32, eager, any number of
    log-probs), writing its output to `log`; yields its base URL."""
    with vllm_servers(model_dir, [log], timeout_s) as servers:
        yield servers[0].base_url
