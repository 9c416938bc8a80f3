"""Peak memory of ``pixelrnn simulate`` and ``pixelrnn evaluate`` as the number of clips grows
(issue 16: "simulate and evaluate stream their clips"; goal <= 700 MB for 2,000 clips with
``--readout-only``, and peak memory within the input array plus a constant).

    python benchmarks/sim_memory.py [--clips 2000,5000] [--stages-clips 500] [--write docs/BENCHMARKS.md]

Clip files are made from the real GRID clips (``$PIXELRNN_DATA/grid_s1_digits.npz``, tiled to N
clips) in a temp folder; the model is ``configs/init/lips_v1.pt``. Each command runs as its own
process, and its peak resident set size is read by a small parent process
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). In the same run, for comparison:

* **constant**: a process that only imports the package and loads the model (PyTorch is most of it);
* **in memory**: the same work done the way simulate did it before streaming (all frames loaded,
  simulated in one call, all outputs kept, then written): the baseline of the ratios.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, update_section  # noqa: E402
from edge.tables import markdown_table  # noqa: E402

CHECKPOINT = REPO / "configs" / "init" / "lips_v1.pt"
CLI = "import sys; from core.cli import main; sys.exit(main(sys.argv[1:]))"
PROBE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
CONSTANT = "import sys; from pixelrnn.checkpoint import load_model; load_model(sys.argv[1]).sensor_weights()"
# Before streaming: load every frame, simulate in one call, keep every output, then write.
IN_MEMORY = """
import sys, numpy as np, torch
from firmware_sim import fast
from firmware_sim.clips import load_clips, save_npz_atomic
from firmware_sim.simulate import simulate
from pixelrnn.checkpoint import load_model
ckpt, clips, out, stages = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "stages"
model = load_model(ckpt); w = model.sensor_weights()
c = load_clips(clips, timesteps=w.timesteps)
r = simulate(weights=w, frames=c.frames, seed=0, stages=fast.STAGES if stages else ())
with torch.no_grad():
    logits = model.decode(torch.from_numpy(r.readout)).numpy().astype(np.float32)
arrays = dict(r.stages); arrays.update(readout=r.readout, logits=logits, pred=logits.argmax(1))
save_npz_atomic(out, arrays)
"""


def peak_mb(args: list[str]) -> float:
    """Peak RSS (MB, 10^6 bytes) of one process running ``args``."""
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return int(out.stdout.strip().splitlines()[-1]) * 1024 / 1e6


def make_clips(n: int, folder: Path, data: Path) -> Path:
    path = folder / f"clips{n}.npz"
    with np.load(data, allow_pickle=False) as d:
        idx = np.arange(n) % len(d["labels"])
        np.savez(path, frames=d["frames"][idx], labels=d["labels"][idx])
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", default="2000,5000", help="clip counts for --readout-only and evaluate")
    p.add_argument("--stages-clips", type=int, default=500, help="clip count for the run with every stage")
    p.add_argument("--write", type=Path, default=None, help="update this markdown file's section")
    args = p.parse_args()
    data = Path(os.environ.get("PIXELRNN_DATA", REPO.parent / "shared" / "data")) / "grid_s1_digits.npz"
    if not data.is_file():
        print(f"sim_memory: needs the GRID clips at {data} (set PIXELRNN_DATA)", file=sys.stderr)
        return 2
    counts = [int(v) for v in args.clips.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(dir=REPO / "runs") as tmp:
        tmp = Path(tmp)
        constant = peak_mb([sys.executable, "-c", CONSTANT, str(CHECKPOINT)])
        plan = [(n, "readout-only") for n in counts] + [(n, "evaluate") for n in counts]
        plan.append((args.stages_clips, "every stage"))
        for n, mode in plan:
            clips = make_clips(n, tmp, data)
            input_mb = n * 16 * 64 * 64 / 1e6
            out = tmp / "out.npz"
            if mode == "evaluate":
                cmd = ["evaluate", "--weights", str(CHECKPOINT), "--clips", str(clips)]
                base = None
            else:
                cmd = ["simulate", "--weights", str(CHECKPOINT), "--clips", str(clips), "--out", str(out)]
                cmd += ["--readout-only"] if mode == "readout-only" else []
                base = peak_mb([sys.executable, "-c", IN_MEMORY, str(CHECKPOINT), str(clips), str(out),
                                "stages" if mode == "every stage" else "readout"])
            streamed = peak_mb([sys.executable, "-c", CLI, *cmd])
            command = "simulate --readout-only" if mode == "readout-only" else (
                "evaluate" if mode == "evaluate" else "simulate (every stage)")
            rows.append([command, f"{n:,}", f"{input_mb:.0f}", f"{streamed:.0f}", f"{streamed - constant:+.0f}",
                         "-" if base is None else f"{base:.0f}",
                         "-" if base is None else f"{streamed / base:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
            clips.unlink()
    date = datetime.date.today().isoformat()
    text = (f"Command: `python benchmarks/sim_memory.py --clips {args.clips} --stages-clips {args.stages_clips}"
            f"{' --write ' + str(args.write) if args.write else ''}`; machine: {cpu_name()} "
            f"({os.cpu_count()} cores), Python {platform.python_version()}; date {date}. GRID clips tiled to N; "
            f"model `configs/init/lips_v1.pt`; peak RSS of the whole process in MB (10^6 bytes). "
            f"Constant (import the package and load the model, nothing simulated): {constant:.0f} MB. "
            "\"In memory\": the same work with every frame and output held at once, as simulate did "
            "before streaming (the ratio's baseline, same run).\n\n")
    text += "\n".join(markdown_table(["command", "clips", "input MB", "peak MB (streamed)", "over the constant",
                                      "peak MB (in memory)", "streamed / in memory"], rows))
    print(text)
    if args.write:
        update_section(args.write, "sim_memory", text, heading="simulate and evaluate memory (issue 16)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
