"""`benchmarks` is a folder of the repository, not an installed package: its tests import it
from the repository root."""

import sys

from repo_paths import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
