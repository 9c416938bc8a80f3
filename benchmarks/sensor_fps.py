"""Sensor-stage throughput on one core, side by side in one run: the packed path (the default
``--path fast``) through the API and through the CLI, the old numpy fast path, the streaming
path, the instruction-level path, and a plain float PyTorch forward of the same sensor stage.

    python benchmarks/sensor_fps.py [--clips 32] [--repeats 7] [--rounds 3] [--cli-clips 256]
                                    [--write docs/BENCHMARKS.md]

CLI: ``pixelrnn simulate --path fast --readout-only`` on a random model's checkpoint, as whole
processes; its rate is the marginal one, (frames of --cli-clips clips - frames of 4 clips) / (time
of the first run - time of the second), so start-up (imports, model load) cancels and npz reading,
the front end, the sensor stage, the decoder's logits and the npz writing are all counted.
The machines here are shared and their speed drifts within minutes, so the goal's ratios are taken
per round: each of --rounds rounds times the packed API, the API with front end, the CLI and the
PyTorch forward back to back (medians over --repeats inside a round), and the ratios reported for
them are the medians of the per-round ratios (every round's are printed). The other paths are
timed once. Plus the instruction count, estimated sensor time and energy per frame of the sensor
program.
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


class CliBench:
    """The CLI's inputs (a random model's checkpoint, random clips of ``big`` and ``small`` clips) in a
    temporary folder, kept for all rounds; :meth:`rate` times pairs of whole processes."""

    def __init__(self, model, big: int, small: int = 4) -> None:
        from pixelrnn.checkpoint import save_checkpoint

        self.big, self.small = big, small
        self._tmp = tempfile.TemporaryDirectory()
        tmp = Path(self._tmp.name)
        self.ckpt, self.out = save_checkpoint(model, tmp / "model.pt"), tmp / "out.npz"
        rng = np.random.default_rng(1)
        self.files = {}
        for n in (big, small):
            self.files[n] = tmp / f"clips{n}.npz"
            np.savez(self.files[n], frames=rng.integers(0, 256, size=(n, 16, 64, 64), dtype=np.uint8),
                     labels=rng.integers(0, 9, size=n))
        cli_time(self.ckpt, self.files[small], self.out)           # warm-up (file cache)

    def rate(self, pairs: int) -> tuple[float, float]:
        """Marginal frames/s of the CLI (see the module docstring) and its median time for ``big`` clips."""
        diffs, bigs = [], []
        for _ in range(pairs):
            t_big = cli_time(self.ckpt, self.files[self.big], self.out)
            t_small = cli_time(self.ckpt, self.files[self.small], self.out)
            diffs.append(t_big - t_small)
            bigs.append(t_big)
        return (self.big - self.small) * 16 / statistics.median(diffs), statistics.median(bigs)

    def close(self) -> None:
        self._tmp.cleanup()


DECODE_CLIPS = 128      # pixelrnn.simulate.CHUNK_CLIPS


def decoder_times(model, repeats: int) -> tuple[float, float]:
    """us per frame of the decoder's logits on one CLI chunk of random levels: the level table
    against the float path, alternated (median of ``repeats`` pairs); asserts equal logits."""
    import torch

    lay = model.config.layout
    levels = torch.from_numpy(np.random.default_rng(2).integers(0, 2 ** lay.bits, (DECODE_CLIPS, *lay.shape),
                                                                dtype=np.uint8))
    table, floats = [], []
    with torch.no_grad():
        assert torch.equal(model.decode(levels), model.decode_analog(model.dequantize(levels.float())))
        for _ in range(repeats):
            table.append(median_time(lambda: model.decode(levels), 3))
            floats.append(median_time(lambda: model.decode_analog(model.dequantize(levels.float())), 3))
    per_frame = 1e6 / (DECODE_CLIPS * 16)
    return statistics.median(table) * per_frame, statistics.median(floats) * per_frame


def plain_sensor(model, binary):
    """The sensor stage written plainly in PyTorch, as the issue measured it when it was filed
    (``F.conv2d``, relu, ``F.max_pool2d``, the step-by-step recurrence, noise off): the authors'
    layout, (B, T, 64, 64) +-1 -> o_T (B, 1, 64, 64). ``PixelRNN.sensor`` (the other PyTorch row) is
    the same stage as training runs it, GEMMs on 8x8 neighbourhoods and a fused recurrence."""
    import torch
    import torch.nn.functional as F

    from pixelrnn.model import to_mosaic
    q = model.binarize
    b, t, h, w = binary.shape
    conv = F.conv2d(binary.reshape(b * t, 1, h, w), q(model.conv1), padding=2)
    x = to_mosaic(q(F.max_pool2d(F.relu(conv), 4) - model.thresh1)).reshape(b, t, 1, h, w)
    w_i = torch.cat([q(model.w_fi), q(model.w_oi)])
    w_h = torch.cat([q(model.w_fh), q(model.w_oh)])
    xi = F.conv2d(x.reshape(b * t, 1, h, w), w_i, padding=2).reshape(b, t, 2, h, w)
    hidden = torch.ones(b, 1, h, w)
    for step in range(t):
        hh = F.conv2d(hidden, w_h, padding=2)
        if step == t - 1:
            return xi[:, step, 1:2] + hh[:, 1:2]
        hidden = q(xi[:, step, 0:1] + hh[:, 0:1] - model.rnn_threshold) * hidden


def _verdict(value: float, goal: float) -> str:
    """'met', or how far short of ``goal`` ``value`` is, in percent."""
    return "met" if value >= goal else f"not met: {100 * (1 - value / goal):.1f}% short"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="clips per batch (16 frames each)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of API, CLI and PyTorch timings back to back (ratios: median per round)")
    parser.add_argument("--cli-clips", type=int, default=256, help="clips of the larger CLI run (0: skip the CLI)")
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file's section")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.repeats < 1 or args.rounds < 1:
        parser.error("--clips, --repeats and --rounds must be >= 1")

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

    tb = torch.from_numpy(binary.astype(np.float32))
    with torch.no_grad():               # the two PyTorch rows compute the same stage
        if not torch.equal(plain_sensor(model, tb), model.sensor(tb)[0]):
            raise AssertionError("the plain PyTorch forward differs from PixelRNN.sensor")
    cli = CliBench(model, args.cli_clips) if args.cli_clips else None
    per_round = []                    # frames/s of API, API + front end, CLI, PyTorch, timed back to back
    try:
        for r in range(args.rounds):
            fps = {"api": n_frames / median_time(lambda: packed.run_clips(binary, weights), args.repeats),
                   "sim": n_frames / median_time(lambda: simulate(weights=weights, frames=frames, stages=()),
                                                 args.repeats)}
            if cli is not None:
                fps["cli"], fps["cli_big_s"] = cli.rate(max(3, args.repeats // 2))
            with torch.no_grad():
                fps["torch"] = n_frames / median_time(lambda: model.sensor(tb), args.repeats)
                fps["plain"] = n_frames / median_time(lambda: plain_sensor(model, tb), args.repeats)
            per_round.append(fps)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:,.0f} frames/s ({v / fps['torch']:.1f}x, "
                                               f"{v / fps['plain']:.1f}x plain)"
                                               for k, v in fps.items() if k in ("api", "sim", "cli")), flush=True)
    finally:
        if cli is not None:
            cli.close()

    def med(key: str) -> float:
        return statistics.median(f[key] for f in per_round)

    def ratio(key: str, base: str = "torch") -> float:     # the median of the per-round ratios
        return statistics.median(f[key] / f[base] for f in per_round)

    def rounds_of(key: str, base: str = "torch") -> str:
        return ", ".join(f"{f[key] / f[base]:.1f}x" for f in per_round)

    torch_fps, plain_fps = med("torch"), med("plain")
    rows = []                            # (path, frames/s, its ratio to PixelRNN.sensor, to the plain forward)

    def per_round_row(name: str, key: str) -> None:
        rows.append((name, med(key), ratio(key), ratio(key, "plain")))

    def timed_once(name: str, fps: float) -> None:
        rows.append((name, fps, fps / torch_fps, fps / plain_fps))

    per_round_row("packed path, API (`packed.run_clips`, batch of %d clips)" % args.clips, "api")
    per_round_row("packed path, API with front end (`simulate(..., stages=())` on uint8 frames)", "sim")
    cli_fps = None
    if cli is not None:
        cli_fps = med("cli")
        per_round_row(f"packed path, CLI `pixelrnn simulate --path fast --readout-only` (marginal, "
                      f"{args.cli_clips} - 4 clips; {args.cli_clips} clips took {med('cli_big_s'):.2f} s in all)",
                      "cli")
    t_fast = median_time(lambda: fast.run_clips(binary, weights), args.repeats)
    timed_once("old fast path (`fast.run_clips`, numpy im2col float32 GEMM)", n_frames / t_fast)

    one_clip = binary[0]
    stream = packed.PackedStream(weights)
    t_packed_stream = median_time(lambda: [stream.push(f) for f in one_clip], args.repeats)
    timed_once("packed path, streaming (`packed.PackedStream`, one frame at a time: the camera loop's)",
               16 / t_packed_stream)
    stream = fast.SensorStream(weights)
    t_stream = median_time(lambda: [stream.push(f) for f in one_clip], args.repeats)
    timed_once("old fast path, streaming (`fast.SensorStream`, one frame at a time)", 16 / t_stream)
    per_round_row("PyTorch float forward of the sensor stage as training runs it (`PixelRNN.sensor`: GEMMs on "
                  "8x8 neighbourhoods, fused recurrence; batch, 1 thread)", "torch")
    per_round_row("plain PyTorch float forward of the sensor stage (`F.conv2d`, relu, `F.max_pool2d`, the "
                  "step-by-step recurrence: the forward the issue measured when filed; batch, 1 thread)", "plain")
    dec_table, dec_float = decoder_times(model, args.repeats)

    cost = None
    try:
        from firmware_sim import program
        t_instr = median_time(lambda: program.run_clips_instruction(binary[:1], weights),
                              max(1, args.repeats // 3))
        timed_once("instruction-level path (1 clip)", 16 / t_instr)
        cost = program.frame_cost(weights)
    except ImportError:
        pass

    api_fps, api_ratio = med("api"), ratio("api")
    blas = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    lines = [
        f"Command: `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/sensor_fps.py --clips {args.clips} "
        f"--repeats {args.repeats} --rounds {args.rounds} --cli-clips {args.cli_clips} --write docs/BENCHMARKS.md`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores (1 thread used), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__}; OPENBLAS_CORETYPE={blas['OPENBLAS_CORETYPE']}, "
        f"OPENBLAS_L2_SIZE={blas['OPENBLAS_L2_SIZE']}  ",
        f"Date: {datetime.date.today().isoformat()}; medians of {args.repeats} runs, a random model's "
        f"weights and random 64x64 frames, noise off. The first three rows and the two PyTorch rows: "
        f"medians over {args.rounds} rounds timed back to back; their ratios are the medians of the "
        f"per-round ratios (the two PyTorch forwards give the same o_T, checked before timing).",
        "",
        *markdown_table(("path", "frames/s", "/ PixelRNN.sensor", "/ plain PyTorch"),
                        ((name, f"{value:,.0f}", f"{r:.1f}x", f"{rp:.1f}x") for name, value, r, rp in rows),
                        align="lrrr"),
        "",
        f"Goals (issue 17): >= 10,000 frames/s on one core and >= 10x the float PyTorch forward. "
        f"API: {api_fps:,.0f} frames/s ({_verdict(api_fps, 10_000)}), **{ratio('api', 'plain'):.1f}x** the "
        f"plain PyTorch forward ({_verdict(ratio('api', 'plain'), 10)}; rounds {rounds_of('api', 'plain')}), "
        f"**{api_ratio:.1f}x** `PixelRNN.sensor` ({_verdict(api_ratio, 10)}; rounds {rounds_of('api')}), "
        f"{api_fps * t_fast / n_frames:.1f}x the old fast path."
        + (f" CLI (marginal): {cli_fps:,.0f} frames/s ({_verdict(cli_fps, 10_000)}), "
           f"**{ratio('cli', 'plain'):.1f}x** the plain forward ({_verdict(ratio('cli', 'plain'), 10)}; rounds "
           f"{rounds_of('cli', 'plain')}), **{ratio('cli'):.1f}x** `PixelRNN.sensor` "
           f"({_verdict(ratio('cli'), 10)}; rounds {rounds_of('cli')})."
           if cli_fps else "")
        + f" Camera loop's stream: {1e3 * t_packed_stream / 16:.3f} ms per frame, "
          f"{t_stream / t_packed_stream:.1f}x the old fast path's stream. The CLI's decoder logits "
          f"({DECODE_CLIPS} clips per call, as the CLI's chunks): {dec_table:.2f} us per frame from the "
          f"level table (`PixelRNN.decode` on uint8 levels in eval mode), {dec_float:.2f} us on the float "
          f"path (`decode_analog`; before: the CLI's path), {dec_float / dec_table:.1f}x, the same logits.",
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
