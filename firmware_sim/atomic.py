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
