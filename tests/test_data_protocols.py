"""The dataset protocols of pixelrnn/data.py: the AVLetters multi-speaker split (avletters_ms) and the
fingerprints of the older splits, which adding it must not change."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import DATA, REF, need

torch = pytest.importorskip("torch")

# sha256 (first 16 hex digits) of the train, val, test index arrays, and their sizes, computed from
# pixelrnn/data.py BEFORE the avletters_ms protocol was added (split(ds, fold=f) for each fold).
OLD_SPLITS = {
    ("grid", 0): ("eba3fc4aad9f9952", (800, 100, 100)),
    ("avletters", 0): ("9c101fa5330458c7", (546, 78, 156)),
    ("cambridge", 0): ("6aa81c66cb796d85", (63, 9, 18)),
    ("cambridge", 1): ("b9f10ead40f40d52", (63, 9, 18)),
    ("cambridge", 2): ("0f6fb10bd96c9ec1", (63, 9, 18)),
    ("cambridge", 3): ("c7065e436f60a437", (63, 9, 18)),
    ("cambridge", 4): ("0377ecb0f3a6eb81", (63, 9, 18)),
}
FILES = {"grid": DATA / "grid_s1_digits.npz", "avletters": DATA / "avletters_lips.npz",
         "cambridge": REF / "cambridge_test90.npz"}


def fingerprint(parts: dict) -> tuple[str, tuple[int, int, int]]:
    h = hashlib.sha256()
    for k in ("train", "val", "test"):
        h.update(k.encode())
        h.update(np.asarray(parts[k], dtype=np.int64).tobytes())
    return h.hexdigest()[:16], tuple(len(parts[k]) for k in ("train", "val", "test"))


@pytest.fixture(scope="module")
def avletters_ms():
    from pixelrnn.data import load_dataset
    need(FILES["avletters"])
    return load_dataset("avletters_ms", data_dir=DATA)


def test_registered_like_avletters():
    from pixelrnn.data import DATASETS, TASKS
    from pixelrnn.data import FILES as DATA_FILES
    assert "avletters_ms" in DATASETS and "avletters" in DATASETS
    assert DATA_FILES["avletters_ms"] == DATA_FILES["avletters"] and TASKS["avletters_ms"] == "lips"


@pytest.mark.parametrize("name,fold", sorted(OLD_SPLITS))
def test_old_splits_unchanged(name, fold):
    from pixelrnn.data import load_dataset, split
    need(FILES[name])
    ds = load_dataset(name, data_dir=DATA)
    assert fingerprint(split(ds, fold=fold)) == OLD_SPLITS[(name, fold)]


def test_multi_speaker_split(avletters_ms):
    from pixelrnn.data import AVLETTERS_CLASSES, load_dataset, split
    ds = avletters_ms
    assert ds.name == "avletters_ms" and ds.classes == AVLETTERS_CLASSES
    assert ds.frames.shape == (780, 16, 64, 64) and ds.frames.dtype == np.uint8
    reps = ds.repetitions
    assert sorted(np.unique(reps).tolist()) == [1, 2, 3]
    # the repetition in each clip's name (e.g. Anya_A3) agrees with the array the split uses
    assert [int(n[-1]) for n in ds.names] == reps.tolist()
    p = split(ds)
    tr, va, te = (set(p[k].tolist()) for k in ("train", "val", "test"))
    assert not (reps[p["train"]] == 3).any() and not (reps[p["val"]] == 3).any()   # no take 3 trained on
    assert te == set(np.flatnonzero(reps == 3).tolist())                            # every take 3 tested
    assert not tr & va and not tr & te and not va & te                              # disjoint
    assert tr | va | te == set(range(len(ds)))                                      # nothing dropped
    assert (np.bincount(ds.labels[p["train"]], minlength=26) > 0).all()             # all classes trained
    assert np.bincount(ds.labels[p["val"]], minlength=26).tolist() == [2] * 26      # stratified 10%
    assert len(p["val"]) == 52 and len(p["train"]) == 468 and len(p["test"]) == 260
    assert set(ds.groups[p["test"]]) == set(ds.groups[p["train"]])                  # speakers all seen
    again = split(load_dataset("avletters_ms", data_dir=DATA))                      # fixed
    assert all(np.array_equal(again[k], p[k]) for k in p)
    # the same clips as the unseen-speaker protocol, in the same order
    av = load_dataset("avletters", data_dir=DATA)
    assert np.array_equal(av.frames, ds.frames) and np.array_equal(av.labels, ds.labels)


def test_multi_speaker_split_needs_repetitions(avletters_ms):
    from pixelrnn.data import Dataset, split
    ds = avletters_ms
    no_reps = Dataset(ds.name, ds.frames[:4], ds.labels[:4], ds.classes, ds.groups[:4], ds.names[:4])
    with pytest.raises(ValueError, match="repetition"):
        split(no_reps)
    bad = ds.subset(np.arange(4))
    bad.repetitions[0] = 7
    with pytest.raises(ValueError, match="repetitions must be in"):
        split(bad)
    with pytest.raises(ValueError, match="one per clip"):
        Dataset(ds.name, ds.frames[:4], ds.labels[:4], ds.classes, ds.groups[:4], ds.names[:4], np.ones(3))


def test_subset_keeps_repetitions(avletters_ms):
    sub = avletters_ms.subset(np.array([5, 1]))
    assert sub.repetitions.tolist() == avletters_ms.repetitions[[5, 1]].tolist()


def test_multi_speaker_validation_parts(avletters_ms):
    """``val_part`` k: the k-th of ten disjoint stratified tenths of takes 1-2; part 0 is the fixed split
    that rounds 1-11 used (written here the way data.py computed it before parts existed)."""
    from pixelrnn.data import AVLETTERS_MS_TRAIN_REPS, split, stratified_split
    ds = avletters_ms
    pool = np.flatnonzero(np.isin(ds.repetitions, AVLETTERS_MS_TRAIN_REPS))
    old_tr, old_va, _ = stratified_split(ds.labels[pool], fractions=(0.9, 0.1, 0.0))
    fixed = split(ds)
    assert np.array_equal(split(ds, val_part=0)["val"], pool[old_va]) and np.array_equal(fixed["val"], pool[old_va])
    assert np.array_equal(fixed["train"], pool[old_tr])
    parts = [split(ds, val_part=k) for k in range(10)]
    vals = [set(p["val"].tolist()) for p in parts]
    assert all(not a & b for i, a in enumerate(vals) for b in vals[i + 1:])             # disjoint
    assert set().union(*vals) == set(pool.tolist())                                    # cover takes 1-2
    for p in parts:
        assert np.bincount(ds.labels[p["val"]], minlength=26).tolist() == [2] * 26     # stratified 10%
        assert set(p["train"].tolist()) == set(pool.tolist()) - set(p["val"].tolist())
        assert np.array_equal(p["test"], fixed["test"])                                 # take 3, always
    with pytest.raises(ValueError, match="validation part must be 0..9"):
        split(ds, val_part=10)


def test_validation_parts_only_for_multi_speaker():
    from pixelrnn.data import load_dataset, split, validation_parts
    need(FILES["grid"])
    with pytest.raises(ValueError, match="one validation split"):
        split(load_dataset("grid", data_dir=DATA), val_part=1)
    with pytest.raises(ValueError, match="need 6 clips of class 1; it has 5"):
        validation_parts(np.array([0] * 6 + [1] * 5), parts=3, fraction=0.34)


def test_val_split_setting():
    from pixelrnn.train_config import TrainConfig
    assert TrainConfig(dataset="avletters_ms").val_part() == 0
    assert [TrainConfig(dataset="avletters_ms", val_split="seed", seed=s).val_part() for s in (0, 3, 13)] == [0, 3, 3]
    with pytest.raises(ValueError, match="val_split 'seed' is for avletters_ms"):
        TrainConfig(dataset="grid", val_split="seed")
    with pytest.raises(ValueError, match="val_split must be one of"):
        TrainConfig(dataset="avletters_ms", val_split="rotate")
