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


@dataclass
class Clips:
    frames: np.ndarray               # (N, T, H, W) uint8
    labels: np.ndarray | None        # (N,) int64
    names: np.ndarray | None         # (N,) str


def load_clips(path: str | os.PathLike, *, size: int = 64, timesteps: int | None = 16,
               need_labels: bool = False) -> Clips:
    """Load and validate a clip file; every problem becomes a one-line :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"clips file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "frames" not in data.files:
                raise InputError(f"{path} has no 'frames' array (found {data.files}); "
                                 f"expected frames (N,T,{size},{size}) uint8")
            frames = data["frames"]
            labels = data["labels"] if "labels" in data.files else None
            names = data["names"] if "names" in data.files else None
    except InputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable .npz file ({str(exc)[:120]})") from None
    if frames.dtype != np.uint8:
        raise InputError(f"{path}: frames must be uint8 gray levels, got {frames.dtype}")
    expected_t = timesteps if timesteps is not None else "T"
    if frames.ndim != 4 or frames.shape[2:] != (size, size) or (
            timesteps is not None and frames.shape[1] != timesteps):
        raise InputError(f"{path}: frames must have shape (N,{expected_t},{size},{size}), got {frames.shape}")
    if frames.shape[0] == 0:
        raise InputError(f"{path}: holds no clips")
    if labels is not None:
        if labels.shape != (frames.shape[0],) or labels.dtype.kind not in "iu":
            raise InputError(f"{path}: labels must be ({frames.shape[0]},) integers, got "
                             f"{labels.shape} {labels.dtype}")
        labels = labels.astype(np.int64)
    elif need_labels:
        raise InputError(f"{path} has no 'labels' array: evaluation needs the true class of each clip")
    return Clips(frames=frames, labels=labels, names=names)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (.npz) via a temp file in the same folder and a rename."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"output {path} must end in .npz")
    if not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    try:
        with atomic_open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    except PermissionError as exc:
        raise InputError(f"cannot write to {path.parent} ({exc.strerror})") from None
    return path
