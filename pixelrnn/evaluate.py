"""``pixelrnn evaluate``: accuracy of a model on labelled clips, run through the sensor simulator.

The frames go through firmware_sim (the sensor program, 8-bit readout) and the model's off-sensor
decoder, i.e. exactly what a deployed sensor + host would compute.
"""
from __future__ import annotations

import argparse

import numpy as np

from core.atomic import write_json_atomic
from firmware_sim.clips import open_clips
from firmware_sim.noise import NoiseModel, noise_arg
from firmware_sim.simulate import PATHS
from pixelrnn.checkpoint import load_model
from pixelrnn.metrics import confusion_matrix, format_report, metrics
from pixelrnn.simulate import stream_logits

__all__ = ["add_evaluate_parser", "confusion_matrix", "evaluate", "format_report", "metrics", "run_evaluate"]


def evaluate(*, weights: str, clips: str, path: str = "fast", noise: NoiseModel | None = None,
             seed: int = 0) -> dict:
    """Accuracy, per-class accuracy and confusion matrix of ``weights`` on the labelled ``clips``,
    through the sensor simulator; the clips stream through in chunks (bounded memory)."""
    model = load_model(weights)
    sensor = model.sensor_weights()
    noise = noise or NoiseModel.off()
    noise.check_program(sensor.program_hash())
    with open_clips(clips, timesteps=sensor.timesteps, need_labels=True,
                    num_classes=model.config.num_classes) as data:
        preds = np.concatenate([logits.argmax(1) for _, logits in stream_logits(
            model=model, weights=sensor, clips=data, path=path, noise=noise, seed=seed, source=str(weights),
            desc="evaluate")])
        labels = data.labels
    report = metrics(labels=labels, preds=preds, class_names=model.config.class_names)
    report.update(weights=str(weights), clips=str(clips), path=path, noise=noise.to_dict(), seed=seed,
                  model_id=sensor.program_hash())
    return report


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
