"""Folders that appear whole or not at all.

`staged_folder(target, replace)` yields a hidden sibling folder; when the block completes, its
contents are flushed to disk and it is renamed to `target` (swapping out an existing one only if
`replace`). On any failure the staging folder is removed and `target` is untouched. Run outputs,
world builds, checkpoints and the final student are all written this way. `write_json` does the
same for one JSON file (a store's manifest, a run's chosen checkpoint).
"""

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from polydistill.errors import UserError


@contextmanager
def staged_folder(target: Path, replace: bool) -> Iterator[Path]:
    """A hidden sibling folder that is flushed and renamed to `target` if the block completes.

    An existing `target` is an error unless `replace`; then it is swapped out only once the new
    folder is complete. On any failure the staging folder is removed and `target` is untouched.
    """
    if target.exists() and not replace:
        raise FileExistsError(f"{target} exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if replace and target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".trash-{target.name}-", dir=target.parent))
            os.rename(target, retired / target.name)
            os.rename(staging, target)
            shutil.rmtree(retired)
        else:
            _rename_unless_there(staging, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rename_unless_there(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`, which another process may have written meanwhile (two
    capture workers saving the same tokenizer): then FileExistsError, and theirs is kept."""
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(f"{target} exists; refusing to overwrite it") from None
        raise


def write_json(path: Path, data: dict) -> None:
    """Write a JSON file atomically (temporary file, then rename)."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{path}: disk full; free some space and run again") from None
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root`, so that the rename publishes complete data."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))
