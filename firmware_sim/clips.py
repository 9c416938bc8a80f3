"""Reading and writing clip files (``.npz``: ``frames`` (N, T, 64, 64) uint8, optional ``labels``).

Validated here once, so ``simulate``, ``evaluate`` and training give the same one-line errors.
Arrays are read with ``allow_pickle=False``; outputs are written atomically (temp file + rename).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_open
from core.errors import InputError
from core.npz import ArrayStream, check_npz_output, open_npz, write_zip
from core.readouts import check_labels


@dataclass
class Clips:
    frames: np.ndarray               # (N, T, H, W) uint8
    labels: np.ndarray | None        # (N,) int64
    names: np.ndarray | None         # (N,) str


@dataclass
class ClipStream:
    """An open clip file whose frames are read in chunks of clips (:meth:`chunks`), never whole:
    ``simulate`` and ``evaluate`` hold one chunk of frames at a time. ``labels`` and ``names`` (small)
    are read at open. Valid inside the ``with open_clips(...)`` block only."""

    path: Path
    shape: tuple[int, int, int, int]  # (N, T, H, W) of the frames
    labels: np.ndarray | None
    names: np.ndarray | None
    _frames: ArrayStream

    @property
    def n(self) -> int:
        return self.shape[0]

    def chunks(self, clips: int) -> Iterator[np.ndarray]:
        """(<= clips, T, H, W) uint8 frames, in file order."""
        return self._frames.chunks(clips)


_EXAMPLE = "np.savez(path, frames=..., labels=...)"


def _check(path, frames_shape, frames_dtype, labels, names, *, size, timesteps, need_labels, num_classes):
    """The shared checks of a clip file: frames (N,T,size,size) uint8, labels, names."""
    if frames_dtype != np.uint8:
        raise InputError(f"{path}: frames must be uint8 gray levels, got {frames_dtype}")
    expected_t = timesteps if timesteps is not None else "T"
    if len(frames_shape) != 4 or tuple(frames_shape[2:]) != (size, size) or (
            timesteps is not None and frames_shape[1] != timesteps):
        raise InputError(f"{path}: frames must have shape (N,{expected_t},{size},{size}), got {tuple(frames_shape)}")
    if frames_shape[0] == 0:
        raise InputError(f"{path}: holds no clips")
    if labels is not None:
        labels = check_labels(labels, n=frames_shape[0], num_classes=num_classes, what=f"{path}: labels")
    elif need_labels:
        raise InputError(f"{path} has no 'labels' array: evaluation needs the true class of each clip")
    if names is not None and names.shape != (frames_shape[0],):
        names = None
    return labels, names


def _no_frames(path, data, size) -> InputError:
    return InputError(f"{path} has no 'frames' array (found {data.files}); "
                      f"expected frames (N,T,{size},{size}) uint8")


def load_clips(path: str | os.PathLike, *, size: int = 64, timesteps: int | None = 16,
               need_labels: bool = False, num_classes: int | None = None) -> Clips:
    """Load and validate a clip file; every problem becomes a one-line :class:`InputError`.

    ``num_classes``: when given, labels must lie in 0..num_classes-1 (the model's classes).
    """
    path = Path(path) if isinstance(path, (str, os.PathLike)) and str(path) else path
    with open_npz(path, what="clips", example=_EXAMPLE) as data:
        if "frames" not in data.files:
            raise _no_frames(path, data, size)
        frames = data["frames"]
        labels = data["labels"] if "labels" in data.files else None
        names = data["names"] if "names" in data.files else None
    labels, names = _check(path, frames.shape, frames.dtype, labels, names, size=size, timesteps=timesteps,
                           need_labels=need_labels, num_classes=num_classes)
    return Clips(frames=frames, labels=labels, names=names)


@contextmanager
def open_clips(path: str | os.PathLike, *, size: int = 64, timesteps: int | None = 16,
               need_labels: bool = False, num_classes: int | None = None) -> Iterator[ClipStream]:
    """``with open_clips(path, ...) as clips:`` iterate ``clips.chunks(n)``: the checks of
    :func:`load_clips` (from the frames' header, before any frame is read), memory of one chunk."""
    path = Path(path) if isinstance(path, (str, os.PathLike)) and str(path) else path
    with open_npz(path, what="clips", example=_EXAMPLE) as data:
        if "frames" not in data.files:
            raise _no_frames(path, data, size)
        frames = ArrayStream(data, "frames", path=path)
        labels = data["labels"] if "labels" in data.files else None
        names = data["names"] if "names" in data.files else None
        labels, names = _check(path, frames.shape, frames.dtype, labels, names, size=size,
                               timesteps=timesteps, need_labels=need_labels, num_classes=num_classes)
        yield ClipStream(path=path, shape=frames.shape, labels=labels, names=names, _frames=frames)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (.npz, compressed) via a temp file in the same folder and a rename.

    The archive is written here rather than by ``np.savez_compressed``, which leaves its zip file
    open when a write fails (a full disk): the zip's finaliser then retries and prints a second
    "Exception ignored" traceback. Here a failed write abandons the archive and only the first
    error (an OSError, one line at the CLI) propagates; the old file, if any, is untouched.
    """
    path = check_npz_output(path)
    try:
        with atomic_open(path, "wb") as fh:
            write_zip(fh, arrays.items())
    except PermissionError as exc:
        raise InputError(f"cannot write to {path.parent} ({exc.strerror})") from None
    return path

