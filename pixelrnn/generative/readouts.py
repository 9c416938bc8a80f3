"""Sensor readouts as a 1-bit image data set, for the learned prior of the readout coder.

Accepts the two readout files the package already writes or ships:
* ``pixelrnn simulate --out F.npz`` output: ``readout`` (N, 64, 64) uint8 (+ ``labels``);
* a real-sensor file as ``calib`` reads it: ``readouts`` (N, 64, 64) or SCAMP-5 (N, 256, 256)
  uint8, cropped to the 64x64 output (e.g. ``scamp5_readouts_cambridge810.npz``).
Readouts become the 1-bit payload symbols with the packet's rule, ``bit = readout >= 127``
(o >= 0). Split: stratified 5 folds by label with seed 0 (the calib split); fold 0 is the test
split, fold 1 validation, folds 2-4 training.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.constants import ZERO_LEVEL

from .datasets import ImageDataset

FOLDS, SPLIT_SEED = 5, 0


def readout_bits(readouts: np.ndarray) -> np.ndarray:
    """8-bit readout levels -> 1-bit payload symbols (uint8 0/1), the packet's rule."""
    return (np.asarray(readouts) >= ZERO_LEVEL).astype(np.uint8)


def load_readout_arrays(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(readouts (N, 64, 64) uint8, labels or None) from a simulate output or a readouts file."""
    from core.readouts import load_readouts
    loaded = load_readouts(path, keys=("readouts", "readout"))
    return loaded.readouts, loaded.labels


def load_readout_dataset(path: str | os.PathLike) -> ImageDataset:
    """1-bit readouts of ``path`` split 3/1/1 (train/val/test) by stratified folds."""
    from core.readouts import stratified_folds
    readouts, labels = load_readout_arrays(path)
    bits = readout_bits(readouts)
    if labels is None:
        labels = np.zeros(len(bits), dtype=np.int64)
    if len(bits) < 2 * FOLDS:
        raise ValueError(f"{path}: {len(bits)} readouts are too few to split (need >= {2 * FOLDS})")
    folds = stratified_folds(labels, k=FOLDS, seed=SPLIT_SEED)
    parts = {"test": folds == 0, "val": folds == 1, "train": folds >= 2}
    splits = {k: (bits[m], labels[m]) for k, m in parts.items()}
    num_labels = int(labels.max()) + 1
    return ImageDataset(Path(path).stem, 2, num_labels, splits,
                        f"1-bit readouts (readout >= 127) of {Path(path).name}; stratified 5 folds seed 0: "
                        f"fold 0 test, fold 1 val, folds 2-4 train")
