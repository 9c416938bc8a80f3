"""``pixelrnn bench``: on-device latency of every stage of the camera loop, every runtime side by side.

Stages (``stages`` in the JSON, one sample per unit named):

- ``capture``: one frame from the source (video decode, or drawing the test pattern);
- ``preprocess``: grayscale + ROI + resize to 64x64, per frame;
- ``sensor_frame`` / ``sensor_readout_frame``: the sensor stage (binarize + one step of the fast
  path) per frame / on each window's last frame (which also computes the readout);
- ``packet_encode`` / ``packet_decode``: framing and checking one readout packet;
- ``link_inproc`` / ``link_udp``: one packet through the in-process queue / over UDP loopback.

Per runtime and thread count (``runtimes``): model load time, first inference, ``host`` (the
decoder on one readout, back to back), ``e2e`` (decision latency after the last frame of a
window arrives: preprocess + sensor step + encode + link + decode + decoder), peak RSS of that
runtime's process, and ``loop``: the whole camera loop (``edge.pipeline``, capture thread
included) on the source as fast as it runs, with its fps and headroom over ``--target-fps``.

The lips model's mouth ROI runs its face detector as a camera loop does, in its own low-priority
thread (``--mouth-detector sync``: inside the frame's call, as a file processed as fast as possible
does; ``edge.roi``).

Each measurement runs in a fresh child process, one after another (clean imports: tflite-runtime
and TensorFlow cannot share a process; honest peak RSS per runtime), with BLAS single-threaded.
Warm-up iterations first, then the timed runs; p50/p90/p99/mean/std/min/max in microseconds.
``packet`` gives the bytes per window of the chosen payload (``edge.payloads``): exact for a
fixed-size payload, the mean over the windows sent for a variable-size one (the prior). A bundle
with another readout layout sends its own payload (``8bit`` or ``levels{bits}``) of its (M*S, S)
image; ``packet.readout_layout`` then says which.

This module holds the options, the orchestration and the command; the measurements are in
:mod:`edge.bench_jobs`, the goals, text table and plot in :mod:`edge.bench_report`.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from core.atomic import atomic_open
from core.errors import InputError
from edge.bench_jobs import STAGES, run_child
from edge.bench_report import GOALS, format_table, goals, plot_histograms
from edge.device import device_info
from edge.packet import OVERHEAD_BYTES
from edge.payloads import (
    PayloadOptions,
    choose_layout_payload,
    file_payload_help,
    layout_image_shape,
    payload_help,
    payload_names,
)
from edge.stats import summarize

__all__ = ["SCHEMA", "STAGES", "RUNTIME_STAGES", "GOALS", "BenchOptions", "chosen_backends", "run_bench",
           "measured_anything", "goals", "format_table", "plot_histograms", "add_bench_parser", "main_bench"]

SCHEMA = "pixelrnn-edge-bench/1"
RUNTIME_STAGES = ("host", "e2e")
MOUTH_DETECTORS = ("thread", "sync")


@dataclass(frozen=True)
class BenchOptions:
    model: str | None = None                 # bundle folder; None: the bundled default of ``task``
    task: str | None = None
    runtimes: tuple[str, ...] = ("all",)     # backend names, or "all" = every installed one
    threads: tuple[int, ...] = (1,)
    warmup: int = 20
    runs: int = 200
    source: str = "test"                     # test | video path
    payload: str = "8bit"                    # a payload name from edge.payloads
    prior: str | None = None                 # the payload's file, for payloads with one (the prior file)
    loop_frames: int = 480
    realtime_windows: int = 0                # also run the loop paced at the source's fps for N windows
    target_fps: float = 30.0
    pin_core: int | None = None              # run every child on this CPU only
    blas_threads: int = 1
    mouth_detector: str = "thread"           # mouth ROI's face detector: thread (a camera's) | sync

    def __post_init__(self) -> None:
        from core.runtimes import runtime_names

        for name in ("warmup", "runs", "loop_frames", "realtime_windows", "blas_threads"):
            value = getattr(self, name)
            low = 0 if name in ("warmup", "realtime_windows") else 1
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if not self.threads or not all(isinstance(t, int) and 1 <= t <= 256 for t in self.threads):
            raise InputError(f"--threads must be integers 1..256, got {self.threads!r}")
        bad = [r for r in self.runtimes if r != "all" and r not in runtime_names()]
        if bad or not self.runtimes:
            raise InputError(f"unknown runtime(s) {bad}; choose all or from "
                             f"{', '.join(runtime_names(aliases=False))}")
        PayloadOptions(name=self.payload, file=self.prior)       # a registered payload, with its file if it needs one
        if self.prior is not None and not isinstance(self.prior, str):
            object.__setattr__(self, "prior", str(self.prior))  # a plain path: it goes to child processes
        if self.mouth_detector not in MOUTH_DETECTORS:
            raise InputError(f"--mouth-detector must be one of {', '.join(MOUTH_DETECTORS)}, "
                             f"got {self.mouth_detector!r}")
        if not (isinstance(self.target_fps, (int, float)) and self.target_fps > 0):
            raise InputError(f"--target-fps must be > 0, got {self.target_fps!r}")
        if self.source != "test" and not Path(self.source).is_file():
            raise InputError(f"--source: video file not found: {self.source}")
        if self.pin_core is not None:
            if not hasattr(os, "sched_setaffinity"):
                raise InputError("--pin-core needs os.sched_setaffinity (Linux)")
            if self.pin_core not in os.sched_getaffinity(0):
                raise InputError(f"--pin-core {self.pin_core}: not one of the CPUs this process may use "
                                 f"{sorted(os.sched_getaffinity(0))}")


def chosen_backends(runtimes: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Requested runtimes -> (installed backends to run, {backend: why skipped})."""
    from core import runtimes as registry

    if "all" in runtimes:
        names = registry.runtime_names(aliases=False)
        run = [b for b in names if registry.installed(b)]
        return run, {b: "not installed" for b in names if b not in run}
    return list(dict.fromkeys(registry.resolve(r).name for r in runtimes)), {}


