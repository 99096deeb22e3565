"""Shard files: one Parquet file per block of prompts, written atomically, named by its checksum.

    path = write_shard(folder, block=3, table=table, metadata={"positions": ...})
    table = read_shard(path)                 # UserError naming the file if it is damaged

A shard is written to a hidden temporary file, flushed to disk, hashed, and renamed into place as
`block-000003.<first 16 hex digits of its sha256>.parquet`: a reader sees a whole shard or none,
and a capture killed mid-write leaves only a temporary file, which `shard_files` ignores and
`remove_leftovers` deletes. The name carries the checksum, so a truncated or corrupted shard is
found on reading without any other file. A full disk removes the temporary file and stops with a
`UserError`.
"""

import errno
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from polydistill.errors import UserError

SHARD_NAME = re.compile(r"^block-(\d{6})\.([0-9a-f]{16})\.parquet$")
TEMP_PREFIX = ".block-"
COMPRESSION_LEVEL = 3
METADATA_KEY = b"polydistill"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def shard_files(folder: Path) -> dict[int, list[Path]]:
    """Finished shards by block (a block with two files is an error the caller reports)."""
    found: dict[int, list[Path]] = {}
    for path in sorted(folder.glob("block-*.parquet")) if folder.is_dir() else []:
        match = SHARD_NAME.match(path.name)
        if match:
            found.setdefault(int(match.group(1)), []).append(path)
    return found


def remove_leftovers(folder: Path, blocks: set[int]) -> None:
    """Delete temporary files a killed capture left for these blocks."""
    for path in folder.glob(f"{TEMP_PREFIX}*") if folder.is_dir() else []:
        number = path.name[len(TEMP_PREFIX) :].split(".", 1)[0]
        if number.isdigit() and int(number) in blocks:
            path.unlink(missing_ok=True)


def _serialise(table: pa.Table, metadata: dict) -> bytes:
    schema_metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(metadata)}
    table = table.replace_schema_metadata(schema_metadata)
    buffer = io.BytesIO()
    pq.write_table(
        table,
        buffer,
        compression="zstd",
        compression_level=COMPRESSION_LEVEL,
        use_dictionary=["prompt_text", "authors"],
        write_statistics=False,
        row_group_size=max(table.num_rows, 1),
    )
    return buffer.getvalue()


def write_shard(folder: Path, block: int, table: pa.Table, metadata: dict) -> Path:
    """Write the block's shard atomically; returns its final path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = _serialise(table, metadata)
    checksum = hashlib.sha256(data).hexdigest()
    final = folder / f"block-{block:06d}.{checksum[:16]}.parquet"
    handle, temp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{block:06d}.", dir=folder)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    except BaseException as error:  # interrupted too: leave no temporary file behind
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"store {folder}: disk full while writing block {block}; the finished shards are "
                "intact, free some space and run the capture again to resume"
            ) from None
        raise
    return final


def check_shard(path: Path) -> str:
    """The shard's sha256, after checking it against the checksum in its name."""
    match = SHARD_NAME.match(path.name)
    if not match:
        raise UserError(f"store shard {path}: not a shard file name (block-NNNNNN.HASH.parquet)")
    if not path.is_file():
        raise UserError(f"store shard {path}: missing")
    checksum = file_sha256(path)
    if not checksum.startswith(match.group(2)):
        raise UserError(
            f"store shard {path}: checksum mismatch (truncated or corrupted); delete it and run "
            "the capture again to recapture that block"
        )
    return checksum


def read_shard(
    path: Path, columns: list[str] | None = None, verify: bool = True
) -> tuple[pa.Table, dict]:
    """The shard's table (or some of its columns) and its metadata, checksum verified unless
    the caller has verified it already."""
    if verify:
        check_shard(path)
    try:
        parquet = pq.ParquetFile(path)
        table = parquet.read(columns=columns, use_threads=False)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"store shard {path}: unreadable ({error})") from None
    raw = (parquet.schema_arrow.metadata or {}).get(METADATA_KEY, b"{}")
    return table, json.loads(raw)


def shard_metadata(path: Path) -> dict:
    """The metadata written with the shard, from its footer alone."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"store shard {path}: unreadable ({error})") from None
    return json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
