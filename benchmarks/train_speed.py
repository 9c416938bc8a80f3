"""Training speed: ``pixelrnn train`` against a plain eager PyTorch loop of the same network, in one run.

    python benchmarks/train_speed.py [--epochs 3] [--rounds 2] [--profile] [--device cpu|cuda]
                                     [--write docs/BENCHMARKS.md]

Both on GRID (``grid_s1_digits.npz`` under $PIXELRNN_DATA or ../shared/data), the first 320 training
clips, batch 32, noise on (the authors' sigmas), ``torch.set_num_threads(2)``, on the CPU or, with
``--device cuda``, on the GPU (both loops there; the section written is then ``train_speed_gpu``).

* eager loop: the network written plainly in this file (the pre-issue-13 forward: ``F.conv2d``,
  relu, ``F.max_pool2d``, the step-by-step recurrence, noise from ``torch.randn``), cross-entropy,
  backward, Adam step; no augmentation, no validation, no checkpoints;
* ``pixelrnn train``: the real command (parsed by its own argument parser, run in this process),
  with augmentation, per-clip noise streams, validation on the 100 validation clips after every
  epoch, checkpoints and metrics. Its rate counts training plus validation time (``seconds`` +
  ``val_seconds`` of every epoch in metrics.json); the first epoch (warm-up) is left out. On a CPU
  where numba is installed it runs twice per round: as a user gets it (the numba kernels of
  ``pixelrnn.cpu_kernels``) and with ``PIXELRNN_KERNELS=torch`` (the PyTorch path), so the table
  shows what the kernels add on the same load.

The machines here are shared: the two are run in alternation (``--rounds``) and the medians
reported, so both see the same load. ``--profile`` adds torch.profiler's top ops of one training
step (batch 32) of each.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, update_section  # noqa: E402
from pixelrnn.data import default_data_dir, load_dataset, split  # noqa: E402
from pixelrnn.quantizers import get_quantizer  # noqa: E402

CLIPS, BATCH, THREADS = 320, 32, 2
SIGMAS = (0.6, 0.6, 1.0)


class EagerPixelRNN(nn.Module):
    """The same network, written plainly (as pixelrnn/model.py was before issue 13)."""

    def __init__(self, classes: int, mean: float, std: float) -> None:
        super().__init__()
        self.q = get_quantizer("tanh_mx", m=2.0)
        self.mean, self.std = mean, std
        u = lambda *shape: nn.Parameter(torch.empty(*shape).uniform_(-1, 1))  # noqa: E731
        self.conv1, self.thresh1 = u(16, 1, 5, 5), nn.Parameter(torch.ones(1))
        self.w_fi, self.w_fh, self.w_oi, self.w_oh = (u(1, 1, 5, 5) for _ in range(4))
        self.rnn_threshold, self.theta0 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
        self.fin_conv, self.bn = nn.Parameter(torch.ones(1, 1, 1, 1)), nn.BatchNorm2d(1)
        self.thresh3 = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(64 * 64, classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        q, (s_conv, s_gate, s_out) = self.q, SIGMAS
        b, t, h, w = frames.shape
        x0 = q((frames.float() / 255.0 - self.mean) / self.std - self.theta0)
        conv = F.conv2d(x0.reshape(b * t, 1, h, w), q(self.conv1), padding=2)
        pooled = F.max_pool2d(F.relu(conv), 4)
        x = q(pooled + torch.randn_like(pooled) * s_conv - self.thresh1)
        x = x.reshape(b * t, 4, 4, 16, 16).permute(0, 2, 3, 1, 4).reshape(b * t, 1, h, w)
        xi = F.conv2d(x, torch.cat([q(self.w_fi), q(self.w_oi)]), padding=2).reshape(b, t, 2, h, w)
        w_h = torch.cat([q(self.w_fh), q(self.w_oh)])
        hidden = torch.ones(b, 1, h, w, device=frames.device)
        for step in range(t):
            hh = F.conv2d(hidden, w_h, padding=2)
            gate = q(xi[:, step, 0:1] + hh[:, 0:1] + torch.randn_like(hidden) * s_gate - self.rnn_threshold)
            if step == t - 1:
                out = xi[:, step, 1:2] + hh[:, 1:2] + torch.randn_like(hidden) * s_out
            hidden = gate * hidden
        level = 127 + 10 * out
        o = ((level + (torch.clamp(torch.floor(level), 0, 255) - level).detach()) - 127) / 10
        y = torch.tanh(self.bn(o * q(self.fin_conv))) - self.thresh3
        return self.fc(y.flatten(1))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def eager_epochs(frames: np.ndarray, labels: np.ndarray, classes: int, epochs: int, *, profile: bool = False,
                 device: str = "cpu"):
    """clips/s of the plain loop over ``epochs`` passes of the clips (first pass = warm-up, not counted)."""
    torch.manual_seed(0)
    g = frames.astype(np.float64) / 255.0
    model = EagerPixelRNN(classes, float(g.mean()), float(g.std())).train().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(frames).to(device), torch.from_numpy(labels).to(device)

    def step(s):
        loss = F.cross_entropy(model(x[s:s + BATCH]), y[s:s + BATCH])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if profile:
        return _profile(lambda: step(0))
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for s in range(0, len(x), BATCH):
            step(s)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return len(x) * (epochs - 1) / sum(times[1:])


def train_epochs(data_dir: str, epochs: int, *, extra: list[str], device: str = "cpu",
                 kernels: str | None = None) -> tuple[float, dict]:
    """clips/s of ``pixelrnn train`` (training + validation per epoch; first epoch not counted);
    ``kernels``: a value for ``PIXELRNN_KERNELS`` during the run (None: as it is)."""
    from pixelrnn.cpu_kernels import ENV
    from pixelrnn.train import add_train_parser, main
    before = os.environ.get(ENV)
    if kernels is not None:
        os.environ[ENV] = kernels
    try:
        with tempfile.TemporaryDirectory() as tmp:
            parser = argparse.ArgumentParser()
            add_train_parser(parser.add_subparsers())
            args = parser.parse_args(["train", "--dataset", "grid", "--data-dir", data_dir, "--limit", str(CLIPS),
                                      "--batch-size", str(BATCH), "--epochs", str(epochs), "--threads", str(THREADS),
                                      "--device", device, "--schedule", "none", "--no-progress", "--out-dir", tmp,
                                      *extra])
            main(args)
            rows = json.loads((Path(tmp) / "metrics.json").read_text())["epochs"]
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
    counted = rows[1:]
    secs = sum(r["seconds"] + r["val_seconds"] for r in counted)
    return CLIPS * len(counted) / secs, {"train_s": statistics.median(r["seconds"] for r in counted),
                                         "val_s": statistics.median(r["val_seconds"] for r in counted)}


def _profile(step) -> str:
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    lines = ["| op | self CPU ms | % | calls |", "| --- | ---: | ---: | ---: |"]
    for e in rows[:10]:
        ms, pct = e.self_cpu_time_total / 1e3, 100 * e.self_cpu_time_total / total
        lines.append(f"| `{e.key}` | {ms:,.1f} | {pct:.1f} | {e.count} |")
    lines.append(f"| total | {total / 1e3:,.1f} | 100 | |")
    return "\n".join(lines)


def profile_fast(frames: np.ndarray, labels: np.ndarray, classes: int) -> str:
    """torch.profiler of one training step of the model as ``pixelrnn train`` runs it."""
    from firmware_sim.noise import NoiseModel
    from pixelrnn.model import ModelConfig, PixelRNN, draw_noise
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=classes, learn_theta0=True, noise_conv=SIGMAS[0],
                                 noise_gate=SIGMAS[1], noise_out=SIGMAS[2])).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(frames[:BATCH]), torch.from_numpy(labels[:BATCH])
    noise = NoiseModel(*SIGMAS)

    def step():
        gens = [torch.Generator().manual_seed(i) for i in range(BATCH)]
        loss = F.cross_entropy(model(x, draws=draw_noise(noise, BATCH, 16, gens)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.clip_latent_()
    return _profile(step)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="alternations eager / pixelrnn train")
    p.add_argument("--profile", action="store_true", help="add torch.profiler top-op tables")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both loops run (cuda: the GPU; needs one)")
    p.add_argument("--write", type=Path, default=None, help="update the training-speed section of this file")
    p.add_argument("--train-args", default="", help="extra flags for pixelrnn train (e.g. '--augment false')")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible (use --device cpu)")
    if args.device == "cuda" and args.profile:
        p.error("--profile times CPU ops: leave it out with --device cuda")
    torch.set_num_threads(THREADS)
    data_dir = str(default_data_dir())
    ds = load_dataset("grid", data_dir=data_dir)
    idx = split(ds)["train"][:CLIPS]
    frames, labels = ds.frames[idx], ds.labels[idx]
    classes = len(ds.classes)
    from pixelrnn import cpu_kernels
    both = args.device == "cpu" and cpu_kernels.available()     # the PyTorch path beside the kernels
    load0 = os.getloadavg()[0]
    eager, fast, torch_path, detail = [], [], [], []
    for r in range(args.rounds):
        eager.append(eager_epochs(frames, labels, classes, args.epochs, device=args.device))
        rate, d = train_epochs(data_dir, args.epochs, extra=args.train_args.split(), device=args.device)
        fast.append(rate)
        detail.append(d)
        line = (f"round {r + 1}: eager {eager[-1]:.1f} clips/s, pixelrnn train {fast[-1]:.1f} clips/s "
                f"({fast[-1] / eager[-1]:.2f}x; epoch train {d['train_s']:.2f} s + val {d['val_s']:.2f} s)")
        if both:
            torch_path.append(train_epochs(data_dir, args.epochs, extra=args.train_args.split(), device=args.device,
                                           kernels="torch")[0])
            line += f"; PyTorch path {torch_path[-1]:.1f} clips/s ({torch_path[-1] / eager[-1]:.2f}x)"
        print(line, flush=True)
    e, f = statistics.median(eager), statistics.median(fast)
    ratio = statistics.median(b / a for a, b in zip(eager, fast))
    epoch_s = statistics.median(d["train_s"] + d["val_s"] for d in detail) * (800 / CLIPS)
    gpu = args.device == "cuda"
    where = f"this GPU ({torch.cuda.get_device_name(0)})" if gpu else f"these {THREADS} cores"
    text = [f"Command: `python benchmarks/train_speed.py --epochs {args.epochs} --rounds {args.rounds}"
            f"{' --device cuda' if gpu else ''}{' --profile' if args.profile else ''}"
            f"{' --write ' + str(args.write) if args.write else ''}`  ",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores, {THREADS} torch threads, "
            f"{'GPU ' + torch.cuda.get_device_name(0) + ' (both loops on it), ' if gpu else ''}"
            f"Linux {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}; shared: load average "
            f"{load0:.1f} at the start (other jobs running)  ",
            f"Date: {datetime.date.today().isoformat()}; GRID, {CLIPS} training clips, batch {BATCH}, noise on "
            f"{SIGMAS}, {args.epochs} epochs per measurement (first = warm-up, not counted), "
            f"{args.rounds} alternating rounds, medians.", "",
            "| loop | clips/s (median) | per round |", "| --- | ---: | --- |",
            f"| plain eager PyTorch loop (forward, loss, backward, Adam) | {e:.1f} | "
            f"{', '.join(f'{v:.1f}' for v in eager)} |",
            f"| `pixelrnn train` (augmentation, per-clip noise, validation, checkpoints)"
            f"{', numba kernels' if both else ''} | {f:.1f} | {', '.join(f'{v:.1f}' for v in fast)} |",
            *([f"| `pixelrnn train`, `PIXELRNN_KERNELS=torch` (its PyTorch path) | "
               f"{statistics.median(torch_path):.1f} | {', '.join(f'{v:.1f}' for v in torch_path)} |"] if both else []),
            "",
            f"`pixelrnn train` / eager loop: **{ratio:.2f}x** (median of the per-round ratios; goal >= 4x). "
            f"One epoch of the full GRID training split (800 clips) with validation: ~{epoch_s:.1f} s, so "
            f"300 epochs ~{300 * epoch_s / 60:.0f} min on {where} (estimate from measured epoch time; "
            f"early stopping shortens it).{'' if gpu else ' GPU: see the GPU section below.'}"]
    if both:
        kern = statistics.median(b / a for a, b in zip(torch_path, fast))
        pt = statistics.median(b / a for a, b in zip(eager, torch_path))
        text[-1] += (f" The PyTorch path alone: {pt:.2f}x the eager loop; the kernels: **{kern:.2f}x** the "
                     f"PyTorch path (medians of the per-round ratios).")
    if args.profile:
        head = "torch.profiler, one training step (batch 32, 16 frames),"
        text += ["", f"{head} plain eager loop (= before: the former forward):", "",
                 eager_epochs(frames, labels, classes, 1, profile=True), "",
                 f"{head} the model as `pixelrnn train` runs it (= after):", "",
                 profile_fast(frames, labels, classes)]
    out = "\n".join(text)
    print(out)
    if args.write:
        name, heading = (("train_speed_gpu", "Training speed on a GPU (issue 13)") if gpu
                         else ("train_speed", "Training speed (issue 13)"))
        update_section(args.write, name, out, heading=heading)
    return 0


if __name__ == "__main__":
    sys.exit(main())
