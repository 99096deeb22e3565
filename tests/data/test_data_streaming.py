"""Large prompt sets stream: memory stays flat from 10k to 100k rows.

Python's allocations are measured with tracemalloc (peak during the read, above what was there
before); Arrow's, which tracemalloc cannot see, by sampling `pyarrow.total_allocated_bytes`.
Holding the rows would cost at least their text, about 40 MB at 100k rows. Reading rows costs
Python the same at both sizes; Arrow holds a batch (CSV: its read-ahead blocks; `datasets`:
nothing, the folder is memory-mapped) plus, in Parquet, each column's dictionary page, which
Parquet caps at 1 MB (so it grows to about 9 MB and stays there: 8.9 MB at a million rows).
`read_prompts` adds only its ids for deduplication, about 8 bytes a prompt plus merge copies.
"""

import hashlib
import json
import tracemalloc

import datasets
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from polydistill.data import DataConfig, read_prompts
from polydistill.data.formats import read_rows

pytestmark = pytest.mark.slow
SIZES = (10_000, 100_000)


def _rows(n: int) -> dict[str, list]:
    def words(i: int) -> str:  # 385 characters that compress poorly
        return hashlib.blake2b(str(i).encode()).hexdigest() * 3 + "?"

    return {
        "prompt": [f"Question {i}: {words(i)}" for i in range(n)],
        "reference": [str(i) for i in range(n)],
        "tag": [f"t{i % 7}" for i in range(n)],
    }


def _write(tmp_path, n: int, format: str):
    table = pa.table(_rows(n))
    if format == "parquet":  # one row group: a reader that loaded row groups would hold it all
        path = tmp_path / f"{n}.parquet"
        pq.write_table(table, path)
    elif format == "csv":
        path = tmp_path / f"{n}.csv"
        pacsv.write_csv(table, path)
    elif format == "datasets":
        path = tmp_path / f"{n}"
        datasets.Dataset(table).save_to_disk(str(path))
    else:
        path = tmp_path / f"{n}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for row in table.to_pylist():
                out.write(json.dumps(row) + "\n")
    return path


def _peaks(items) -> tuple[int, int, int]:
    """(items consumed, Python peak bytes, Arrow peak bytes) while `items` is consumed."""
    count = arrow = 0
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in items:
            count += 1
            if count % 256 == 0:
                arrow = max(arrow, pa.total_allocated_bytes() - arrow_before)
        python = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return count, python, arrow


@pytest.mark.parametrize("format", ["jsonl", "parquet"])
def test_reading_rows_and_prompts_keeps_memory_flat(tmp_path, format):
    measured = {}
    for n in SIZES:
        path = _write(tmp_path, n, format)
        rows = _peaks(read_rows(path, "auto", batch_rows=1024))
        prompts = _peaks(read_prompts(DataConfig(train=path)))
        assert rows[0] == prompts[0] == n
        measured[n] = (rows, prompts, path.stat().st_size)
    for n, (rows, prompts, size) in measured.items():  # shown with -s, or when a bound fails
        print(
            f"{format} {n} rows ({size / 1e6:.1f} MB): read_rows peak python "
            f"{rows[1] / 1e6:.2f} MB arrow {rows[2] / 1e6:.2f} MB; read_prompts peak python "
            f"{prompts[1] / 1e6:.2f} MB arrow {prompts[2] / 1e6:.2f} MB"
        )
    (small_rows, small_prompts, _), (large_rows, large_prompts, _) = measured.values()
    held = 385 * SIZES[1]  # the least that holding the large set's prompts would cost
    assert large_rows[1] < 1.2 * small_rows[1] + 100_000
    assert large_prompts[1] - small_prompts[1] < 32 * (SIZES[1] - SIZES[0])
    for arrow in (large_rows[2], large_prompts[2]):
        assert arrow < held / 2 and arrow < small_rows[2] + 8_000_000


@pytest.mark.parametrize("format", ["csv", "datasets"])
def test_reading_csv_and_datasets_rows_keeps_memory_flat(tmp_path, format):
    measured = {n: _peaks(read_rows(_write(tmp_path, n, format), "auto", 1024)) for n in SIZES}
    for n, (_, python, arrow) in measured.items():
        print(
            f"{format} {n} rows: read_rows peak python {python / 1e6:.2f} MB arrow "
            f"{arrow / 1e6:.2f} MB"
        )
    (count, small_python, small_arrow), (_, large_python, large_arrow) = measured.values()
    assert count == SIZES[0]
    assert large_python < 1.2 * small_python + 100_000
    assert large_arrow < 1.2 * small_arrow + 1_000_000
