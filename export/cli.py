"""``pixelrnn export``: write a device bundle (ONNX, TFLite, LCE, SCAMP-5 text) from a checkpoint."""
from __future__ import annotations

import argparse

from export.api import ALL, FORMATS, export_model


def add_export_parser(subparsers) -> None:
    choices = "|".join(FORMATS + (ALL,))
    p = subparsers.add_parser(
        "export", help="export a checkpoint for a device: ONNX, TFLite, LCE, SCAMP-5 weight text",
        description="Export a checkpoint into a bundle folder: the chosen formats, sensor_weights.npz and "
                    "manifest.json (sha256 of every file, classes, preprocessing, versions). Written "
                    "all or nothing: on any error the output folder is left as it was.")
    p.add_argument("--weights", required=True, metavar="CKPT",
                   help="checkpoint (.pt): ours or the authors' state dict")
    p.add_argument("--format", dest="formats", action="append", metavar=choices,
                   help="format to export; repeat the flag or give a comma list, e.g. "
                        "--format onnx,scamp5 (default onnx; all = every format)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="bundle folder to create (its parent must exist); an existing one must be "
                        "empty or hold a previous bundle")
    p.add_argument("--int8", action="store_true",
                   help="also write host_int8.tflite, the TFLite decoder int8-quantized (tflite only; "
                        "any readout layout and head)")
    p.add_argument("--representative", default=None, metavar="FILE.npz",
                   help="with --int8: calibration readouts of this model's sensor program, 'readouts' or "
                        "'readout' (N,64,64) or SCAMP-5 (N,256,256) for the authors' readout, the layout's "
                        "levels (N,M,S,S) for another (pixelrnn simulate --readout-only writes them), "
                        "or clips frames (N,16,64,64) run through the simulator")
    p.add_argument("--no-full-graph", dest="full_graph", action="store_false",
                   help="onnx: leave out pixelrnn.onnx (frames -> logits in one graph; sensor.onnx then host.onnx "
                        "compute the same): a smaller bundle when the decoder is large")
    p.set_defaults(func=run_export)


def split_formats(values: list[str] | None) -> list[str]:
    """``--format`` values (repeated and/or comma lists) -> names, unvalidated (export_model checks)."""
    if not values:
        return ["onnx"]
    return [name for value in values for name in value.split(",")]


def run_export(args: argparse.Namespace) -> int:
    result = export_model(weights=args.weights, out=args.out, formats=split_formats(args.formats),
                          int8=args.int8, representative=args.representative, full_graph=args.full_graph)
    for name, size in result.files.items():
        print(f"  {name:<28s} {size / 1024:10.1f} KB")
    for name, why in result.skipped.items():
        print(f"  skipped {name}: {why}")
    total = sum(result.files.values())
    print(f"exported {', '.join(result.formats)} to {result.out}: {len(result.files)} files, "
          f"{total / 1024:.1f} KB in {result.seconds:.2f} s")
    return 0
