"""Shared fixtures: the tiny world is built once per test session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_CONFIG = Path(__file__).parent / "tiny.yaml"

# Test helpers (fake servers, tiny models, repo paths) live in tests/support/, imported by name
# from every folder of tests.
sys.path.insert(0, str(Path(__file__).parent / "support"))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worlds")


@pytest.fixture(scope="session")
def tiny_config(tiny_cache):
    from polydistill.config import load_config

    return load_config(TINY_CONFIG, [f"world.cache_dir={tiny_cache}", "threads=2"])


@pytest.fixture(scope="session")
def tiny_world(tiny_config):
    from polydistill.world.build import build_world

    return build_world(tiny_config)


def _hypothesis_profiles() -> None:
    # CI must not fail on a case a previous run never met; `HYPOTHESIS_PROFILE=explore` searches
    # afresh each run, as a developer hunting for new cases wants.
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()


@pytest.fixture
def cli(monkeypatch, capsys):
    """Runs the real `polydistill` entry point in this process (imports are already warm)."""

    from polydistill.cli import main

    def invoke(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["polydistill", *args])
        code = 0
        try:
            main()
        except SystemExit as exit:
            code = exit.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (`pytest.mark.usefixtures("one_thread")`):
    matrices this small run fastest so, above all on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
