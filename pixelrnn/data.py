"""Readers for the real datasets, their honest splits, and training-time augmentation.

Every reader returns a :class:`Dataset` of 16-frame 64x64 uint8 gray clips; the sensor's front end
(normalisation, binarization) is applied later by the model / firmware_sim, from one definition.
Resizing uses :func:`firmware_sim.frontend.crop_resize`, the same call the camera loop makes.

================  ====================================  ==========  ====================================
name              file                                  classes     split
================  ====================================  ==========  ====================================
``grid``          grid_s1_digits.npz                    10 digits   fixed stratified 80/10/10
``avletters``     avletters_lips.npz (variable length)  26 letters  leave-speakers-out (7 / 1 / 2)
``avletters_ms``  the same file and clips               26 letters  multi-speaker: takes 1-2 train (a
                                                                    stratified 10% of them val), take 3
                                                                    test
``cambridge``     pixelrnn_ref/cambridge_test90.npz     9 gestures  5-fold stratified cross-validation
``tulips``        pixelrnn_ref/tulips_test10.npz        4 digits    test only (one..four)
================  ====================================  ==========  ====================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.npz import open_npz
from core.readouts import check_labels
from firmware_sim.frontend import SENSOR_SIZE, crop_resize
from pixelrnn.checkpoint import GESTURE_CLASSES, LIP_CLASSES

TIMESTEPS = 16
GRID_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
AVLETTERS_CLASSES = [chr(ord("A") + i) for i in range(26)]
# AVLetters speakers held out: the split is by person, so test accuracy is on faces never trained on.
AVLETTERS_VAL_SPEAKERS = ("Verity",)
AVLETTERS_TEST_SPEAKERS = ("Yi", "Anya")
SPLIT_SEED = 20240617          # fixed: the splits never change with the training seed
# AVLetters multi-speaker protocol (avletters_ms): every speaker seen in training; the held-out take.
AVLETTERS_MS_TRAIN_REPS = (1, 2)
AVLETTERS_MS_TEST_REPS = (3,)
AVLETTERS_MS_VAL_FRACTION = 0.1   # of the training repetitions' clips, per class
AVLETTERS_MS_VAL_PARTS = 10       # takes 1-2 cut into ten stratified tenths; part 0 is the fixed split
ROTATING_VAL_DATASETS = ("avletters_ms",)   # whose validation may be another part (TrainConfig.val_split)
FOLDS = 5
CV_DATASETS = ("cambridge",)      # the data sets split by --fold (k-fold cross-validation)
ALL_CLIPS = -1                    # --fold -1: train on every clip of a CV data set (no val / test split)

DATASETS = ("grid", "avletters", "cambridge", "tulips", "avletters_ms")
FILES = {"grid": "grid_s1_digits.npz", "avletters": "avletters_lips.npz",
         "cambridge": "pixelrnn_ref/cambridge_test90.npz", "tulips": "pixelrnn_ref/tulips_test10.npz",
         "avletters_ms": "avletters_lips.npz"}
TASKS = {"grid": "lips", "avletters": "lips", "cambridge": "gesture", "tulips": "lips", "avletters_ms": "lips"}
AVLETTERS_NAMES = ("avletters", "avletters_ms")     # one file and loader, two split protocols


@dataclass
class Dataset:
    name: str
    frames: np.ndarray          # (N, 16, 64, 64) uint8
    labels: np.ndarray          # (N,) int64
    classes: list[str]
    groups: np.ndarray          # (N,) str: speaker / illumination set (for leave-groups-out splits)
    names: np.ndarray           # (N,) str
    repetitions: np.ndarray | None = None   # (N,) int: AVLetters take 1..3 (None for the others)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim != 4:
            raise InputError(f"{self.name}: frames must be (N, T, H, W), got shape {frames.shape}")
        labels = check_labels(self.labels, n=frames.shape[0], num_classes=len(self.classes),
                              what=f"{self.name} labels")
        object.__setattr__(self, "labels", labels)
        if self.repetitions is not None:
            reps = np.asarray(self.repetitions, dtype=np.int64)
            if reps.shape != labels.shape:
                raise InputError(f"{self.name}: repetitions must be one per clip ({labels.shape[0]}), "
                                 f"got shape {reps.shape}")
            object.__setattr__(self, "repetitions", reps)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray) -> "Dataset":
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(self.name, self.frames[idx], self.labels[idx], self.classes, self.groups[idx],
                       self.names[idx],
                       None if self.repetitions is None else self.repetitions[idx])


def default_data_dir() -> Path:
    """``$PIXELRNN_DATA``, else ``../shared/data`` relative to the working directory."""
    return Path(os.environ.get("PIXELRNN_DATA", "../shared/data"))


def _npz(path: Path) -> dict[str, np.ndarray]:
    with open_npz(path, what="dataset", example="np.savez(path, frames=..., labels=...)",
                  missing_hint=" (point --data-dir or PIXELRNN_DATA at the shared data folder)") as d:
        return {k: d[k] for k in d.files}


def _require(arrays: dict, path: Path, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise InputError(f"{path} lacks arrays {missing} (found {sorted(arrays)})")


def even_indices(length: int, count: int = TIMESTEPS, *, offset: float = 0.0) -> np.ndarray:
    """``count`` frame indices spread evenly over ``length`` frames (the authors' sampling).

    ``offset`` in [-0.5, 0.5] shifts every sample by that fraction of the sampling step: the temporal
    jitter used as augmentation. Short clips repeat frames.
    """
    if length < 1:
        raise ValueError("a clip needs at least one frame")
    step = (length - 1) / max(count - 1, 1)
    pos = np.linspace(0, length - 1, count) + offset * step
    return np.clip(np.rint(pos), 0, length - 1).astype(np.int64)


def resize_clip(frames: np.ndarray, size: int = SENSOR_SIZE) -> np.ndarray:
    """(T, H, W) uint8 -> (T, size, size): the whole frame resized (no crop), area filter."""
    h, w = frames.shape[1:]
    return np.stack([crop_resize(f, roi=(0, 0, w, h), size=size) for f in frames])


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Read one of :data:`DATASETS` from the shared data folder into 16-frame 64x64 clips."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / FILES[name]
    d = _npz(path)
    if name in AVLETTERS_NAMES:
        _require(d, path, ("frames", "offsets", "labels", "speakers")
                 + (("repetitions",) if name == "avletters_ms" else ()))
        off, raw = d["offsets"], d["frames"]
        clips = np.stack([resize_clip(raw[off[i]:off[i + 1]][even_indices(int(off[i + 1] - off[i]))])
                          for i in range(len(off) - 1)])
        reps = d.get("repetitions", np.zeros(len(d["labels"]), dtype=np.int64))
        names = np.array([f"{s}_{AVLETTERS_CLASSES[k]}{r}" for s, k, r in
                          zip(d["speakers"], d["labels"], reps)])
        return Dataset(name, clips, d["labels"].astype(np.int64), AVLETTERS_CLASSES,
                       d["speakers"].astype(str), names,
                       reps.astype(np.int64) if "repetitions" in d else None)
    _require(d, path, ("frames", "labels"))
    frames, labels = d["frames"], d["labels"].astype(np.int64)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (TIMESTEPS, SENSOR_SIZE, SENSOR_SIZE):
        raise InputError(f"{path}: frames must be (N,16,64,64) uint8, got {frames.shape} {frames.dtype}")
    names = d.get("names", np.array([str(i) for i in range(len(labels))])).astype(str)
    if name == "grid":
        groups = np.full(len(labels), "s1")
        classes = GRID_CLASSES
    elif name == "cambridge":
        groups = np.array([n.split("_")[0] for n in names])      # illumination set, e.g. Set1
        classes = GESTURE_CLASSES
    else:
        groups = np.array([n.rstrip("0123456789") for n in names])  # speaker
        classes = LIP_CLASSES
    return Dataset(name, frames, labels, classes, groups, names)


# -- splits ---------------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, *, fractions=(0.8, 0.1, 0.1), seed: int = SPLIT_SEED
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class, shuffle with a fixed seed and cut into train/val/test by ``fractions``."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        n_train = len(idx) - n_val - n_test
        for part, chunk in zip(parts, (idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])):
            part.extend(chunk.tolist())
    return tuple(np.sort(np.array(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


def stratified_folds(labels: np.ndarray, *, folds: int = FOLDS, seed: int = SPLIT_SEED) -> np.ndarray:
    """Fold number (0..folds-1) of each sample; every class spread evenly over the folds."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64)) if len(labels) else np.zeros(0, np.int64)
    present = counts[counts > 0]
    if present.size and present.min() < folds:
        raise InputError(f"{folds}-fold cross-validation needs at least {folds} clips of every class; "
                         f"class {int(np.flatnonzero(counts == present.min())[0])} has {int(present.min())}")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def multi_speaker_split(ds: Dataset, *, val_part: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AVLetters multi-speaker protocol: train on takes 1-2 of every speaker, test on take 3.

    Validation is one of ten disjoint stratified tenths of takes 1-2 (``val_part``; 0 = the fixed split).
    """
    if ds.repetitions is None:
        raise InputError(f"{ds.name}: the multi-speaker split needs each clip's repetition "
                         f"(the 'repetitions' array of avletters_lips.npz)")
    reps = ds.repetitions
    known = AVLETTERS_MS_TRAIN_REPS + AVLETTERS_MS_TEST_REPS
    if not np.isin(reps, known).all():
        raise InputError(f"{ds.name}: repetitions must be in {known}, got {sorted(set(reps.tolist()) - set(known))}")
    if not (isinstance(val_part, int) and 0 <= val_part < AVLETTERS_MS_VAL_PARTS):
        raise InputError(f"{ds.name}: the validation part must be 0..{AVLETTERS_MS_VAL_PARTS - 1}, got {val_part!r}")
    te = np.flatnonzero(np.isin(reps, AVLETTERS_MS_TEST_REPS))
    pool = np.flatnonzero(np.isin(reps, AVLETTERS_MS_TRAIN_REPS))
    parts = validation_parts(ds.labels[pool], parts=AVLETTERS_MS_VAL_PARTS, fraction=AVLETTERS_MS_VAL_FRACTION)
    return pool[parts != val_part], pool[parts == val_part], te


def validation_parts(labels: np.ndarray, *, parts: int, fraction: float, seed: int = SPLIT_SEED) -> np.ndarray:
    """Which of ``parts`` disjoint stratified validation parts each clip is in (-1: in none).

    Per class, the clips are shuffled as :func:`stratified_split` shuffles them and ``fraction`` of them
    is cut from the end for each part in turn, so part 0 is exactly ``stratified_split``'s validation
    share (the fixed split) and the parts never overlap: runs that validate on different parts
    validate on different clips, and their pooled validation sees that many more clips.
    """
    rng = np.random.default_rng(seed)
    part = np.full(len(labels), -1, dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        if n_val * parts > len(idx):
            raise InputError(f"{parts} validation parts of {n_val} clips need {n_val * parts} clips of class {int(c)}; "
                             f"it has {len(idx)}")
        for k in range(parts):
            part[idx[len(idx) - n_val * (k + 1):len(idx) - n_val * k]] = k
    return part


def split(ds: Dataset, *, fold: int = 0, val_part: int = 0) -> dict[str, np.ndarray]:
    """Train / val / test indices of ``ds``: the fixed, honest split for that dataset.

    cambridge: test = fold ``fold`` of 5; validation = one clip per class from the remaining folds;
    ``fold=-1`` (:data:`ALL_CLIPS`): every clip trains, no validation or test clips (the final model,
    once cross-validation has chosen its settings and epochs).
    avletters_ms: test = every repetition-3 clip; validation = a stratified 10% of the repetition-1/2
    clips (per class, seed :data:`SPLIT_SEED`): part ``val_part`` of ten disjoint tenths, part 0 the fixed
    split; train = the other repetition-1/2 clips. Other data sets have one validation split (part 0).
    """
    if val_part and ds.name not in ROTATING_VAL_DATASETS:
        raise InputError(f"{ds.name} has one validation split; another validation part is for "
                         f"{', '.join(ROTATING_VAL_DATASETS)}")
    if ds.name == "grid":
        tr, va, te = stratified_split(ds.labels)
    elif ds.name == "avletters":
        te = np.flatnonzero(np.isin(ds.groups, AVLETTERS_TEST_SPEAKERS))
        va = np.flatnonzero(np.isin(ds.groups, AVLETTERS_VAL_SPEAKERS))
        tr = np.flatnonzero(~np.isin(ds.groups, AVLETTERS_TEST_SPEAKERS + AVLETTERS_VAL_SPEAKERS))
    elif ds.name == "avletters_ms":
        tr, va, te = multi_speaker_split(ds, val_part=val_part)
    elif ds.name == "cambridge":
        if not (isinstance(fold, int) and ALL_CLIPS <= fold < FOLDS):
            raise InputError(f"--fold must be 0..{FOLDS - 1} for cambridge (or {ALL_CLIPS}: train on every clip), "
                             f"got {fold!r}")
        if fold == ALL_CLIPS:
            none = np.empty(0, dtype=np.int64)
            return {"train": np.arange(len(ds.labels)), "val": none, "test": none}
        folds = stratified_folds(ds.labels)
        te = np.flatnonzero(folds == fold)
        rest = np.flatnonzero(folds != fold)
        rng = np.random.default_rng(SPLIT_SEED + fold)
        va = np.sort(np.array([rng.choice(rest[ds.labels[rest] == c]) for c in np.unique(ds.labels)]))
        tr = np.setdiff1d(rest, va)
    else:
        raise InputError(f"{ds.name} is a test-only set (10 clips): evaluate a lip model on it, "
                         f"do not train on it")
    return {"train": tr, "val": va, "test": te}


# -- augmentation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Training-only augmentation: temporal jitter (as the authors), small spatial shifts and, where
    left and right mean the same (a mouth), a mirror image half of the time."""

    max_shift: int = 3        # pixels, each axis
    max_time_shift: int = 1   # frames
    hflip: bool = False       # mirror left-right with probability 1/2 (drawn last, so the other draws
                              # are those of a run without it)

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        t = clip.shape[0]
        if self.max_time_shift:
            dt = int(rng.integers(-self.max_time_shift, self.max_time_shift + 1))
            clip = clip[np.clip(np.arange(t) + dt, 0, t - 1)]
        if self.max_shift:
            dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
            pad = self.max_shift
            padded = np.pad(clip, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
            h, w = clip.shape[1:]
            clip = padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        if self.hflip and rng.integers(0, 2):
            clip = clip[:, :, ::-1]
        return np.ascontiguousarray(clip)
