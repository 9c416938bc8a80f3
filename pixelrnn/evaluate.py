"""``pixelrnn evaluate``: accuracy of a model on labelled clips, run through the sensor simulator.

The frames go through firmware_sim (the sensor program, 8-bit readout) and the model's off-sensor
decoder, i.e. exactly what a deployed sensor + host would compute.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from core.atomic import write_json_atomic
from firmware_sim.clips import load_clips
from core.errors import InputError
from firmware_sim.noise import NoiseModel, noise_arg
from firmware_sim.simulate import PATHS, simulate
from pixelrnn.checkpoint import load_model


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
    cm = confusion_matrix(labels=labels, preds=preds, num_classes=len(class_names))
    support = cm.sum(1)
    per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(class_names)}
    return {"n": int(labels.size), "correct": int(np.trace(cm)),
            "accuracy": float(np.trace(cm) / max(labels.size, 1)),
            "per_class": per_class, "support": {n: int(s) for n, s in zip(class_names, support)},
            "confusion": cm.tolist(), "classes": class_names}


def evaluate(*, weights: str, clips: str, path: str = "fast", noise: NoiseModel | None = None,
             seed: int = 0) -> dict:
    model = load_model(weights)
    sensor = model.sensor_weights()
    noise = noise or NoiseModel.off()
    noise.check_program(sensor.program_hash())
    data = load_clips(clips, timesteps=sensor.timesteps, need_labels=True)
    result = simulate(weights=sensor, frames=data.frames, noise=noise, seed=seed, path=path, stages=())
    with torch.no_grad():
        preds = model.decode(torch.from_numpy(result.readout)).argmax(1).numpy()
    report = metrics(labels=data.labels, preds=preds, class_names=model.config.class_names)
    report.update(weights=str(weights), clips=str(clips), path=path, noise=noise.to_dict(), seed=seed,
                  model_id=sensor.program_hash())
    return report


def format_report(report: dict) -> str:
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


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix",
                              description="Evaluate a model on labelled clips through the sensor simulator.")
    p.add_argument("--weights", required=True, help="checkpoint (.pt): ours or the authors' state dict")
    p.add_argument("--clips", required=True, help=".npz with frames (N,16,64,64) uint8 and labels (N,)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    p.add_argument("--path", choices=PATHS, default="fast", help="simulator path (default fast)")
    p.add_argument("--noise", type=noise_arg, default=NoiseModel.off(), metavar="off|authors|FILE",
                   help="analog noise at test time (default off)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    report = evaluate(weights=args.weights, clips=args.clips, path=args.path, noise=args.noise,
                      seed=args.seed)
    print(format_report(report))
    if args.json_out:
        write_json_atomic(args.json_out, report)
        print(f"wrote {args.json_out}")
    return 0
