"""The measurements of ``pixelrnn bench``, each run in a fresh child process (:func:`run_child`).

``stages``: the runtime-independent stages (capture, preprocess, sensor, packet, link) streamed over
the source; ``runtime``: one runtime's load, first inference, host and e2e latency per thread
count, and the whole camera loop. A job is a plain dict (it crosses to a spawned interpreter):
bundle path, warm-up and runs, source, payload name and file, thread counts, loop frames.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import signal
import time

from edge.device import peak_rss_mb

STAGES = ("capture", "preprocess", "sensor_frame", "sensor_readout_frame", "packet_encode",
          "packet_decode", "link_inproc", "link_udp")
CHILD_TIMEOUT = 900.0
E2E_WINDOWS = 8            # distinct windows whose last frame is replayed for e2e and host timing


def _open_source(spec: str, *, loop: bool):
    from edge.capture import FileSource, TestPattern

    source = TestPattern() if spec == "test" else FileSource(spec, loop=loop)
    source.open()
    return source


def _sensor_options(job: dict, **kw):
    from edge.sensor_stage import SensorOptions

    return SensorOptions(payload=job["payload"], prior=job.get("prior"), **kw)


def _mouth_options(job: dict):
    from edge.roi import MouthOptions

    return MouthOptions(threaded=job.get("mouth_threaded", True))


def _pipeline_parts(bundle, job: dict):
    from edge.roi import make_roi
    from edge.sensor_stage import Preprocessor, SensorStage

    roi = "mouth" if bundle.task == "lips" else "center"
    pre = Preprocessor(make_roi(roi, mouth=_mouth_options(job)), size=bundle.sensor.frontend.size)
    sensor = SensorStage(weights=bundle.sensor, options=_sensor_options(job, stream_id=1))
    return pre, sensor, roi


def stages_job(job: dict) -> dict:
    """Runtime-independent stages, streamed over warm-up + timed windows of the source."""
    import numpy as np

    from edge.auth import LinkKey
    from edge.link import InprocLink, UdpReceiver, UdpSender
    from edge.models import load_bundle
    from edge.packet import decode_packet

    bundle = load_bundle(job["bundle"])
    warmup, runs = job["warmup"], job["runs"]
    source = _open_source(job["source"], loop=True)
    pre, sensor, _ = _pipeline_parts(bundle, job)
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
    pre.roi.close()
    for i, packet in enumerate(packets[:1] * warmup + packets):
        t0 = time.perf_counter()
        decode_packet(packet, expect_model=bundle.model_id, states=sensor.payload.states,
                      expect_shape=sensor.readout_shape)        # as a host does (a layout's (M*S, S) image)
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
    key = LinkKey.ephemeral()                      # UDP is always authenticated: MAC on send, check on receive
    with UdpReceiver("127.0.0.1", 0) as rx, UdpSender("127.0.0.1", rx.port, key=key) as tx:
        for i in range(warmup + len(packets)):
            packet = packets[i % len(packets)]
            t0 = time.perf_counter()
            tx.send(packet)
            key.open(rx.recv(timeout=1.0) or b"")
            if i >= warmup:
                samples["link_udp"].append(time.perf_counter() - t0)
    return {"samples": samples, "packet_bytes": float(np.mean([len(p) for p in packets])),
            "payload_bytes": sensor.mean_payload_bytes, "windows": sensor.windows,
            "fallback_windows": sensor.fallbacks, "peak_rss_mb": peak_rss_mb()}


def runtime_job(job: dict) -> dict:
    """Load, first inference, host and e2e latency per thread count, and the whole loop, for one runtime."""
    from core.runtimes import version as backend_version
    from edge.decoder import HostDecoder
    from edge.host import HostStage
    from edge.link import InprocLink
    from edge.models import load_bundle

    bundle = load_bundle(job["bundle"])
    backend, warmup, runs = job["backend"], job["warmup"], job["runs"]
    source = _open_source(job["source"], loop=True)
    pre, sensor, roi = _pipeline_parts(bundle, job)
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
        stage = HostStage(decoder=decoder, expect_model=bundle.model_id, states=sensor.payload.states)
        link, e2e = InprocLink(), []
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
    pre.roi.close()
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

    source = TestPattern() if job["source"] == "test" else FileSource(job["source"], loop=True)
    options = PipelineOptions(runtime=backend, threads=job["threads"][0], roi=roi,
                              sensor=_sensor_options(job), mouth=_mouth_options(job),
                              capture=CaptureOptions(realtime=realtime), max_frames=frames)
    s = run_pipeline(source=source, bundle=bundle, options=options).summary
    return {"realtime": realtime, "frames": s["frames"], "windows": s["windows"], "seconds": s["seconds"],
            "fps": s["fps"], "threads": job["threads"][0], "source_fps": s["source_fps"],
            "headroom": s["fps"] / job["target_fps"], "target_fps": job["target_fps"],
            "latency_ms": s["latency_ms"], "drops": s["drops"]}


JOBS = {"stages": stages_job, "runtime": runtime_job}


def _child(conn, kind: str, job: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = JOBS[kind](job)
        conn.send(("ok", out))
    except Exception as exc:  # noqa: BLE001 - reported as one line in the results
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        conn.send(("error", f"{type(exc).__name__}: {text}"))
    finally:
        conn.close()


def run_child(kind: str, job: dict, *, env: dict) -> dict:
    """Run the job ``kind`` (a key of :data:`JOBS`) in a fresh spawned process with ``env`` set;
    its result, or ``{"error": one line}``."""
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
