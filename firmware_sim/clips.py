"""Reading and writing clip files (``.npz``: ``frames`` (N, T, 64, 64) uint8, optional ``labels``).

Validated here once, so ``simulate``, ``evaluate`` and training give the same one-line errors.
Arrays are read with ``allow_pickle=False``; outputs are written atomically (temp file + rename).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_open
from core.errors import InputError
from core.npz import open_npz
from core.readouts import check_labels


@dataclass
class Clips:
    frames: np.ndarray               # (N, T, H, W) uint8
    labels: np.ndarray | None        # (N,) int64
    names: np.ndarray | None         # (N,) str


def load_clips(path: str | os.PathLike, *, size: int = 64, timesteps: int | None = 16,
               need_labels: bool = False, num_classes: int | None = None) -> Clips:
    """Load and validate a clip file; every problem becomes a one-line :class:`InputError`.

    ``num_classes``: when given, labels must lie in 0..num_classes-1 (the model's classes).
    """
    path = Path(path) if isinstance(path, (str, os.PathLike)) and str(path) else path
    with open_npz(path, what="clips", example="np.savez(path, frames=..., labels=...)") as data:
        if "frames" not in data.files:
            raise InputError(f"{path} has no 'frames' array (found {data.files}); "
                             f"expected frames (N,T,{size},{size}) uint8")
        frames = data["frames"]
        labels = data["labels"] if "labels" in data.files else None
        names = data["names"] if "names" in data.files else None
    if frames.dtype != np.uint8:
        raise InputError(f"{path}: frames must be uint8 gray levels, got {frames.dtype}")
    expected_t = timesteps if timesteps is not None else "T"
    if frames.ndim != 4 or frames.shape[2:] != (size, size) or (
            timesteps is not None and frames.shape[1] != timesteps):
        raise InputError(f"{path}: frames must have shape (N,{expected_t},{size},{size}), got {frames.shape}")
    if frames.shape[0] == 0:
        raise InputError(f"{path}: holds no clips")
    if labels is not None:
        labels = check_labels(labels, n=frames.shape[0], num_classes=num_classes, what=f"{path}: labels")
    elif need_labels:
        raise InputError(f"{path} has no 'labels' array: evaluation needs the true class of each clip")
    if names is not None and names.shape != (frames.shape[0],):
        names = None
    return Clips(frames=frames, labels=labels, names=names)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (.npz, compressed) via a temp file in the same folder and a rename.

    The archive is written here rather than by ``np.savez_compressed``, which leaves its zip file
    open when a write fails (a full disk): the zip's finaliser then retries and prints a second
    "Exception ignored" traceback. Here a failed write abandons the archive and only the first
    error (an OSError, one line at the CLI) propagates; the old file, if any, is untouched.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"output {path} must end in .npz")
    if not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    try:
        with atomic_open(path, "wb") as fh:
            _write_npz(fh, arrays)
    except PermissionError as exc:
        raise InputError(f"cannot write to {path.parent} ({exc.strerror})") from None
    return path


def _write_npz(fh, arrays: dict[str, np.ndarray]) -> None:
    zf = zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
    try:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    except BaseException:
        zf.fp = None          # abandon: no central directory, and nothing left for __del__ to retry
        raise
    zf.close()
