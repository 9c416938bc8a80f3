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

Each measurement runs in a fresh child process, one after another (clean imports: tflite-runtime
and TensorFlow cannot share a process; honest peak RSS per runtime), with BLAS single-threaded.
Warm-up iterations first, then the timed runs; p50/p90/p99/mean/std/min/max in microseconds.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.device import device_info, peak_rss_mb
from edge.stats import summarize
from core.atomic import atomic_open
from core.errors import InputError

SCHEMA = "pixelrnn-edge-bench/1"
STAGES = ("capture", "preprocess", "sensor_frame", "sensor_readout_frame", "packet_encode",
          "packet_decode", "link_inproc", "link_udp")
RUNTIME_STAGES = ("host", "e2e")
CHILD_TIMEOUT = 900.0
E2E_WINDOWS = 8            # distinct windows whose last frame is replayed for e2e and host timing
GOALS = {"headroom": 3.0, "host_p99_us": 100.0, "e2e_p99_ms": 5.0}


@dataclass(frozen=True)
class BenchOptions:
    model: str | None = None                 # bundle folder; None: the bundled default of ``task``
    task: str | None = None
    runtimes: tuple[str, ...] = ("all",)     # backend names, or "all" = every installed one
    threads: tuple[int, ...] = (1,)
    warmup: int = 20
    runs: int = 200
    source: str = "test"                     # test | video path
    payload: str = "8bit"
    loop_frames: int = 480
    realtime_windows: int = 0                # also run the loop paced at the source's fps for N windows
    target_fps: float = 30.0
    pin_core: int | None = None              # run every child on this CPU only
    blas_threads: int = 1

    def __post_init__(self) -> None:
        from edge.decoder import BACKENDS
        from edge.packet import PAYLOADS

        for name in ("warmup", "runs", "loop_frames", "realtime_windows", "blas_threads"):
            value = getattr(self, name)
            low = 0 if name in ("warmup", "realtime_windows") else 1
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if not self.threads or not all(isinstance(t, int) and 1 <= t <= 256 for t in self.threads):
            raise InputError(f"--threads must be integers 1..256, got {self.threads!r}")
        bad = [r for r in self.runtimes if r not in BACKENDS + ("all", "tflite")]
        if bad or not self.runtimes:
            raise InputError(f"unknown runtime(s) {bad}; choose all or from {', '.join(BACKENDS)}")
        if self.payload not in PAYLOADS:
            raise InputError(f"--payload must be one of {', '.join(PAYLOADS)}, got {self.payload!r}")
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


# -- child jobs ----------------------------------------------------------------------------------
def _open_source(spec: str, *, loop: bool):
    from edge.capture import FileSource, TestPattern

    source = TestPattern() if spec == "test" else FileSource(spec, loop=loop)
    source.open()
    return source


def _pipeline_parts(bundle, payload: str):
    from edge.roi import make_roi
    from edge.sensor_stage import Preprocessor, SensorOptions, SensorStage

    roi = "mouth" if bundle.task == "lips" else "center"
    pre = Preprocessor(make_roi(roi), size=bundle.sensor.frontend.size)
    sensor = SensorStage(weights=bundle.sensor, options=SensorOptions(payload=payload, stream_id=1))
    return pre, sensor, roi


