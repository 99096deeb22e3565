"""Benchmarks: each module answers one question, `python -m benchmarks.NAME --json OUT.json`."""
