"""``pixelrnn simulate``: run the sensor program (firmware_sim) on clips and write every stage to an
.npz, plus the logits of the model's off-sensor decoder (PyTorch, so this command lives here)."""
from __future__ import annotations

import argparse
import time

import numpy as np

from core.errors import InputError
from firmware_sim.clips import load_clips, save_npz_atomic
from firmware_sim.noise import NoiseModel, noise_arg
from firmware_sim.simulate import PATHS, simulate


def check_logits(logits: np.ndarray, *, source: str) -> None:
    """Refuse NaN or infinite decoder outputs (a damaged model) instead of writing them."""
    bad = ~np.isfinite(logits)
    if bad.any():
        raise InputError(f"the decoder of {source} produced {int(bad.sum())} NaN or infinite logits: "
                         "the weights are damaged (retrain or use another checkpoint)")


def add_simulate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="run the sensor program on clips; write all stages, readout, logits",
        description="Run the PixelRNN sensor program on clips (frames (N,16,64,64) uint8) and write, "
                    "for every clip and frame, the stages in the reference intermediates' names and "
                    "8-bit encodings, plus readout, logits and pred.")
    p.add_argument("--weights", required=True, help="checkpoint (.pt): ours or the authors' state dict")
    p.add_argument("--clips", required=True, help=".npz with frames (N,16,64,64) uint8")
    p.add_argument("--out", required=True, help="output .npz (written atomically)")
    p.add_argument("--path", choices=PATHS, default="fast",
                   help="fast (vectorized: table look-ups on bit patterns, firmware_sim.packed) or "
                        "instruction (array-instruction level); identical results")
    p.add_argument("--binarized-input", action="store_true",
                   help="frames are already binary maps (0/255): skip the input binarization")
    p.add_argument("--noise", type=noise_arg, default=NoiseModel.off(), metavar="off|authors|FILE",
                   help="analog noise: off (default), authors (0.6/0.6/1.0 MAC), or a calibration JSON")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--readout-only", action="store_true",
                   help="write only readout, logits, pred, program_hash (and labels, names): no per-frame stages, "
                        "a far smaller file")
    p.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    import torch

    from pixelrnn.checkpoint import load_model  # the decoder (logits) is the model's, off-sensor

    model = load_model(args.weights)
    weights = model.sensor_weights()
    args.noise.check_program(weights.program_hash())
    clips = load_clips(args.clips, timesteps=weights.timesteps, num_classes=model.config.num_classes)
    t0 = time.perf_counter()
    result = simulate(weights=weights, frames=clips.frames, binarized_input=args.binarized_input,
                      noise=args.noise, seed=args.seed, path=args.path,
                      **({"stages": ()} if args.readout_only else {}))
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        logits = model.decode(torch.from_numpy(result.readout)).numpy().astype(np.float32)
    check_logits(logits, source=str(args.weights))
    arrays = dict(result.stages)
    arrays.update(readout=result.readout, logits=logits, pred=logits.argmax(1).astype(np.int64),
                  program_hash=np.array(weights.program_hash()))   # calib refuses another program's readouts
    if clips.labels is not None:
        arrays["labels"] = clips.labels
    if clips.names is not None:
        arrays["names"] = clips.names
    save_npz_atomic(args.out, arrays)
    n, t = clips.frames.shape[:2]
    print(f"simulated {n} clips x {t} frames ({args.path} path) in {elapsed:.2f} s "
          f"({n * t / max(elapsed, 1e-9):.0f} frames/s); wrote {args.out}")
    if clips.labels is not None:
        print(f"accuracy {float((arrays['pred'] == clips.labels).mean()):.4f}")
    return 0