def _stages_job(job: dict) -> dict:
    """Runtime-independent stages, streamed over warm-up + timed windows of the source."""
    import numpy as np

    from edge.link import InprocLink, UdpReceiver, UdpSender
    from edge.models import load_bundle
    from edge.packet import decode_packet

    bundle = load_bundle(job["bundle"])
    warmup, runs = job["warmup"], job["runs"]
    source = _open_source(job["source"], loop=True)
    pre, sensor, _ = _pipeline_parts(bundle, job["payload"])
    t = sensor.timesteps
    samples = {name: [] for name in STAGES}
    packets = []
    for i in range((warmup + runs) * t):
        timed = i >= warmup * t
        t0 = time.perf_counter()
        frame = source.read()
        t1 = time.perf_counter()
        image = pre(frame, last_of_window=sensor.next_is_last)
        t2 = time.perf_counter()
        last = sensor.next_is_last
        packet = sensor.push(image, t_ns=time.monotonic_ns())
        t3 = time.perf_counter()
        if timed:
            samples["capture"].append(t1 - t0)
            samples["preprocess"].append(t2 - t1)
            samples["sensor_frame"].append(t3 - t2)
            if last:
                samples["sensor_readout_frame"].append(t3 - t2)
                samples["packet_encode"].append(sensor.encode_latency.samples[-1])
                packets.append(packet)
    source.release()
    for i, packet in enumerate(packets[:1] * warmup + packets):
        t0 = time.perf_counter()
        decode_packet(packet, expect_model=bundle.model_id)
        if i >= warmup:
            samples["packet_decode"].append(time.perf_counter() - t0)
    link = InprocLink()
    for i in range(warmup + len(packets)):
        packet = packets[i % len(packets)]
        t0 = time.perf_counter()
        link.send(packet)
        link.recv()
        if i >= warmup:
            samples["link_inproc"].append(time.perf_counter() - t0)
    with UdpReceiver("127.0.0.1", 0) as rx, UdpSender("127.0.0.1", rx.port) as tx:
        for i in range(warmup + len(packets)):
            packet = packets[i % len(packets)]
            t0 = time.perf_counter()
            tx.send(packet)
            rx.recv(timeout=1.0)
            if i >= warmup:
                samples["link_udp"].append(time.perf_counter() - t0)
    return {"samples": samples, "packet_bytes": int(np.mean([len(p) for p in packets])),
            "peak_rss_mb": peak_rss_mb()}


def _runtime_job(job: dict) -> dict:
    """Load, first inference, host and e2e latency per thread count, and the whole loop, for one runtime."""
    from edge.decoder import HostDecoder, backend_version
    from edge.host import HostStage
    from edge.link import InprocLink
    from edge.models import load_bundle

    bundle = load_bundle(job["bundle"])
    backend, warmup, runs = job["backend"], job["warmup"], job["runs"]
    source = _open_source(job["source"], loop=True)
    pre, sensor, roi = _pipeline_parts(bundle, job["payload"])
    t = sensor.timesteps
    windows = []                                     # (sensor after T-1 frames, raw last frame, readout)
    for _ in range(E2E_WINDOWS):
        for _ in range(t - 1):
            sensor.push(pre(source.read()), t_ns=1)
        snapshot, last = copy.deepcopy(sensor), source.read()
        sensor.push(pre(last, last_of_window=True), t_ns=1)
        windows.append((snapshot, last, sensor.last_readout.copy()))
    source.release()
    result = {"version": backend_version(backend), "threads": {}}
    for threads in job["threads"]:
        decoder = HostDecoder(bundle=bundle, runtime=backend, threads=threads)
        decoder(windows[0][2])
        entry = {"load_ms": decoder.load_s * 1e3, "first_inference_ms": decoder.first_s * 1e3}
        host = []
        for i in range(warmup + runs):
            readout = windows[i % len(windows)][2]
            t0 = time.perf_counter()
            decoder(readout)
            if i >= warmup:
                host.append(time.perf_counter() - t0)
        stage, link, e2e = HostStage(decoder=decoder, expect_model=bundle.model_id), InprocLink(), []
        for i in range(warmup + runs):
            snapshot, last, _ = windows[i % len(windows)]
            s = copy.deepcopy(snapshot)
            s.windows = i                            # a fresh sequence number: not a stale packet
            t0 = time.perf_counter()
            image = pre(last, last_of_window=True)
            link.send(s.push(image, t_ns=time.monotonic_ns()))
            decision = stage.handle(link.recv())
            if i >= warmup:
                e2e.append(time.perf_counter() - t0)
            if decision is None:
                raise RuntimeError(f"e2e: the host rejected a packet ({dict(stage.packets.rejected)})")
        entry["samples"] = {"host": host, "e2e": e2e}
        result["threads"][str(threads)] = entry
    result["loop"] = _loop(job, bundle, backend, roi, realtime=False, frames=job["loop_frames"])
    if job["realtime_windows"]:
        result["loop_realtime"] = _loop(job, bundle, backend, roi, realtime=True,
                                        frames=job["realtime_windows"] * t)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _loop(job: dict, bundle, backend: str, roi, *, realtime: bool, frames: int) -> dict:
    """The whole camera loop (``edge.pipeline``) on the looped source: as fast as it runs, or paced."""
    from edge.capture import CaptureOptions, FileSource, TestPattern
    from edge.pipeline import PipelineOptions, run_pipeline
    from edge.sensor_stage import SensorOptions

    source = TestPattern() if job["source"] == "test" else FileSource(job["source"], loop=True)
    options = PipelineOptions(runtime=backend, threads=job["threads"][0], roi=roi,
                              sensor=SensorOptions(payload=job["payload"]),
                              capture=CaptureOptions(realtime=realtime), max_frames=frames)
    s = run_pipeline(source=source, bundle=bundle, options=options).summary
    return {"realtime": realtime, "frames": s["frames"], "windows": s["windows"], "seconds": s["seconds"],
            "fps": s["fps"], "threads": job["threads"][0], "source_fps": s["source_fps"],
            "headroom": s["fps"] / job["target_fps"], "target_fps": job["target_fps"],
            "latency_ms": s["latency_ms"], "drops": s["drops"]}


