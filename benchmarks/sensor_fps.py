"""Sensor-stage throughput on one core, side by side in one run: the packed path (the default
``--path fast``) through the API and through the CLI, the old numpy fast path, the streaming
path, the instruction-level path, and a plain float PyTorch forward of the same sensor stage.

    python benchmarks/sensor_fps.py [--clips 32] [--repeats 7] [--cli-clips 256] [--write docs/BENCHMARKS.md]

CLI: ``pixelrnn simulate --path fast --readout-only`` on a random model's checkpoint, as whole
processes; its rate is the marginal one, (frames of --cli-clips clips - frames of 4 clips) / (time
of the first run - time of the second), so start-up (imports, model load) cancels and npz reading,
the front end, the sensor stage, the decoder's logits and the npz writing are all counted.
Reports medians over repeats (machines here are shared and noisy) and the ratios, plus the
instruction count, estimated sensor time and energy per frame of the sensor program.
"""
from __future__ import annotations

import os
import sys

# One core: pin the BLAS / OpenMP pools before numpy and torch are imported.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, update_section  # noqa: E402
from edge.tables import markdown_table  # noqa: E402
from firmware_sim import fast, packed  # noqa: E402
from firmware_sim.simulate import simulate  # noqa: E402
from firmware_sim.weights import SensorWeights  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cli_time(checkpoint: Path, clips: Path, out: Path) -> float:
    """Wall time of one ``pixelrnn simulate --path fast --readout-only`` process."""
    cmd = [sys.executable, "-c", "import sys; from core.cli import main; sys.exit(main(sys.argv[1:]))",
           "simulate", "--weights", str(checkpoint), "--clips", str(clips), "--out", str(out),
           "--path", "fast", "--readout-only"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env=os.environ.copy())
    return time.perf_counter() - t0


def cli_rate(model, repeats: int, big: int, small: int = 4) -> tuple[float, float]:
    """Marginal frames/s of the CLI (see the module docstring) and its median time for ``big`` clips."""
    from pixelrnn.checkpoint import save_checkpoint

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = save_checkpoint(model, tmp / "model.pt")
        files = {}
        for n in (big, small):
            files[n] = tmp / f"clips{n}.npz"
            np.savez(files[n], frames=rng.integers(0, 256, size=(n, 16, 64, 64), dtype=np.uint8),
                     labels=rng.integers(0, 9, size=n))
        cli_time(ckpt, files[small], tmp / "out.npz")               # warm-up (file cache)
        diffs, bigs = [], []
        for _ in range(repeats):
            t_big = cli_time(ckpt, files[big], tmp / "out.npz")
            t_small = cli_time(ckpt, files[small], tmp / "out.npz")
            diffs.append(t_big - t_small)
            bigs.append(t_big)
    return (big - small) * 16 / statistics.median(diffs), statistics.median(bigs)


