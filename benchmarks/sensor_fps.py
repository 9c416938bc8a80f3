"""Sensor-stage throughput on one core: fast path, streaming fast path, instruction-level path, and a
plain float PyTorch forward of the same sensor stage, measured side by side in one run.

    python benchmarks/sensor_fps.py [--clips 32] [--repeats 7] [--write docs/BENCHMARKS.md]

Reports medians over repeats (machines here are shared and noisy) and the ratio fast / PyTorch,
plus the instruction count, estimated sensor time and energy per frame of the sensor program.
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
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_sim import fast  # noqa: E402
from firmware_sim.weights import SensorWeights  # noqa: E402
from benchmarks._common import cpu_name, update_section  # noqa: E402



def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="clips per batch (16 frames each)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
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
    t_fast = median_time(lambda: fast.run_clips(binary, weights), args.repeats)
    rows.append(("fast path (numpy, batch of %d clips)" % args.clips, n_frames / t_fast))

    stream = fast.SensorStream(weights)
    one_clip = binary[0]
    t_stream = median_time(lambda: [stream.push(f) for f in one_clip], args.repeats)
    rows.append(("fast path, streaming (one frame at a time)", 16 / t_stream))

    tb = torch.from_numpy(binary.astype(np.float32))
    with torch.no_grad():
        t_torch = median_time(lambda: model.sensor(tb), args.repeats)
    rows.append(("PyTorch float forward of the sensor stage (batch)", n_frames / t_torch))

    cost = None
    try:
        from firmware_sim import program
        t_instr = median_time(lambda: program.run_clips_instruction(binary[:1], weights),
                              max(1, args.repeats // 3))
        rows.append(("instruction-level path (1 clip)", 16 / t_instr))
        cost = program.frame_cost(weights)
    except ImportError:
        pass

    fps = dict(rows)
    lines = [
        f"Command: `python benchmarks/sensor_fps.py --clips {args.clips} --repeats {args.repeats}"
        f" --write docs/BENCHMARKS.md`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores (1 thread used), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__}  ",
        f"Date: {datetime.date.today().isoformat()}; medians of {args.repeats} runs, random weights and "
        f"random 64x64 frames, noise off.",
        "",
        "| path | frames/s |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value:,.0f} |" for name, value in rows]
    ratio = fps[rows[0][0]] / fps[rows[2][0]]
    lines += ["", f"Fast path / PyTorch forward: **{ratio:.1f}x** (goal >= 10x); fast path "
              f"{fps[rows[0][0]]:,.0f} frames/s (goal >= 3,000)."]
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
