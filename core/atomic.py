"""Atomic file writes: a temp file in the destination folder, renamed over the target on success.

A reader never sees a half-written file, and a failure (or Ctrl-C) leaves the old file, if any,
untouched. Used for every output the package writes (checkpoints, clips, reports, bundles).

A process killed outright (kill -9, power loss) cannot delete its temp file. So temp names carry
their owner, ``NAME.PID-HOST.RANDOM.tmp`` (HOST: 8 hex digits of the host name's hash), and the
next write to the same target removes the temp files of that target whose process no longer runs
on this host (:func:`remove_orphans`). A temp file of a live process, of another host (a shared
folder) or of another name is never touched.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from core.errors import InputError

__all__ = ["atomic_open", "make_temp_dir", "owner_prefix", "remove_orphans", "write_json_atomic"]

_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_RANDOM = r"[A-Za-z0-9_]+"          # what mkstemp / mkdtemp put between prefix and suffix


def owner_prefix(name: str) -> str:
    """The start of this process's temp names for target ``name``: ``NAME.PID-HOST.``."""
    return f"{name}.{os.getpid()}-{_HOST}."


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:            # EPERM: it runs, as another user
        return exc.errno == errno.EPERM
    return True


def remove_orphans(folder: str | os.PathLike, name: str, *, suffix: str = ".tmp") -> list[Path]:
    """Delete the temp files (or folders) ``NAME.PID-HOST.RANDOM<suffix>`` in ``folder`` left by a
    process of this host that no longer runs; return what was removed. Best effort: an entry that
    cannot be removed is left (it is only wasted space)."""
    pattern = re.compile(rf"{re.escape(name)}\.(\d+)-([0-9a-f]{{8}})\.{_RANDOM}{re.escape(suffix)}")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or match.group(2) != _HOST or _pid_running(int(match.group(1))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None, shared: bool = False) -> Iterator[IO]:
    """Open ``path`` for writing through a temp file; rename on a clean exit, delete on error.

    ``shared``: give the file mode 0644 (temp files are private, 0600, by default). Orphaned temp
    files of ``path`` (a killed earlier writer) are removed first.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    remove_orphans(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=owner_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
        if shared:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_temp_dir(folder: str | os.PathLike, name: str, *, suffix: str) -> Path:
    """A new private folder ``folder/NAME.PID-HOST.RANDOM<suffix>`` for staging output ``name``
    (the caller removes it); orphaned staging folders of ``name`` are removed first."""
    remove_orphans(folder, name, suffix=suffix)
    return Path(tempfile.mkdtemp(prefix=owner_prefix(name), suffix=suffix, dir=folder))


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """``data`` as indented JSON at ``path``, atomically; strict JSON (NaN and inf are refused)."""
    import json

    path = Path(path)
    if not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, allow_nan=False)
