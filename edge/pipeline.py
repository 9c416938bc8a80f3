"""The camera loop: capture -> front end -> sensor stage -> readout link -> host stage -> decisions.

:func:`run_pipeline` wires the stages for one run and returns its summary. The host runs in this
process (``inproc``: packets go through an in-process queue and are decoded right away) or in a
child process fed by UDP datagrams (``udp``). Either way only readout packets cross to the host.
Files and the test pattern are processed as fast as the loop runs (every frame, none dropped)
unless ``realtime`` paces them at their own fps. Without a ``roi`` the bundle's task chooses one
(``edge.models.TASK_DEFAULTS``: the mouth for lips, the centre square for gestures).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

from core.errors import InputError
from edge.auth import MAC_BYTES, LinkKey, check_run_nonce, load_link_key, new_run_nonce
from edge.capture import END_EOF, END_LOST, Capture, CaptureOptions, End
from edge.decision import Decision
from edge.decoder import HostDecoder
from edge.display import Display, draw_overlay
from edge.host import HostStage
from edge.link import MAX_DATAGRAM, InprocLink, LinkSpec, UdpSender
from edge.models import Bundle, check_noise, task_defaults
from edge.packet import OVERHEAD_BYTES
from edge.remote import RemoteConfig, RemoteHost
from edge.roi import MouthOptions, make_roi, parse_roi
from edge.sensor_stage import Preprocessor, SensorOptions, SensorStage
from edge.serve import LivePublisher
from edge.stats import Latency, summarize

RAW_64 = 64 * 64               # bytes of one 8-bit 64x64 frame
RAW_256 = 256 * 256            # bytes of one 8-bit 256x256 frame (the SCAMP-5 array)
POLL_S = 0.1                   # how often a waiting loop checks for Ctrl-C / stop


@dataclass(frozen=True)
class PipelineOptions:
    runtime: str = "onnxruntime"
    threads: int = 1
    link: LinkSpec = field(default_factory=LinkSpec)
    roi: str | tuple[int, int, int, int] | None = None   # center | mouth | (x, y, w, h); None: the task's
    sensor: SensorOptions = field(default_factory=SensorOptions)
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    mouth: MouthOptions = field(default_factory=MouthOptions)
    max_frames: int | None = None
    frame_timeout: float = 2.0                 # live source: seconds without a frame = one failed read
    link_key: str | os.PathLike | None = None  # UDP: the key file (edge.auth); None: an ephemeral key
    # with link_key: the run's nonce, from which both ends derive the run key (edge.auth). None: a
    # fresh random one, as a run should; fixed only by tests and benchmarks (like SensorOptions.stream_id)
    run_nonce: bytes | None = None

    def __post_init__(self) -> None:
        if self.link_key is not None and not (isinstance(self.link_key, (str, os.PathLike))
                                              and os.fspath(self.link_key)):
            raise InputError(f"link_key must be a file path or None, got {self.link_key!r}")
        if self.run_nonce is not None:
            if self.link_key is None:
                raise InputError("run_nonce is used only with a link_key file")
            check_run_nonce(self.run_nonce)
        if self.max_frames is not None and not (isinstance(self.max_frames, int) and self.max_frames >= 1):
            raise InputError(f"max_frames must be an integer >= 1, got {self.max_frames!r}")
        if not (isinstance(self.frame_timeout, (int, float)) and self.frame_timeout > 0):
            raise InputError(f"frame_timeout must be > 0 s, got {self.frame_timeout!r}")
        if not isinstance(self.link, LinkSpec):
            raise InputError(f"link must be a LinkSpec, got {type(self.link).__name__}")
        if self.roi is not None:
            object.__setattr__(self, "roi", parse_roi(self.roi))


@dataclass
class RunResult:
    end: str                                   # eof | max_frames | interrupted | quit | lost
    message: str
    summary: dict


def run_pipeline(*, source, bundle: Bundle, options: PipelineOptions,
                 on_decision: Callable[[Decision], None] = lambda d: None,
                 on_note: Callable[[str], None] = lambda s: None,
                 display: Display | None = None, stop: threading.Event | None = None,
                 publisher: LivePublisher | None = None) -> RunResult:
    """Run the loop until the source ends, ``max_frames``, Ctrl-C, ``stop``, q in the ``display``
    window (an open :class:`edge.display.Display`, or None: headless) or a lost camera.
    ``on_decision`` gets each window's :class:`edge.decision.Decision`. ``publisher`` (an
    :class:`edge.serve.LivePublisher`, or None) gets the frame and link-byte counts per frame and each
    decision with the last readout, for the live page; its calls never block."""
    if not isinstance(bundle, Bundle):
        raise InputError(f"bundle must be an edge.models.Bundle, got {type(bundle).__name__}")
    if not isinstance(options, PipelineOptions):
        raise InputError(f"options must be a PipelineOptions, got {type(options).__name__}")
    check_noise(noise=options.sensor.noise, bundle=bundle)
    if options.roi is None:
        options = replace(options, roi=task_defaults(bundle.task).roi)
    stop = stop or threading.Event()
    sensor = SensorStage(weights=bundle.sensor, options=options.sensor)
    if options.link.kind == "udp":
        _check_datagram(sensor)
    live = bool(getattr(source, "live", False)) or options.capture.realtime   # mouth detector: own thread
    pre = Preprocessor(make_roi(options.roi, mouth=options.mouth, live=live), size=sensor.size)
    lat = {name: Latency() for name in ("read", "preprocess", "link")}
    counts = {"frames": 0, "decisions": 0, "readout_bytes": 0}
    last = {"decision": None}
    end, message = END_EOF, ""

    def emit(data: dict) -> None:
        decision = Decision.from_dict(data)
        counts["decisions"] += 1
        last["decision"] = decision
        on_decision(decision)
        if publisher is not None:
            publisher.decision(decision, readout=sensor.last_view)

    with ExitStack() as stack:
        stack.callback(pre.roi.close)          # the mouth ROI's detector thread, if any
        remote = host = None
        if options.link.kind == "inproc":
            decoder = HostDecoder(bundle=bundle, runtime=options.runtime, threads=options.threads)
            states = options.sensor.payload_options.open().states     # the host's own copy of any side state
            host = HostStage(decoder=decoder, expect_model=sensor.model_id, states=states)
            tx = stack.enter_context(InprocLink())
            host_info = decoder.describe()
        else:
            key = _link_key(options, on_note)
            # a key file: this run MACs with its own key, derived from the file's and a fresh nonce
            # that the host process gets with the stream id (no replay from another run passes)
            nonce = None if options.link_key is None else options.run_nonce or new_run_nonce()
            remote = stack.enter_context(RemoteHost(RemoteConfig(
                bundle_dir=str(bundle.path), runtime=options.runtime, threads=options.threads,
                host=options.link.host, port=options.link.port,
                prior=None if options.sensor.prior is None else str(options.sensor.prior),
                payload=sensor.codec.name, stream_id=sensor.stream_id,
                link_key=None if options.link_key is None else os.fspath(options.link_key),
                key=key if options.link_key is None else None, run_nonce=nonce)))
            if nonce is not None:
                key = key.for_run(nonce)
            tx = stack.enter_context(UdpSender(options.link.host, remote.port, key=key))
            host_info = remote.decoder
        if display is not None and not display.available:
            display = None
        capture = stack.enter_context(Capture(source, options.capture))
        t_start = time.perf_counter()
        t_first = None
        t_item = time.perf_counter()
        try:
            while not stop.is_set():
                item = capture.get(timeout=POLL_S)
                if item is None:
                    if remote is not None:
                        for d in remote.poll():
                            emit(d)
                    waited = time.perf_counter() - t_item
                    if capture.live and waited >= options.frame_timeout * (options.capture.retries + 1):
                        end, message = END_LOST, (f"{source.name} delivered no frame for {waited:.1f} s; "
                                                  f"gave up after {options.capture.retries} retries")
                        break
                    continue
                t_item = time.perf_counter()
                if isinstance(item, End):
                    end, message = item.reason, item.message
                    break
                t_ns = time.monotonic_ns()
                t0 = time.perf_counter()
                t_first = t_first or t0
                lat["read"].add(item.read_s)
                image = pre(item.image, last_of_window=sensor.next_is_last)
                lat["preprocess"].add(time.perf_counter() - t0)
                packet = sensor.push(image, t_ns=t_ns)
                if packet is not None:
                    t1 = time.perf_counter()
                    tx.send(packet)
                    counts["readout_bytes"] += len(packet)
                    lat["link"].add(time.perf_counter() - t1)
                    if host is not None:
                        decision = host.handle(tx.recv())
                        if decision is not None:
                            emit(decision)
                if remote is not None:
                    for d in remote.poll():
                        emit(d)
                counts["frames"] += 1
                if publisher is not None:
                    publisher.frame(frames=counts["frames"], link_bytes=tx.bytes_out)
                if display is not None:
                    elapsed = max(time.perf_counter() - t_first, 1e-9)
                    shown = draw_overlay(item.image, decision=last["decision"],
                                         fps=counts["frames"] / elapsed, link_bps=tx.bytes_out / elapsed,
                                         readout=sensor.last_view, roi=pre.last_box)
                    if not display.show(shown):
                        end = "quit"
                        break
                if options.max_frames is not None and counts["frames"] >= options.max_frames:
                    end = "max_frames"
                    break
            else:
                end = "stopped"
        except KeyboardInterrupt:
            end = "interrupted"
        t_end = time.perf_counter()
        capture.stop()
        # end of stream: the host counts windows that never arrived
        tx.send(sensor.end_packet())
        if host is not None:
            host.handle(tx.recv())
            host_stats = host.stats()
        else:
            for d in remote.finish():
                emit(d)
            host_stats = remote.stats or {}
            if remote.failure:
                on_note(f"the host process failed: {remote.failure}")
            elif not host_stats:
                on_note("the host process did not report its statistics")
        summary = _summary(source=source, bundle=bundle, options=options, sensor=sensor, capture=capture,
                           tx=tx, lat=lat, counts=counts, host_stats=host_stats, host_info=host_info,
                           seconds=(t_end - t_first) if t_first else 0.0, wall=t_end - t_start, end=end,
                           roi=pre.roi)
    return RunResult(end=end, message=message, summary=summary)


def _check_datagram(sensor: SensorStage) -> None:
    """A UDP link sends one packet per datagram: refuse, before the run, a readout that cannot fit."""
    biggest = OVERHEAD_BYTES + sensor.codec.size(sensor.readout_shape) + MAC_BYTES
    if biggest > MAX_DATAGRAM:
        raise InputError(f"a window's packet ({biggest:,} bytes with its MAC: {sensor.layout.describe()}) does not "
                         f"fit one UDP datagram ({MAX_DATAGRAM:,} bytes); use the inproc link or a model with a "
                         f"smaller readout")


def _link_key(options: PipelineOptions, on_note: Callable[[str], None]) -> LinkKey:
    """The UDP link's key (the key file's, created if absent, or an ephemeral one), with notes on
    an ephemeral key and on a host that listens beyond loopback."""
    if options.link_key is not None:
        key = load_link_key(path=options.link_key)
    else:
        key = LinkKey.ephemeral()
        on_note("no link key file: the UDP link is authenticated with a random key made for this run "
                "and handed to the host process only")
    if not options.link.loopback:
        on_note(f"warning: the host listens on {options.link.url}, reachable from other machines; packets "
                "are authenticated (MAC) but not encrypted (docs/SECURITY.md)")
    return key


def _summary(*, source, bundle, options, sensor, capture, tx, lat, counts, host_stats, host_info,
             seconds, wall, end, roi) -> dict:
    frames = counts["frames"]
    windows = sensor.windows
    fps = frames / seconds if seconds > 0 else 0.0
    src_fps = getattr(source, "fps", None)
    per_window = round(counts["readout_bytes"] / windows, 1) if windows else 0.0
    payload = sensor.mean_payload_bytes   # exact for fixed-size payloads, the real mean for variable ones
    payload = round(payload, 1) if isinstance(payload, float) else payload
    t = sensor.timesteps

    def ms(latency: Latency) -> dict:
        return _short(latency.summary(unit="ms"))

    latency = {"read": ms(lat["read"]), "preprocess": ms(lat["preprocess"]),
               "sensor": ms(sensor.sensor_latency), "encode": ms(sensor.encode_latency),
               "link_send": ms(lat["link"]),
               "packet_decode": _short(summarize(host_stats.get("packet_s", []), unit="ms")),
               "host": _short(summarize(host_stats.get("host_s", []), unit="ms")),
               "e2e": _short(summarize(host_stats.get("e2e_s", []), unit="ms"))}
    roi_info = {"mode": options.roi if isinstance(options.roi, str) else "fixed",
                "fallback_frames": getattr(roi, "fallback_frames", 0)}
    if hasattr(roi, "detections"):                  # the mouth ROI: how its face detector ran
        roi_info["face_detections"] = roi.detections
        roi_info["detector"] = "thread" if roi.threaded else "synchronous"
        roi_info.update(roi.detector_stats)           # thread: runs, replaced frames, errors, busy ms
    return {
        "end": end, "source": getattr(source, "name", str(source)), "source_fps": src_fps,
        "task": bundle.task, "model": str(bundle.path), "model_id": sensor.model_id,
        "runtime": host_info, "link": options.link.url if options.link.kind == "inproc" else
        f"udp://{options.link.host}:{getattr(tx, 'address', ('', 0))[1]}",
        "link_auth": _link_auth(tx, host_stats),
        "payload": sensor.codec.name,
        "frames": frames, "windows": windows, "decisions": counts["decisions"],
        "drops": {"capture": capture.drops, "lost_windows": host_stats.get("lost", 0),
                  "reconnects": capture.reconnects, "partial_window_frames": frames - windows * t},
        "malformed": host_stats.get("malformed", {}),
        "host": {"accepted": host_stats.get("accepted", 0), "ends": host_stats.get("ends", 0)},
        "seconds": round(seconds, 4), "wall_seconds": round(wall, 4), "fps": round(fps, 2),
        "headroom_vs_source": round(fps / src_fps, 2) if src_fps else None,
        "latency_ms": latency,
        "bytes": {"sent": tx.bytes_out, "per_window": per_window, "payload_per_window": payload,
                  "header_per_window": OVERHEAD_BYTES, "raw_per_window_64": t * RAW_64,
                  "raw_per_window_256": t * RAW_256,
                  "ratio_64": round(t * RAW_64 / per_window, 2) if per_window else None,
                  "ratio_256": round(t * RAW_256 / per_window, 2) if per_window else None,
                  "received_by_host": host_stats.get("bytes_in", 0)},
        "roi": roi_info,
        **sensor.layout_summary(),           # a model with another readout layout: {"readout_layout": {...}}
        **sensor.payload_summary(),          # payloads with a file: e.g. {"prior": {file, prior_hash, ...}}
    }


def _link_auth(tx, host_stats: dict) -> dict | None:
    """UDP: the MAC, the key's origin, the host's datagrams in and MAC rejections (count, check time in us)."""
    if not hasattr(tx, "key"):
        return None
    link = host_stats.get("link", {})
    return {"mac": "hmac-sha256/128", "key": tx.key.origin, "packets_in": link.get("packets_in", 0),
            "bad_mac": link.get("bad_mac", 0), "bad_mac_check_us": _short(link.get("bad_mac_check_us", {}))}


def _short(stats: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()
            if k in ("n", "p50", "p99", "mean", "max")}