def run_bench(*, options: BenchOptions, progress=lambda text: None) -> tuple[dict, dict]:
    """Run every measurement; return (results JSON-ready, raw samples in seconds for plots)."""
    from edge.models import resolve_bundle

    if not isinstance(options, BenchOptions):
        raise InputError(f"options must be a BenchOptions, got {type(options).__name__}")
    bundle = resolve_bundle(model=options.model, task=options.task)
    name = choose_layout_payload(bundle.layout, options.payload)     # a readout layout sends its own payload
    payload = PayloadOptions(name=name, file=options.prior).open()   # a bad file fails before measuring
    backends, skipped = chosen_backends(options.runtimes)
    env = {v: str(options.blas_threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    job = {"bundle": str(bundle.path), "warmup": options.warmup, "runs": options.runs,
           "source": options.source, "payload": options.payload, "prior": options.prior,
           "threads": list(options.threads), "loop_frames": options.loop_frames,
           "realtime_windows": options.realtime_windows, "target_fps": options.target_fps,
           "mouth_threaded": options.mouth_detector == "thread"}
    device = device_info()                       # before measuring: the load average is other work
    affinity = os.sched_getaffinity(0) if options.pin_core is not None else None
    if affinity is not None:
        os.sched_setaffinity(0, {options.pin_core})
    try:
        progress("stages (capture, preprocess, sensor, packet, link)")
        stages_raw = run_child("stages", job, env=env)
        runtimes_raw = {}
        for backend in backends:
            progress(f"runtime {backend}")
            runtimes_raw[backend] = run_child("runtime", dict(job, backend=backend), env=env)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    raw = {"stages": stages_raw.get("samples", {}), "runtimes": {}}
    results = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "options": asdict(options),
        "model": {"path": str(bundle.path), "task": bundle.task, "model_id": bundle.model_id,
                  "classes": bundle.classes, "source_weights": bundle.manifest.get("source_weights", "")},
        "units": "stages and host/e2e in microseconds; loop latency in milliseconds",
        "stages": {},
        "runtimes": {},
    }
    if "error" in stages_raw:
        results["stages_error"] = stages_raw["error"]
    for name in STAGES:
        if name in raw["stages"]:
            results["stages"][name] = summarize(raw["stages"][name], unit="us")
    results["packet"] = packet_report(payload, stages_raw, size=bundle.sensor.frontend.size,
                                      timesteps=bundle.sensor.timesteps, layout=bundle.layout)
    if payload.state is not None and payload.codec.describe_state is not None:
        results["packet"]["state"] = payload.codec.describe_state(payload.state)
    rss = [stages_raw.get("peak_rss_mb", 0.0)]
    for backend, out in runtimes_raw.items():
        if "error" in out:
            results["runtimes"][backend] = {"available": True, "error": out["error"]}
            continue
        entry = {"available": True, "version": out["version"], "peak_rss_mb": out["peak_rss_mb"],
                 "threads": {}, "loop": out["loop"]}
        if "loop_realtime" in out:
            entry["loop_realtime"] = out["loop_realtime"]
        raw["runtimes"][backend] = {}
        for threads, data in out["threads"].items():
            samples = data.pop("samples")
            raw["runtimes"][backend][threads] = samples
            entry["threads"][threads] = dict(data, host=summarize(samples["host"], unit="us"),
                                             e2e=summarize(samples["e2e"], unit="us"))
        results["runtimes"][backend] = entry
        rss.append(out["peak_rss_mb"])
    for backend, why in skipped.items():
        results["runtimes"][backend] = {"available": False, "reason": why}
    results["peak_rss_mb"] = max(rss)
    results["goals"] = goals(results)
    return results, raw


def packet_report(payload, stages_raw: dict, *, size: int, timesteps: int, layout=None) -> dict:
    """Bytes per window of the payload: the exact size of a fixed-size payload; for a variable-size
    one the mean the stages job measured over the windows it sent (None if it failed). ``layout``:
    the bundle's :class:`core.readout_layout.ReadoutLayout` (None or the authors': a size x size
    readout); any other is sent as its (M*S, S) image, and the report names it."""
    authors = layout is None or layout.is_authors
    codec, shape = payload.codec, ((size, size) if authors else layout_image_shape(layout))
    if codec.variable:
        mean = stages_raw.get("payload_bytes")
        payload_mean = round(float(mean), 1) if mean is not None else None
    else:
        payload_mean = int(codec.size(shape))
    per_window = None if payload_mean is None else payload_mean + OVERHEAD_BYTES
    raw_64, raw_256 = timesteps * 64 * 64, timesteps * 256 * 256
    report = {"payload": codec.name, "wire_id": codec.wire_id, "variable": codec.variable,
              "bytes_per_window": per_window, "payload_bytes": payload_mean,
              "max_payload_bytes": int(codec.size(shape)), "header_bytes": OVERHEAD_BYTES,
              "windows": stages_raw.get("windows", 0), "fallback_windows": stages_raw.get("fallback_windows", 0),
              "raw_64": raw_64, "raw_256": raw_256,
              "ratio_64": raw_64 / per_window if per_window else None,
              "ratio_256": raw_256 / per_window if per_window else None}
    if not authors:
        report["readout_layout"] = {**layout.to_dict(), "shape": list(layout.shape),
                                    "packet_shape": list(shape), "describe": layout.describe()}
    return report


def measured_anything(results: dict) -> bool:
    """Whether a run measured at least one stage or one runtime."""
    return bool(results["stages"]) or any(r.get("threads") for r in results["runtimes"].values())


# -- command -------------------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def add_bench_parser(subparsers) -> None:
    """Register ``pixelrnn bench``."""
    p = subparsers.add_parser(
        "bench", help="latency of every camera-loop stage, every runtime side by side",
        description="On-device latency of the camera loop's stages (capture, preprocess, sensor per "
                    "frame, packet encode/decode, link, host decoder per window, end to end), every "
                    "runtime side by side, with load/first-inference time, peak RSS and the device. "
                    "Warm-up, then timed runs; each runtime in a fresh process.")
    p.add_argument("--model", default=None, metavar="BUNDLE",
                   help="export bundle (default: the bundled model of --task)")
    p.add_argument("--task", choices=("gesture", "lips"), default=None, help="with the default model: which one")
    p.add_argument("--runtime", default="all", metavar="all|NAME[,NAME]",
                   help="all (every installed runtime) or names from onnxruntime, ai-edge-litert, "
                        "tflite-runtime, lce, tflite")
    p.add_argument("--threads", type=_int_list, default=(1,), metavar="1,2,4", help="runtime thread counts (default 1)")
    p.add_argument("--warmup", type=int, default=20, help="untimed iterations per stage (default 20)")
    p.add_argument("--runs", type=int, default=200,
                   help="timed samples per stage (windows for per-window stages; default 200)")
    p.add_argument("--source", default="test", metavar="test|PATH",
                   help="frames: test pattern (default) or a video file (looped)")
    p.add_argument("--payload", choices=payload_names(), default="8bit",
                   help=f"readout payload (default 8bit): {payload_help()}")
    p.add_argument("--prior", type=Path, default=None, metavar="FILE.npz",
                   help=f"the payload's file, for {file_payload_help()}")
    p.add_argument("--loop-frames", type=int, default=480,
                   help="frames through the whole loop per runtime (default 480)")
    p.add_argument("--realtime-windows", type=int, default=0, metavar="N",
                   help="also run the loop paced at the source's fps for N windows (e2e as a live camera sees it)")
    p.add_argument("--target-fps", type=float, default=30.0, help="headroom = loop fps / this (default 30)")
    p.add_argument("--pin-core", type=int, default=None, metavar="CPU", help="run on this one CPU only (Linux)")
    p.add_argument("--mouth-detector", choices=MOUTH_DETECTORS, default="thread",
                   help="lips (mouth ROI): the face detector in its own thread, as a camera runs it "
                        "(default), or synchronous inside the frame's call, as a file run is")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                   help="write latency histograms (needs matplotlib)")
    p.set_defaults(func=main_bench)


