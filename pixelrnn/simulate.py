"""``pixelrnn simulate``: run the sensor program (firmware_sim) on clips and write every stage to an
.npz, plus the logits of the model's off-sensor decoder (PyTorch, so this command lives here).

Clips stream through in chunks (:func:`stream_logits`): frames are read from the input archive a
chunk at a time and outputs are spooled to disk (:class:`core.npz.NpzWriter`), so peak memory does
not grow with the number of clips (docs/BENCHMARKS.md, "simulate and evaluate memory (issue 16)")."""
from __future__ import annotations

import argparse
import time

import numpy as np

from core.errors import InputError
from core.npz import NpzWriter
from firmware_sim import fast
from firmware_sim.clips import ClipStream, open_clips
from firmware_sim.noise import NoiseModel, noise_arg
from firmware_sim.simulate import PATHS, chunk_multiple, simulate

CHUNK_CLIPS = 128          # clips in memory at a time: 8 MiB of frames (16 x 64 x 64 uint8 each)
STAGE_CHUNK_CLIPS = 16     # with every stage: the analog conv stage alone is 4 MiB (float32) per clip


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


def stream_logits(*, model, weights, clips: ClipStream, path: str = "fast", noise: NoiseModel | None = None,
                  seed: int = 0, binarized_input: bool = False, stages: tuple[str, ...] = (),
                  chunk: int = CHUNK_CLIPS, source: str = "the model", desc: str = "simulate"):
    """Yield ``(SensorResult, logits)`` for consecutive chunks of ``clips``: the sensor program
    (firmware_sim), then the model's off-sensor decoder, one chunk of frames in memory at a time.
    One noise Generator runs through all chunks, so the results equal one run on every clip.
    NaN or infinite logits are refused (:func:`check_logits`). A progress bar on a terminal."""
    import torch
    from tqdm import tqdm

    multiple = chunk_multiple(path)
    chunk = max(multiple, chunk // multiple * multiple)         # chunk edges where the draws are cut anyway
    rng = np.random.default_rng(seed)
    with tqdm(total=clips.n, desc=desc, unit="clip", leave=False, disable=None) as bar:
        for frames in clips.chunks(chunk):
            result = simulate(weights=weights, frames=frames, binarized_input=binarized_input, noise=noise,
                              path=path, stages=stages, rng=rng)
            with torch.no_grad():
                logits = model.decode(torch.from_numpy(result.readout)).numpy().astype(np.float32)
            check_logits(logits, source=source)
            bar.update(len(frames))
            yield result, logits


def run_simulate(args: argparse.Namespace) -> int:
    from pixelrnn.checkpoint import load_model  # the decoder (logits) is the model's, off-sensor

    model = load_model(args.weights)
    weights = model.sensor_weights()
    args.noise.check_program(weights.program_hash())
    stages = () if args.readout_only else fast.STAGES
    chunk = CHUNK_CLIPS if args.readout_only else STAGE_CHUNK_CLIPS
    correct = 0
    t0 = time.perf_counter()
    with open_clips(args.clips, timesteps=weights.timesteps, num_classes=model.config.num_classes) as clips, \
            NpzWriter(args.out) as out:
        done = 0
        for result, logits in stream_logits(model=model, weights=weights, clips=clips, path=args.path,
                                            noise=args.noise, seed=args.seed, binarized_input=args.binarized_input,
                                            stages=stages, chunk=chunk, source=str(args.weights)):
            pred = logits.argmax(1).astype(np.int64)
            for name in stages:
                out.append(name, result.stages[name])
            out.append("readout", result.readout)
            out.append("logits", logits)
            out.append("pred", pred)
            if clips.labels is not None:
                correct += int((pred == clips.labels[done:done + len(pred)]).sum())
            done += len(pred)
        elapsed = time.perf_counter() - t0
        out.add("program_hash", np.array(weights.program_hash()))   # calib refuses another program's readouts
        if clips.labels is not None:
            out.add("labels", clips.labels)
        if clips.names is not None:
            out.add("names", clips.names)
        n, t = clips.shape[:2]
        labelled = clips.labels is not None
    print(f"simulated {n} clips x {t} frames ({args.path} path) in {elapsed:.2f} s "
          f"({n * t / max(elapsed, 1e-9):.0f} frames/s); wrote {args.out}")
    if labelled:
        print(f"accuracy {correct / n:.4f}")
    return 0
