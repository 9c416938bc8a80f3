"""Atomic file writes: a temp file in the destination folder, renamed over the target on success.

A reader never sees a half-written file, and a failure (or Ctrl-C) leaves the old file, if any,
untouched. Used for every output the package writes (checkpoints, clips, reports, bundles).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from core.errors import InputError


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None, shared: bool = False) -> Iterator[IO]:
    """Open ``path`` for writing through a temp file; rename on a clean exit, delete on error.

    ``shared``: give the file mode 0644 (temp files are private, 0600, by default).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
        if shared:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """``data`` as indented JSON at ``path``, atomically; strict JSON (NaN and inf are refused)."""
    import json

    path = Path(path)
    if not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, allow_nan=False)
