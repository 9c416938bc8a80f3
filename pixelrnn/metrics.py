"""Classification metrics of labelled predictions: confusion matrix, accuracy, per-class accuracy,
and their text form. A library shared by ``pixelrnn evaluate`` and the end-of-training report."""
from __future__ import annotations

import numpy as np

from core.errors import InputError


def confusion_matrix(*, labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(true, predicted) counts, rows = true class."""
    if labels.shape != preds.shape:
        raise ValueError("labels and preds must have the same shape")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in 0..{num_classes - 1} for this model, "
                         f"found {labels.min()}..{labels.max()}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def metrics(*, labels: np.ndarray, preds: np.ndarray, class_names: list[str]) -> dict:
    """Counts, accuracy, per-class accuracy and support, and the confusion matrix, as plain JSON types."""
    cm = confusion_matrix(labels=labels, preds=preds, num_classes=len(class_names))
    support = cm.sum(1)
    per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(class_names)}
    return {"n": int(labels.size), "correct": int(np.trace(cm)),
            "accuracy": float(np.trace(cm) / max(labels.size, 1)),
            "per_class": per_class, "support": {n: int(s) for n, s in zip(class_names, support)},
            "confusion": cm.tolist(), "classes": class_names}


def format_report(report: dict) -> str:
    """The text form of a :func:`metrics` report: accuracy, per class, confusion matrix."""
    names = report["classes"]
    lines = [f"accuracy {report['accuracy']:.4f} ({report['correct']}/{report['n']})", "per class:"]
    for name in names:
        acc = report["per_class"][name]
        lines.append(f"  {name:>12s}  {'-' if acc is None else f'{acc:.3f}'}  (n={report['support'][name]})")
    width = max(5, max(len(n) for n in names))
    lines.append("confusion (rows true, columns predicted):")
    lines.append(" " * (width + 2) + " ".join(f"{i:>4d}" for i in range(len(names))))
    for i, row in enumerate(report["confusion"]):
        lines.append(f"  {names[i]:>{width}s} " + " ".join(f"{v:>4d}" for v in row))
    return "\n".join(lines)
