"""Benchmarks: each module answers one question, `python -m benchmarks.NAME` writes
`benchmarks/results/NAME.json`, and `python -m benchmarks.results_md` renders RESULTS.md."""
