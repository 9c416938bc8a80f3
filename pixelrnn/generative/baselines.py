"""Reference densities for discrete images, measured on the same splits as the neural models.

* uniform: every pixel uniform over K levels, H*W*ln K nats per image;
* independent per-pixel categorical: add-alpha smoothed level counts per pixel position;
* linear autoregressive: for each pixel in raster order a multinomial logistic regression on all
  previous pixels (scaled to [0, 1]) -- the "fully visible sigmoid belief net" with softmax.
Smoothing alpha and the regression's inverse L2 strength C are chosen on the validation split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHAS = (0.01, 0.1, 0.3, 1.0)
CS = (0.25, 1.0, 4.0)
MIX = 1e-3      # linear AR: mix in this much of the categorical so unseen levels keep p > 0


def _check(images: np.ndarray, num_classes: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"images must be an integer (N, H, W) array, got {images.dtype} {images.shape}")
    if images.size and (images.min() < 0 or images.max() >= num_classes):
        raise ValueError(f"pixel values must lie in [0, {num_classes})")
    return images.reshape(len(images), -1).astype(np.int64)


def uniform_nll(*, num_classes: int, image_shape: tuple[int, int]) -> float:
    """Nats per image of the uniform model."""
    return image_shape[0] * image_shape[1] * math.log(num_classes)


def categorical_probs(train: np.ndarray, *, num_classes: int, alpha: float) -> np.ndarray:
    """(D, K) per-pixel level probabilities with add-alpha smoothing."""
    flat = _check(train, num_classes)
    counts = np.stack([np.bincount(flat[:, i], minlength=num_classes) for i in range(flat.shape[1])])
    counts = counts + alpha
    return counts / counts.sum(1, keepdims=True)


def _nll_from_probs(probs: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Per-image nats; ``probs`` is (D, K) (shared) or (N, D, K) (per image)."""
    if probs.ndim == 2:
        picked = probs[np.arange(flat.shape[1])[None, :], flat]
    else:
        picked = np.take_along_axis(probs, flat[:, :, None], axis=2)[:, :, 0]
    return -np.log(picked).sum(1)


@dataclass
class BaselineResult:
    name: str
    nats: float            # mean test NLL, nats per image
    bits_per_dim: float
    chosen: str            # hyper-parameter picked on validation


def _result(name: str, nats: float, dims: int, chosen: str) -> BaselineResult:
    return BaselineResult(name, float(nats), float(nats / (dims * math.log(2))), chosen)


def categorical_baseline(*, train, val, test, num_classes: int) -> BaselineResult:
    """Independent per-pixel categorical, alpha chosen on validation."""
    vflat, tflat = _check(val, num_classes), _check(test, num_classes)
    best = min(ALPHAS, key=lambda a: _nll_from_probs(categorical_probs(train, num_classes=num_classes, alpha=a),
                                                     vflat).mean())
    probs = categorical_probs(train, num_classes=num_classes, alpha=best)
    return _result("independent per-pixel categorical", _nll_from_probs(probs, tflat).mean(), tflat.shape[1],
                   f"alpha={best}")


def _linear_ar_probs(train_flat, evals, *, num_classes: int, C: float, cat: np.ndarray, progress=None):
    """Conditional probabilities (N_eval, D, K) of the linear AR model fitted once on
    ``train_flat``, for each array in ``evals``."""
    from sklearn.linear_model import LogisticRegression
    dims = train_flat.shape[1]
    outs = [np.empty((len(e), dims, num_classes)) for e in evals]
    scale = 1.0 / (num_classes - 1)
    for i in range(dims):
        y = train_flat[:, i]
        classes = np.unique(y)
        if i == 0 or len(classes) == 1:
            for out in outs:
                out[:, i] = cat[i]
        else:
            model = LogisticRegression(C=C, max_iter=2000).fit(train_flat[:, :i] * scale, y)
            for out, e in zip(outs, evals):
                probs = np.zeros((len(e), num_classes))
                probs[:, model.classes_] = model.predict_proba(e[:, :i] * scale)
                out[:, i] = (1 - MIX) * probs + MIX * cat[i]
        if progress is not None:
            progress(1)
    return outs


def linear_ar_baseline(*, train, val, test, num_classes: int, progress=None) -> BaselineResult:
    """Logistic regression on all previous pixels, C chosen on validation (one fit per C scores
    both validation and test)."""
    trflat, vflat, tflat = (_check(a, num_classes) for a in (train, val, test))
    cat = categorical_probs(train, num_classes=num_classes, alpha=0.1)
    scores = {}
    for C in CS:
        val_probs, test_probs = _linear_ar_probs(trflat, (vflat, tflat), num_classes=num_classes, C=C, cat=cat,
                                                 progress=progress)
        scores[C] = (_nll_from_probs(val_probs, vflat).mean(), _nll_from_probs(test_probs, tflat).mean())
    best = min(scores, key=lambda C: scores[C][0])
    return _result("linear autoregressive (logistic regression on all previous pixels)",
                   scores[best][1], tflat.shape[1], f"C={best}")


def all_baselines(*, train, val, test, num_classes: int, linear: bool = True, progress=None) -> list[BaselineResult]:
    """Uniform, per-pixel categorical and (if ``linear``) linear AR on one split."""
    shape = tuple(np.asarray(test).shape[1:])
    uni = uniform_nll(num_classes=num_classes, image_shape=shape)
    out = [_result("uniform", uni, shape[0] * shape[1], "-"),
           categorical_baseline(train=train, val=val, test=test, num_classes=num_classes)]
    if linear:
        out.append(linear_ar_baseline(train=train, val=val, test=test, num_classes=num_classes, progress=progress))
    return out
