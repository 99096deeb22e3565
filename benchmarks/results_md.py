"""`benchmarks/RESULTS.md`: each benchmark module owns one `## ...` section and rewrites only it."""

import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def write_section(title: str, text: str, results: Path = RESULTS) -> None:
    """Replace the section headed `title` (text starts with that heading), or append it."""
    current = results.read_text() if results.exists() else "# Benchmark results\n"
    if title in current:
        head, rest = current.split(title, 1)
        current = head + text + (rest[rest.index("\n## ") + 1 :] if "\n## " in rest else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    results.write_text(current.rstrip("\n") + "\n")


def machine() -> str:
    """The machine a benchmark ran on: the cores it may use, memory and processor."""
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
    return (
        f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPU cores, "
        f"{memory_kb / 2**20:.0f} GiB, {platform.processor() or platform.machine()}"
    )