def _verdict(value: float, goal: float) -> str:
    """'met', or how far short of ``goal`` ``value`` is, in percent."""
    return "met" if value >= goal else f"not met: {100 * (1 - value / goal):.1f}% short"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="clips per batch (16 frames each)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    parser.add_argument("--cli-clips", type=int, default=256, help="clips of the larger CLI run (0: skip the CLI)")
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file's section")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.repeats < 1:
        parser.error("--clips and --repeats must be >= 1")

    import torch

    from pixelrnn.model import ModelConfig, PixelRNN
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=9)).eval()
    weights: SensorWeights = model.sensor_weights()
    frames = rng.integers(0, 256, size=(args.clips, 16, 64, 64), dtype=np.uint8)
    binary = weights.frontend.binarize(frames)
    n_frames = args.clips * 16

    rows = []
    t_api = median_time(lambda: packed.run_clips(binary, weights), args.repeats)
    rows.append(("packed path, API (`packed.run_clips`, batch of %d clips)" % args.clips, n_frames / t_api))
    t_sim = median_time(lambda: simulate(weights=weights, frames=frames, stages=()), args.repeats)
    rows.append(("packed path, API with front end (`simulate(..., stages=())` on uint8 frames)",
                 n_frames / t_sim))
    cli_fps = None
    if args.cli_clips:
        cli_fps, cli_big = cli_rate(model, max(3, args.repeats // 2), args.cli_clips)
        rows.append((f"packed path, CLI `pixelrnn simulate --path fast --readout-only` (marginal, "
                     f"{args.cli_clips} - 4 clips; {args.cli_clips} clips took {cli_big:.2f} s in all)", cli_fps))
    t_fast = median_time(lambda: fast.run_clips(binary, weights), args.repeats)
    rows.append(("old fast path (`fast.run_clips`, numpy im2col float32 GEMM)", n_frames / t_fast))

    one_clip = binary[0]
    stream = packed.PackedStream(weights)
    t_packed_stream = median_time(lambda: [stream.push(f) for f in one_clip], args.repeats)
    rows.append(("packed path, streaming (`packed.PackedStream`, one frame at a time: the camera loop's)",
                 16 / t_packed_stream))
    stream = fast.SensorStream(weights)
    t_stream = median_time(lambda: [stream.push(f) for f in one_clip], args.repeats)
    rows.append(("old fast path, streaming (`fast.SensorStream`, one frame at a time)", 16 / t_stream))

    tb = torch.from_numpy(binary.astype(np.float32))
    with torch.no_grad():
        t_torch = median_time(lambda: model.sensor(tb), args.repeats)
    rows.append(("PyTorch float forward of the sensor stage (batch, 1 thread)", n_frames / t_torch))

    cost = None
    try:
        from firmware_sim import program
        t_instr = median_time(lambda: program.run_clips_instruction(binary[:1], weights),
                              max(1, args.repeats // 3))
        rows.append(("instruction-level path (1 clip)", 16 / t_instr))
        cost = program.frame_cost(weights)
    except ImportError:
        pass

    torch_fps = n_frames / t_torch
    api_fps = n_frames / t_api
    blas = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    lines = [
        f"Command: `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/sensor_fps.py --clips {args.clips} "
        f"--repeats {args.repeats} --cli-clips {args.cli_clips} --write docs/BENCHMARKS.md`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores (1 thread used), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__}; OPENBLAS_CORETYPE={blas['OPENBLAS_CORETYPE']}, "
        f"OPENBLAS_L2_SIZE={blas['OPENBLAS_L2_SIZE']}  ",
        f"Date: {datetime.date.today().isoformat()}; medians of {args.repeats} runs, a random model's "
        f"weights and random 64x64 frames, noise off.",
        "",
        *markdown_table(("path", "frames/s", "/ PyTorch"),
                        ((name, f"{value:,.0f}", f"{value / torch_fps:.1f}x") for name, value in rows),
                        align="lrr"),
        "",
        f"Goals (issue 17): >= 10,000 frames/s on one core and >= 10x the float PyTorch forward. "
        f"API: {api_fps:,.0f} frames/s ({_verdict(api_fps, 10_000)}), **{api_fps / torch_fps:.1f}x** "
        f"PyTorch ({_verdict(api_fps / torch_fps, 10)}), {api_fps * t_fast / n_frames:.1f}x the old fast path."
        + (f" CLI (marginal): {cli_fps:,.0f} frames/s ({_verdict(cli_fps, 10_000)}), "
           f"**{cli_fps / torch_fps:.1f}x** PyTorch ({_verdict(cli_fps / torch_fps, 10)})." if cli_fps else "")
        + f" Camera loop's stream: {1e3 * t_packed_stream / 16:.3f} ms per frame, "
          f"{t_stream / t_packed_stream:.1f}x the old fast path's stream.",
    ]
    if cost is not None:
        full = cost["energy_uj"] * (256 * 256) / (64 * 64)
        lines += ["", "Sensor program cost per frame (instruction-level program, `firmware_sim.program."
                  "frame_cost`; one array instruction = one 10 MHz cycle; 1.9 pJ per element per "
                  "instruction; see docs/MODEL.md):", "",
                  f"- instructions: {cost['instructions']:,} (by kind: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(cost.get('per_kind', {}).items(),
                                                            key=lambda kv: -kv[1])) + ")",
                  f"- estimated time: {cost['time_us']:.1f} us/frame "
                  f"({1e6 / cost['time_us']:,.0f} frames/s possible on the array)",
                  f"- estimated energy: {cost['energy_uj']:.2f} uJ/frame on the 64x64 elements the "
                  f"program uses; {full:.1f} uJ/frame if all 256x256 SCAMP-5 elements are clocked"]
    block = "\n".join(lines)
    print(block)
    if args.write:
        update_section(args.write, "sensor_fps", block, heading="Sensor stage throughput (issue 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
