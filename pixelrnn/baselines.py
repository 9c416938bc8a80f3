"""Baselines for the results table: a raw-pixel linear classifier, and chance.

The linear baseline sees what a conventional camera would send: the 16 frames averaged into one
64x64 image, standardised per pixel (statistics of the training clips), then multinomial logistic
regression with an L2 penalty chosen on the validation split. The problem is convex and solved to
convergence (L-BFGS), so it does not depend on a seed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def features(frames: np.ndarray) -> np.ndarray:
    """(N, T, H, W) uint8 -> (N, H*W) float64: the time-averaged frame, scaled to 0..1."""
    return frames.astype(np.float64).mean(axis=1).reshape(len(frames), -1) / 255.0


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> torch.nn.Linear:
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], classes, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 0.5 * l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def linear_baseline(*, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], num_classes: int) -> dict:
    """Fit on ``train``, pick the L2 strength on ``val``, report accuracy on ``test`` (frames, labels)."""
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2")
    ftr = features(train[0])
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    prep = lambda f: torch.from_numpy((features(f) - mean) / std)  # noqa: E731
    x_tr, x_va, x_te = prep(train[0]), prep(val[0]), prep(test[0])
    y_tr = torch.from_numpy(train[1]).long()
    best = None
    for l2 in L2_GRID:
        lin = _fit(x_tr, y_tr, num_classes, l2)
        with torch.no_grad():
            val_acc = float((lin(x_va).argmax(1).numpy() == val[1]).mean())
        if best is None or val_acc > best[0]:
            best = (val_acc, l2, lin)
    val_acc, l2, lin = best
    with torch.no_grad():
        test_acc = float((lin(x_te).argmax(1).numpy() == test[1]).mean())
    return {"test_accuracy": test_acc, "val_accuracy": val_acc, "l2": l2}


def chance(labels_train: np.ndarray, labels_test: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent training class (= 1/classes when balanced)."""
    values, counts = np.unique(labels_train, return_counts=True)
    return float((labels_test == values[counts.argmax()]).mean())