def _child(conn, kind: str, job: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = _stages_job(job) if kind == "stages" else _runtime_job(job)
        conn.send(("ok", out))
    except Exception as exc:  # noqa: BLE001 - reported as one line in the results
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        conn.send(("error", f"{type(exc).__name__}: {text}"))
    finally:
        conn.close()


def _run_child(kind: str, job: dict, *, env: dict) -> dict:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)                                 # inherited by the spawned interpreter
    try:
        proc = ctx.Process(target=_child, args=(child, kind, job), daemon=True)
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    try:
        if not parent.poll(CHILD_TIMEOUT):
            return {"error": f"timed out after {CHILD_TIMEOUT:.0f} s"}
        status, payload = parent.recv()
    except EOFError:
        return {"error": f"the benchmark process died (exit code {proc.exitcode})"}
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        parent.close()
    return payload if status == "ok" else {"error": payload}


# -- orchestration -------------------------------------------------------------------------------
def chosen_backends(runtimes: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Requested runtimes -> (installed backends to run, {backend: why skipped})."""
    from edge.decoder import BACKENDS, backend_installed, resolve_backend

    if "all" in runtimes:
        run = [b for b in BACKENDS if backend_installed(b)]
        return run, {b: "not installed" for b in BACKENDS if b not in run}
    return list(dict.fromkeys(resolve_backend(r) for r in runtimes)), {}


def run_bench(*, options: BenchOptions, progress=lambda text: None) -> tuple[dict, dict]:
    """Run every measurement; return (results JSON-ready, raw samples in seconds for plots)."""
    from edge.models import resolve_bundle
    from edge.packet import OVERHEAD_BYTES, payload_bytes

    if not isinstance(options, BenchOptions):
        raise InputError(f"options must be a BenchOptions, got {type(options).__name__}")
    bundle = resolve_bundle(model=options.model, task=options.task)
    backends, skipped = chosen_backends(options.runtimes)
    env = {v: str(options.blas_threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    job = {"bundle": str(bundle.path), "warmup": options.warmup, "runs": options.runs,
           "source": options.source, "payload": options.payload, "threads": list(options.threads),
           "loop_frames": options.loop_frames, "realtime_windows": options.realtime_windows,
           "target_fps": options.target_fps}
    device = device_info()                       # before measuring: the load average is other work
    affinity = os.sched_getaffinity(0) if options.pin_core is not None else None
    if affinity is not None:
        os.sched_setaffinity(0, {options.pin_core})
    try:
        progress("stages (capture, preprocess, sensor, packet, link)")
        stages_raw = _run_child("stages", job, env=env)
        runtimes_raw = {}
        for backend in backends:
            progress(f"runtime {backend}")
            runtimes_raw[backend] = _run_child("runtime", dict(job, backend=backend), env=env)
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
    size = bundle.sensor.frontend.size
    t = bundle.sensor.timesteps
    enc = 8 if options.payload == "8bit" else 1
    per_window = payload_bytes((size, size), enc) + OVERHEAD_BYTES
    results["packet"] = {"payload": options.payload, "bytes_per_window": per_window,
                         "payload_bytes": payload_bytes((size, size), enc), "header_bytes": OVERHEAD_BYTES,
                         "raw_64": t * 64 * 64, "raw_256": t * 256 * 256,
                         "ratio_64": t * 64 * 64 / per_window, "ratio_256": t * 256 * 256 / per_window}
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


def goals(results: dict) -> dict:
    """The issue's three goals, from the ONNX Runtime results (threads = the first value). The e2e
    figure is the larger of the isolated critical path's p99 and, if measured, the p99 in the
    camera loop paced at the source's rate (what a live camera sees)."""
    ort = results["runtimes"].get("onnxruntime", {})
    if not ort.get("threads"):
        return {"error": "onnxruntime was not measured"}
    first = next(iter(ort["threads"].values()))
    headroom = ort["loop"]["headroom"]
    host = first["host"]["p99"]
    e2e = first["e2e"]["p99"] / 1e3
    paced = ort.get("loop_realtime", {}).get("latency_ms", {}).get("e2e", {})
    if "p99" in paced:
        e2e = max(e2e, paced["p99"])
    return {"headroom": {"value": headroom, "goal": GOALS["headroom"], "met": headroom >= GOALS["headroom"]},
            "host_p99_us": {"value": host, "goal": GOALS["host_p99_us"], "met": host <= GOALS["host_p99_us"]},
            "e2e_p99_ms": {"value": e2e, "goal": GOALS["e2e_p99_ms"], "met": e2e <= GOALS["e2e_p99_ms"]}}


def format_table(results: dict) -> str:
    """A plain-text report of a results dict."""
    lines = [f"device: {results['device']['cpu']}, {results['device'].get('cores_usable', results['device']['cores'])} "
             f"usable core(s), {results['device']['os']}, Python {results['device']['python']}",
             f"model: {results['model']['task']} {results['model']['model_id']} ({results['model']['path']})",
             "stage                      p50 us    p90 us    p99 us   mean us    max us"]
    for name, s in results["stages"].items():
        lines.append(f"{name:24s} {s['p50']:9.1f} {s['p90']:9.1f} {s['p99']:9.1f} {s['mean']:9.1f} {s['max']:9.1f}")
    if "stages_error" in results:
        lines.append(f"stages: error: {results['stages_error']}")
    lines.append("runtime            thr  load ms  1st ms  host p50/p99 us   e2e p50/p99 us  loop fps  RSS MB")
    for backend, r in results["runtimes"].items():
        if not r.get("available"):
            lines.append(f"{backend:18s} skipped: {r['reason']}")
            continue
        if "error" in r:
            lines.append(f"{backend:18s} error: {r['error']}")
            continue
        for threads, e in r["threads"].items():
            lines.append(f"{backend:18s} {threads:>3s} {e['load_ms']:8.1f} {e['first_inference_ms']:7.2f} "
                         f"{e['host']['p50']:7.1f}/{e['host']['p99']:<7.1f} {e['e2e']['p50']:7.1f}/{e['e2e']['p99']:<7.1f} "
                         f"{r['loop']['fps']:9.1f} {r['peak_rss_mb']:7.1f}")
    p = results["packet"]
    lines.append(f"packet: {p['bytes_per_window']:,} bytes per window ({p['payload']}); raw 16x64x64 "
                 f"{p['raw_64']:,} ({p['ratio_64']:.1f}x), 16x256x256 {p['raw_256']:,} ({p['ratio_256']:.1f}x)")
    g = results.get("goals", {})
    if "error" not in g:
        lines.append(f"goals: headroom {g['headroom']['value']:.1f}x (>= 3: {'met' if g['headroom']['met'] else 'NOT met'}); "
                     f"host p99 {g['host_p99_us']['value']:.1f} us (<= 100: {'met' if g['host_p99_us']['met'] else 'NOT met'}); "
                     f"e2e p99 {g['e2e_p99_ms']['value']:.3f} ms (<= 5: {'met' if g['e2e_p99_ms']['met'] else 'NOT met'})")
    return "\n".join(lines)


def plot_histograms(raw: dict, path: str | os.PathLike) -> Path:
    """A PNG of latency histograms (matplotlib, imported here: it is not in the base install)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install matplotlib); it is not in the base install") from None
    import numpy as np

    def panel(ax, series: dict[str, np.ndarray], title: str) -> None:
        series = {k: v for k, v in series.items() if v.size}
        ax.set_title(title)
        ax.set_xlabel("microseconds (log scale)")
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
            return
        low = max(min(float(v.min()) for v in series.values()), 0.05)
        high = max(float(v.max()) for v in series.values()) * 1.01
        bins = np.logspace(np.log10(low), np.log10(max(high, low * 1.1)), 80)
        for label, us in series.items():
            ax.hist(np.clip(us, low, None), bins=bins, alpha=0.5, label=label)
        ax.set_xscale("log")
        ax.legend(fontsize=7)

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    for ax, (title, key) in zip(axes[0], (("host decoder per window", "host"),
                                          ("end to end after a window's last frame", "e2e"))):
        panel(ax, {f"{backend} x{threads}": np.asarray(samples[key]) * 1e6
                   for backend, per_threads in raw["runtimes"].items()
                   for threads, samples in per_threads.items()}, title)
    for ax, names, title in zip(axes[1], (("capture", "preprocess", "sensor_frame", "sensor_readout_frame"),
                                          ("packet_encode", "packet_decode", "link_inproc", "link_udp")),
                                ("per frame", "per packet")):
        panel(ax, {name: np.asarray(raw["stages"].get(name, [])) * 1e6 for name in names}, title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    p.add_argument("--model", default=None, metavar="BUNDLE", help="export bundle (default: the bundled model of --task)")
    p.add_argument("--task", choices=("gesture", "lips"), default=None, help="with the default model: which one")
    p.add_argument("--runtime", default="all", metavar="all|NAME[,NAME]",
                   help="all (every installed runtime) or names from onnxruntime, ai-edge-litert, "
                        "tflite-runtime, lce, tflite")
    p.add_argument("--threads", type=_int_list, default=(1,), metavar="1,2,4", help="runtime thread counts (default 1)")
    p.add_argument("--warmup", type=int, default=20, help="untimed iterations per stage (default 20)")
    p.add_argument("--runs", type=int, default=200, help="timed samples per stage (windows for per-window stages; default 200)")
    p.add_argument("--source", default="test", metavar="test|PATH", help="frames: test pattern (default) or a video file (looped)")
    p.add_argument("--payload", choices=("8bit", "1bit"), default="8bit", help="readout payload (default 8bit)")
    p.add_argument("--loop-frames", type=int, default=480, help="frames through the whole loop per runtime (default 480)")
    p.add_argument("--realtime-windows", type=int, default=0, metavar="N",
                   help="also run the loop paced at the source's fps for N windows (e2e as a live camera sees it)")
    p.add_argument("--target-fps", type=float, default=30.0, help="headroom = loop fps / this (default 30)")
    p.add_argument("--pin-core", type=int, default=None, metavar="CPU", help="run on this one CPU only (Linux)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="write latency histograms (needs matplotlib)")
    p.set_defaults(func=main_bench)


def main_bench(args: argparse.Namespace) -> int:
    for name in ("json", "plot"):
        out = getattr(args, name)
        if out is not None and not out.absolute().parent.is_dir():
            raise InputError(f"--{name}: folder {out.absolute().parent} does not exist")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:   # fail before measuring
        raise InputError("--plot needs matplotlib (pip install matplotlib); it is not in the base install") from None
    options = BenchOptions(model=args.model, task=args.task,
                           runtimes=tuple(r.strip() for r in args.runtime.split(",") if r.strip()),
                           threads=args.threads, warmup=args.warmup, runs=args.runs, source=args.source,
                           payload=args.payload, loop_frames=args.loop_frames,
                           realtime_windows=args.realtime_windows, target_fps=args.target_fps,
                           pin_core=args.pin_core)
    results, raw = run_bench(options=options, progress=lambda text: print(f"bench: {text}", file=sys.stderr))
    print(format_table(results))
    if args.json is not None:
        with atomic_open(args.json, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        print(f"wrote {plot_histograms(raw, args.plot)}")
    return 0
