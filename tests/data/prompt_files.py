"""Small prompt files in every format the data package reads, written with the formats' own
libraries (json, pyarrow, datasets), for the data tests."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("jsonl", "parquet", "csv", "datasets")


def write_prompts(rows: list[dict], stem: Path, format: str) -> Path:
    """`rows` as a file (or `save_to_disk` folder) named `stem` plus the format's suffix."""
    if format == "jsonl":
        path = stem.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif format == "parquet":
        path = stem.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif format == "csv":
        path = stem.with_suffix(".csv")
        flat = [
            {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows
        ]
        pacsv.write_csv(pa.Table.from_pylist(flat), path)
    else:
        import datasets

        path = stem
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path
