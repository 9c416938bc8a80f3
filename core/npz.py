"""Reading ``.npz`` archives the one safe way: ``allow_pickle=False``, and every problem one line.

Clip files, readout files, representative sets and data sets are all ``.npz`` archives of named
arrays. :func:`open_npz` opens one for reading and turns what can go wrong (a missing file, a
single ``.npy`` array where an archive is expected, a truncated or corrupt archive, also while an
array is read inside the ``with`` block) into a one-line :class:`core.errors.InputError`.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.errors import InputError

__all__ = ["open_npz"]

_UNREADABLE = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError)


def _unreadable(path: Path, exc: BaseException) -> InputError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InputError(f"{path} is not a readable .npz file ({first[:120]})")


@contextmanager
def open_npz(path: str | os.PathLike, *, what: str, example: str, missing_hint: str = "") -> Iterator:
    """``with open_npz(path, what="clips", example="np.savez(path, frames=...)") as data:`` read
    arrays from ``data`` (an ``NpzFile``). ``what`` names the file in messages, ``example`` says how
    to save a proper archive, ``missing_hint`` is added when the file does not exist."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{what} must be a file path, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}{missing_hint}")
    try:
        data = np.load(path, allow_pickle=False)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path} is a single .npy array, not an .npz archive: save the {what} with {example}")
    try:
        with data:
            yield data
    except InputError:
        raise
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from None
