"""Where the tests find the repository's files, from any folder of tests/.

from repo_paths import ROOT, TINY
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root."""
TESTS = ROOT / "tests"
TINY = TESTS / "tiny.yaml"
"""The tiny world's run config, shared by the integration tests."""
