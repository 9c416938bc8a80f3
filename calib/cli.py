"""``pixelrnn calib decoder|noise|int8``: calibrate to a real sensor and to int8 (see calib/__init__)."""
from __future__ import annotations

import argparse
import os


def float_list(text: str) -> tuple[float, ...]:
    """``"0.5,1,2"`` -> (0.5, 1.0, 2.0), or an argparse error naming the bad item."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}")
    try:
        return tuple(float(t) for t in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None


def add_calib_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calib", help="calibrate to a real sensor (decoder, noise model) and to int8",
        description="Calibration to a physical sensor's readouts: fit the off-sensor decoder (decoder), "
                    "fit the simulator's noise model (noise), quantize a bundle's host decoder to int8 (int8).")
    sub = p.add_subparsers(dest="calib_command", metavar="{decoder,noise,int8}")
    sub.required = True

    d = sub.add_parser("decoder", help="fit the decoder to real readouts (cross-validated); sensor weights fixed",
                       description="Fit the off-sensor decoder to labelled real readouts by shrinkage LDA; report "
                                   "held-out accuracy by stratified k-fold CV for the simulation decoder, ours "
                                   "and an optional reference decoder on the same folds; save a checkpoint "
                                   "whose decoder is fitted on all readouts.")
    d.add_argument("--weights", required=True, help="checkpoint whose sensor weights ran on the chip (.pt)")
    d.add_argument("--readouts", required=True, metavar="R.npz",
                   help="readouts (N,64,64) or SCAMP-5 (N,256,256) uint8, and labels (N,)")
    d.add_argument("--out", required=True, metavar="CKPT", help="output checkpoint (.pt, written atomically)")
    d.add_argument("--reference", default=None, metavar="CKPT",
                   help="also score this checkpoint's decoder on the same folds (e.g. cam_noise_finetuned.pt)")
    d.add_argument("--folds", type=int, default=5, help="stratified CV folds (default 5)")
    d.add_argument("--seed", type=int, default=0, help="fold and inner-split seed (default 0)")
    d.add_argument("--scales", type=float_list, default=(0.05, 0.1, 0.2, 0.4),
                   help="candidate feature scales a in tanh(a*o) (default 0.05,0.1,0.2,0.4)")
    d.add_argument("--shrinkages", type=float_list, default=(0.1, 0.3, 0.5, 0.7),
                   help="candidate LDA shrinkages in (0,1] (default 0.1,0.3,0.5,0.7)")
    d.add_argument("--val-fraction", type=float, default=0.2,
                   help="inner validation share of the training readouts (default 0.2)")
    d.add_argument("--recipe-baseline", action="store_true",
                   help="also refit the authors' recipe (Adam fine-tuning) on each fold's training readouts")
    d.add_argument("--exclude-fold", type=int, default=None, metavar="K",
                   help="fit the saved decoder without fold K (keeps K unseen, e.g. for calib int8)")
    d.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    d.set_defaults(func=run_decoder)

    n = sub.add_parser("noise", help="fit the simulator's noise model to real readouts; write a calibration JSON",
                       description="Compare simulated readouts of CLIPS with real readouts (distributions: "
                                   "per-pixel W1, offsets, spread, saturation), fit conv/gate/output noise, "
                                   "output gain and a per-pixel offset map, and write a calibration file for "
                                   "--noise FILE plus before/after PNGs next to it.")
    n.add_argument("--weights", required=True, help="checkpoint whose sensor weights ran on the chip (.pt)")
    n.add_argument("--readouts", required=True, metavar="R.npz", help="real readouts (N,64,64) or (N,256,256) uint8")
    n.add_argument("--clips", required=True, metavar="CLIPS.npz",
                   help="clips of the same task to simulate: frames (N,16,64,64) uint8 (labels stratify the split)")
    n.add_argument("--out", required=True, metavar="NOISE.json", help="calibration file to write (atomically)")
    n.add_argument("--seed", type=int, default=0, help="split, simulation and search seed (default 0)")
    n.add_argument("--conv-sigmas", type=float_list, default=None, help="grid for conv_sigma (default 0.6,1,1.5,2,3)")
    n.add_argument("--gate-sigmas", type=float_list, default=None, help="grid for gate_sigma (default 0.6,1,1.5,2,3)")
    n.add_argument("--gains", type=float_list, default=None, help="grid for out_gain (default 0.5..1.2)")
    n.add_argument("--out-sigmas", type=float_list, default=None, help="grid for out_sigma (default 0..4)")
    n.add_argument("--no-offset-map", action="store_true", help="fit no per-pixel offset map")
    n.add_argument("--no-holdout", action="store_true",
                   help="skip the held-out (cross-fitted halves) distance; report it in sample only")
    n.add_argument("--no-plots", action="store_true", help="write no PNGs")
    n.set_defaults(func=run_noise)

    q = sub.add_parser("int8", help="static int8 quantization of a bundle's host decoder on real readouts",
                       description="Quantize host.onnx (onnxruntime quantize_static, QDQ) and the TFLite host "
                                   "decoder (representative dataset) to int8, calibrated on the training folds "
                                   "of real readouts; report accuracy on the held-out fold, sizes and latency; "
                                   "add host_int8.onnx / host_int8.tflite to the bundle and its manifest.")
    q.add_argument("--bundle", required=True, metavar="DIR", help="export bundle folder (pixelrnn export)")
    q.add_argument("--readouts", required=True, metavar="R.npz",
                   help="real readouts (N,64,64) or (N,256,256) uint8, and labels (N,)")
    q.add_argument("--folds", type=int, default=5, help="stratified folds, as in calib decoder (default 5)")
    q.add_argument("--holdout-fold", type=int, default=0, help="fold scored; the others calibrate (default 0)")
    q.add_argument("--seed", type=int, default=0, help="fold seed (default 0)")
    q.add_argument("--no-tflite", action="store_true", help="quantize the ONNX graph only (no TensorFlow needed)")
    q.add_argument("--runs", type=int, default=300, help="timed inferences per graph (default 300)")
    q.add_argument("--warmup", type=int, default=20, help="untimed warm-up inferences (default 20)")
    q.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    q.set_defaults(func=run_int8)


def _write_json(path: str | None, data: dict) -> None:
    if path:
        from core.atomic import write_json_atomic
        write_json_atomic(path, data)
        print(f"wrote {path}")


def run_decoder(args: argparse.Namespace) -> int:
    from calib.decoder import DecoderOptions, calibrate_decoder, format_decoder_report

    options = DecoderOptions(folds=args.folds, seed=args.seed, scales=args.scales, shrinkages=args.shrinkages,
                             val_fraction=args.val_fraction, finetune_baseline=args.recipe_baseline)
    report = calibrate_decoder(weights=args.weights, readouts=args.readouts, out=args.out,
                               reference=args.reference, options=options, exclude_fold=args.exclude_fold,
                               progress=True)
    print(format_decoder_report(report))
    print(f"wrote {args.out}")
    _write_json(args.json_out, report.to_dict())
    return 0


def run_noise(args: argparse.Namespace) -> int:
    from calib.noise import NoiseFitOptions, calibrate_noise, format_noise_report

    grids = {k: v for k, v in (("conv_sigmas", args.conv_sigmas), ("gate_sigmas", args.gate_sigmas),
                               ("gains", args.gains), ("out_sigmas", args.out_sigmas)) if v is not None}
    options = NoiseFitOptions(**grids, offset_map=not args.no_offset_map, holdout=not args.no_holdout,
                              seed=args.seed)
    report = calibrate_noise(weights=args.weights, readouts=args.readouts, clips=args.clips, out=args.out,
                             options=options, progress=True, plots=not args.no_plots)
    print(format_noise_report(report))
    return 0


def run_int8(args: argparse.Namespace) -> int:
    from calib.int8 import Int8Options, format_int8_report, quantize_bundle

    if not args.no_tflite:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's C++ start-up chatter
    options = Int8Options(folds=args.folds, holdout_fold=args.holdout_fold, seed=args.seed,
                          tflite=not args.no_tflite, runs=args.runs, warmup=args.warmup)
    report = quantize_bundle(bundle=args.bundle, readouts=args.readouts, options=options)
    print(format_int8_report(report))
    for rt in ("onnx", "tflite"):
        if rt in report and abs(report[rt]["accuracy_change_points"]) > 1.0:
            print(f"note: {rt} int8 accuracy differs from float by {report[rt]['accuracy_change_points']:+.2f} points")
    print(f"updated {args.bundle}/manifest.json")
    _write_json(args.json_out, report)
    return 0