def main_bench(args: argparse.Namespace) -> int:
    """``pixelrnn bench``: 0 when something was measured, 1 when nothing was (every job failed)."""
    for name in ("json", "plot"):
        out = getattr(args, name)
        if out is not None and not out.absolute().parent.is_dir():
            raise InputError(f"--{name}: folder {out.absolute().parent} does not exist")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:   # fail before measuring
        raise InputError("--plot needs matplotlib (pip install matplotlib); it is not in the base install") from None
    try:
        PayloadOptions(name=args.payload, file=args.prior)
    except InputError as exc:
        raise InputError(f"--payload {args.payload} / --prior: {exc}") from None
    options = BenchOptions(model=args.model, task=args.task,
                           runtimes=tuple(r.strip() for r in args.runtime.split(",") if r.strip()),
                           threads=args.threads, warmup=args.warmup, runs=args.runs, source=args.source,
                           payload=args.payload, prior=None if args.prior is None else str(args.prior),
                           loop_frames=args.loop_frames, realtime_windows=args.realtime_windows,
                           target_fps=args.target_fps, pin_core=args.pin_core,
                           mouth_detector=args.mouth_detector)
    results, raw = run_bench(options=options, progress=lambda text: print(f"bench: {text}", file=sys.stderr))
    print(format_table(results))
    if not measured_anything(results):      # no --json / --plot: an earlier good result stays as it was
        errors = [f"stages: {results.get('stages_error', 'no samples')}"]
        errors += [f"{b}: {r.get('error') or r.get('reason')}" for b, r in results["runtimes"].items()]
        unwritten = " and ".join(f"--{n}" for n in ("json", "plot") if getattr(args, n) is not None)
        print(f"bench: error: nothing was measured ({'; '.join(errors)})"
              f"{f'; {unwritten} not written' if unwritten else ''}", file=sys.stderr)
        return 1
    if args.json is not None:
        with atomic_open(args.json, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(results, indent=2, allow_nan=False) + "\n")   # strict JSON
        print(f"wrote {args.json}")
    if args.plot is not None:
        print(f"wrote {plot_histograms(raw, args.plot)}")
    return 0
