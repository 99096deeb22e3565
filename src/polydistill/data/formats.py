"""Rows of a prompt file, streamed: JSONL, Parquet, CSV and `datasets` folders.

    for origin, row in read_rows(Path("prompts.parquet"), "auto", batch_rows=1024):
        ...   # origin: "prompts.parquet row 7"; row: {"prompt": ..., "tag": ...}

JSONL is read line by line; Parquet and CSV as pyarrow record batches; a `save_to_disk` folder
through `datasets.load_from_disk` (memory-mapped Arrow) in batches. So memory holds one batch,
whatever the file's size. Every bad file or row is a `UserError` naming the file and the line
(JSONL, CSV parse errors) or row (Parquet, `datasets`, values in CSV); rows count from 1.
"""

import csv
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from polydistill.data.config import Format
from polydistill.errors import UserError

Row = tuple[str, dict]
"""Where the row was read (`file line N` or `file row N`) and its columns."""

# pyarrow's CSV reader holds about 36 blocks (measured: 2.4 MB of 64 KiB blocks, 38 MB of 1 MiB);
# a block must hold a whole row, so a longer row is read again with blocks 8 times larger.
_CSV_BLOCK = 1 << 16
_CSV_BLOCK_MAX = 1 << 30

_SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}


def detect_format(path: Path, format: Format) -> Format:
    """The format of `path`: the override, else its suffix, else a `save_to_disk` folder."""
    if format != "auto":
        return format
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "datasets"
        raise UserError(
            f"data: {path} is a folder but not one written by datasets' save_to_disk "
            "(no state.json)"
        )
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise UserError(
            f"data: cannot tell the format of {path} from its suffix; name one in data.format "
            "(jsonl, parquet, csv, datasets)"
        )
    return found


def read_rows(path: Path, format: Format, batch_rows: int) -> Iterator[Row]:
    """Every row of `path` with its origin, one batch in memory at a time."""
    readers = {"jsonl": _jsonl, "parquet": _parquet, "csv": _csv, "datasets": _datasets}
    yield from readers[detect_format(path, format)](path, batch_rows)


def _jsonl(path: Path, batch_rows: int) -> Iterator[Row]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"data: {where}: not UTF-8 text") from None
            except json.JSONDecodeError as error:
                if number == 1 and raw.lstrip().startswith(b"["):
                    raise UserError(
                        f"data: {where}: a JSON array, not JSON lines; write one object per line"
                    ) from None
                raise UserError(f"data: {where}: malformed JSON ({error.msg})") from None
            if not isinstance(row, dict):
                kind = "a list" if isinstance(row, list) else type(row).__name__
                raise UserError(
                    f"data: {where}: {kind}, not a JSON object; JSONL holds one object per line"
                )
            yield where, row


def _batches(path: Path, batches: Iterator[pa.RecordBatch | pa.Table]) -> Iterator[Row]:
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", row


def _parquet(path: Path, batch_rows: int) -> Iterator[Row]:
    try:
        # Buffered, not pre-buffered: pages are read as decoded, so memory holds a batch, not
        # the row group (measured in tests/data/test_data_streaming.py).
        parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        yield from _batches(path, parquet.iter_batches(batch_size=batch_rows))
    except (pa.ArrowException, OSError) as error:
        first = str(error).splitlines()[0]
        raise UserError(f"data: {path}: not a readable Parquet file ({first})") from None


def _csv(path: Path, batch_rows: int) -> Iterator[Row]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open("rb") as raw:  # decoded line by line: only the header's lines are read
            lines = (line.decode("utf-8") for line in raw)
            header = next(csv.reader(lines, delimiter=delimiter), None)
    except UnicodeDecodeError:
        raise UserError(f"data: {path} line 1: not UTF-8 text") from None
    if not header:
        raise UserError(f"data: {path} line 1: no CSV header (the column names)")
    done, block = 0, _CSV_BLOCK
    while True:  # a row longer than a block: read again with larger blocks, skipping rows done
        try:
            rows = _batches(path, _csv_batches(path, delimiter, header, block))
            for row in itertools.islice(rows, done, None):
                done += 1
                yield row
            return
        except pa.ArrowInvalid as error:
            if "straddl" in str(error) and block < _CSV_BLOCK_MAX:
                block *= 8
                continue
            raise UserError(f"data: {_csv_bad_line(path, delimiter, len(header), error)}") from None


def _csv_batches(
    path: Path, delimiter: str, header: list[str], block: int
) -> pacsv.CSVStreamingReader:
    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())),
    )


def _csv_bad_line(path: Path, delimiter: str, columns: int, error: Exception) -> str:
    """The first line of `path` that pyarrow could not read, found again by Python's csv."""
    with path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return f"{path} line {number}: not UTF-8 text"
    with path.open(encoding="utf-8", newline="") as text:
        reader = csv.reader(text, delimiter=delimiter)
        start = 1
        for row in reader:
            if len(row) != columns:
                return f"{path} line {start}: {len(row)} fields where the header has {columns}"
            start = reader.line_num + 1
    return f"{path}: malformed CSV ({str(error).splitlines()[0]})"


def _datasets(path: Path, batch_rows: int) -> Iterator[Row]:
    import datasets  # slow to import, and needed only for this format

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"data: {path}: not a datasets save_to_disk folder ({first})") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = ", ".join(f"{path / name}" for name in loaded)
        raise UserError(
            f"data: {path} holds a DatasetDict; name one of its splits' folders: {names}"
        )
    yield from _batches(path, loaded.with_format("arrow").iter(batch_size=batch_rows))
