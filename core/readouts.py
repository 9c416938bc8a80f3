"""Real sensor readouts: loading, validation, and the stratified splits every calib command uses.

A readouts file is an ``.npz`` with ``readouts``: (N, 64, 64) uint8 readout levels, or SCAMP-5
full-array frames (N, 256, 256) whose 64x64 output sits at rows and columns 128:192; and, for
commands that score accuracy, ``labels`` (N,) integers. Readouts written by ``pixelrnn simulate``
also carry ``program_hash``, the sensor program that made them: a command that knows its program
refuses readouts of another (:meth:`Readouts.check_program`). Anything else is refused with one line.
Readouts of another readout layout (:mod:`core.readout_layout`), (N, M, S, S) levels, are checked by
:func:`check_layout_readouts` (int8 calibration of such a model's decoder, ``pixelrnn export --int8``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.npz import open_npz

SIZE = 64
FULL = 256
WINDOW = slice(128, 192)       # where SCAMP-5 puts the 64x64 output in its 256x256 array


@dataclass(frozen=True)
class Readouts:
    """Validated readouts (N, 64, 64) uint8, with labels (N,) int64 and names when the file has them."""

    readouts: np.ndarray
    labels: np.ndarray | None
    names: np.ndarray | None
    source: str
    program_hash: str | None = None      # the sensor program that made them, when the file says

    def check_program(self, expected: str | None, *, what: str = "this model") -> None:
        """Refuse readouts whose file records another sensor program than ``expected``."""
        if self.program_hash is not None and expected is not None and self.program_hash != expected:
            raise InputError(f"{self.source} holds readouts of sensor program {self.program_hash}, but "
                             f"{what} runs program {expected}: simulate or record them with that program")

    def __len__(self) -> int:
        return int(self.readouts.shape[0])

    def subset(self, idx: np.ndarray) -> "Readouts":
        return Readouts(readouts=self.readouts[idx],
                        labels=None if self.labels is None else self.labels[idx],
                        names=None if self.names is None else self.names[idx], source=self.source,
                        program_hash=self.program_hash)


def check_readouts(readouts, *, what: str = "readouts") -> np.ndarray:
    """A readout array -> contiguous (N, 64, 64) uint8 (a (N, 256, 256) SCAMP-5 frame is cropped).

    Raises a one-line :class:`InputError` for NaNs, another dtype, another shape or N = 0.
    """
    if not isinstance(readouts, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(readouts).__name__}")
    if readouts.dtype.kind == "f" and np.isnan(readouts).any():
        raise InputError(f"{what} contain {int(np.isnan(readouts).sum())} NaN values: readouts are "
                         "8-bit sensor levels (uint8 0..255)")
    if readouts.dtype != np.uint8:
        raise InputError(f"{what} must be uint8 readout levels (0..255), got dtype {readouts.dtype}")
    if readouts.ndim != 3 or readouts.shape[1:] not in ((SIZE, SIZE), (FULL, FULL)):
        raise InputError(f"{what} must have shape (N, {SIZE}, {SIZE}) or SCAMP-5 full-array "
                         f"(N, {FULL}, {FULL}), got {readouts.shape}")
    if readouts.shape[0] < 1:
        raise InputError(f"{what} hold no readouts (N = 0)")
    if readouts.shape[1] == FULL:
        readouts = readouts[:, WINDOW, WINDOW]
    return np.ascontiguousarray(readouts)


def layout_readouts_fix(weights: str | os.PathLike | None = None) -> str:
    """How to make readouts of a model's layout (the end of :func:`check_layout_readouts`' refusals)."""
    name = str(weights) if weights is not None and str(weights) else "<this model>"
    return (f"make them with `pixelrnn simulate --weights {name} --clips CLIPS.npz --readout-only --out R.npz` "
            "(or pass the clips, frames (N,T,64,64) uint8)")


def check_layout_readouts(readouts, layout, *, what: str = "readouts",
                          weights: str | os.PathLike | None = None) -> np.ndarray:
    """Readout levels of another readout layout (``core.readout_layout.ReadoutLayout``, not the
    authors') -> contiguous (N, M, S, S) uint8, every level in 0..``layout.max_level``.

    Raises a one-line :class:`InputError` naming the expected and the given shape (or dtype, or
    largest level) and how to make readouts of this layout (:func:`layout_readouts_fix`; ``weights``:
    the model's checkpoint, named in that command)."""
    shape = "(N, " + ", ".join(map(str, layout.shape)) + ")"
    whose = f"this model's readout layout ({layout.describe()})"
    fix = layout_readouts_fix(weights)
    if not isinstance(readouts, np.ndarray):
        raise InputError(f"{what} must be a numpy array {shape} uint8, got {type(readouts).__name__}")
    if readouts.dtype != np.uint8:
        raise InputError(f"{what} must be uint8 readout levels {shape} for {whose}, got dtype "
                         f"{readouts.dtype}; {fix}")
    if readouts.ndim != 4 or readouts.shape[1:] != tuple(layout.shape) or readouts.shape[0] < 1:
        raise InputError(f"{what} must have shape {shape} with N >= 1 for {whose}, got {readouts.shape}; "
                         f"{fix}")
    top = int(readouts.max())
    if top > layout.max_level:
        raise InputError(f"{what} hold level {top}, but {whose} has levels 0..{layout.max_level}; "
                         f"{fix}")
    return np.ascontiguousarray(readouts)


def check_labels(labels, *, n: int, num_classes: int | None, what: str = "labels") -> np.ndarray:
    """Labels (n,) integers in 0..num_classes-1 -> int64, or a one-line :class:`InputError`."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise InputError(f"{what} contain NaN values: labels are class indices")
    if labels.dtype.kind not in "iu":
        kind = "strings" if labels.dtype.kind in "US" else f"dtype {labels.dtype}"
        raise InputError(f"{what} must be integers (class indices), got {kind}")
    if labels.shape != (n,):
        raise InputError(f"{what} must have shape ({n},), one per sample, got {labels.shape}")
    if n and labels.min() < 0:
        raise InputError(f"{what} must be >= 0, found {int(labels.min())}")
    if num_classes is not None and n and labels.max() >= num_classes:
        raise InputError(f"{what} must lie in 0..{num_classes - 1} for this model, found {int(labels.max())}")
    return labels.astype(np.int64)


def load_readouts(path: str | os.PathLike, *, need_labels: bool = False,
                  num_classes: int | None = None, keys: tuple[str, ...] = ("readouts",)) -> Readouts:
    """Load and validate a readouts ``.npz`` (``allow_pickle=False``); see the module docstring.

    ``keys``: the array names accepted for the readouts, first present wins (``pixelrnn simulate``
    writes ``readout``; real-sensor files use ``readouts``).
    """
    path = Path(path) if isinstance(path, (str, os.PathLike)) and str(path) else path
    with open_npz(path, what="readouts", example="np.savez(path, readouts=..., labels=...)") as data:
        files = set(data.files)
        key = next((k for k in keys if k in files), None)
        if key is None:
            names = " or ".join(repr(k) for k in keys)
            hint = "; pixelrnn simulate --readout-only writes one" if "readout" in keys else ""
            raise InputError(f"{path} has no {names} array (found {sorted(files) or 'nothing'}); "
                             f"expected readouts (N,64,64) or (N,256,256) uint8{hint}")
        raw = data[key]
        labels = data["labels"] if "labels" in files else None
        names = data["names"] if "names" in files else None
        program = data["program_hash"] if "program_hash" in files else None
    readouts = check_readouts(raw, what=f"{path.name}: {key}")
    n = readouts.shape[0]
    if labels is None:
        if need_labels:
            raise InputError(f"{path} has no 'labels' array: this command needs the class of every readout")
    else:
        labels = check_labels(labels, n=n, num_classes=num_classes, what=f"{path.name}: labels")
    if names is not None and names.shape != (n,):
        names = None
    if program is not None:
        if program.shape != () or program.dtype.kind != "U" or not str(program):
            raise InputError(f"{path}: program_hash must be a string scalar (as pixelrnn simulate writes it)")
        program = str(program)
    return Readouts(readouts=readouts, labels=labels, names=names, source=str(path), program_hash=program)


def _check_split_args(labels, k_or_fraction, seed) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.size == 0:
        raise InputError("labels must be a non-empty 1-D integer array")
    if labels.min() < 0:
        raise InputError(f"labels must be class indices >= 0, found {int(labels.min())}")
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return labels


def stratified_folds(labels: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """Fold id (0..k-1) of every sample: each class is shuffled (fixed seed) and dealt round-robin,
    so every fold holds floor or ceil of (class size / k) samples of each class."""
    labels = _check_split_args(labels, k, seed)
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 2):
        raise InputError(f"the number of folds must be an integer >= 2, got {k!r}")
    smallest = int(np.unique(labels, return_counts=True)[1].min())
    if smallest < k:
        raise InputError(f"{k} folds need at least {k} readouts of every class; the smallest class has {smallest}")
    rng = np.random.default_rng(seed)
    folds = np.empty(labels.size, dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        folds[idx] = (np.arange(idx.size) + offset) % k   # rotate so fold sizes stay balanced
        offset += idx.size
    return folds


def stratified_split(labels: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) index arrays: ``fraction`` of every class (rounded, at least one) goes second."""
    labels = _check_split_args(labels, fraction, seed)
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise InputError(f"fraction must be a number strictly between 0 and 1, got {fraction!r}")
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        m = min(max(1, int(round(fraction * idx.size))), idx.size - 1) if idx.size > 1 else 0
        second.append(idx[:m])
        first.append(idx[m:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
