"""The PixelRNN camera loop's command line: a webcam, video file or test pattern through the
simulated sensor to the host decoder, one decision per 16-frame window. A thin script over the
Python API (:mod:`edge.api`: ``CameraLoop``): argparse, then one ``CameraLoop.run``.

    python edge/run_camera.py [--source auto|INDEX|picamera[:N]|/dev/videoN|URL|PATH|test] [--model BUNDLE|default]
        [--task gesture|lips] [--runtime onnxruntime|tflite|lce] [--headless] [--max-frames N]
        [--json-out FILE] [--link inproc|udp://127.0.0.1:PORT [--link-key FILE]]
        [--payload 8bit|1bit|prior|context|table [--prior FILE]] [--serve [HOST:]PORT]

Also installed as ``pixelrnn-camera``. Run as a script, Python puts ``edge/`` first on
``sys.path``; no module in edge/ shares a name with a standard or installed module (a test checks),
so nothing is shadowed and nothing rewrites ``sys.path``.

Run as a script, BLAS is limited to one thread (unless OPENBLAS_NUM_THREADS etc. are set): the
sensor stage's small matrix products measured faster and far steadier that way (p99 per frame
0.9 ms instead of 6 ms on a busy 2-core machine).

Ctrl-C and SIGTERM end the run cleanly (``interrupted``, exit 0, one line, no traceback) at any
time: run as a script or as ``pixelrnn-camera`` (:mod:`edge.camera_entry`), a signal that arrives
during the imports (about a second) is noted (:mod:`core.early_signals`) and ends the command as
soon as :func:`main` has its handlers in. Merely importing this module installs nothing.

Exit codes: 0 normal end (end of file, --max-frames, Ctrl-C, q in the window), 2 bad input
(one line on stderr), 3 a camera that does not open or stops delivering frames after the retries.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":                           # a command: note Ctrl-C / SIGTERM from now on
    from core.early_signals import record as _record_early_signals

    _record_early_signals()

if __name__ == "__main__" and not __package__:      # run as a script (not -m, not the entry point)
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")             # before numpy: see the module docstring

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

from core.argtypes import positive_int as _positive_int  # noqa: E402
from core.atomic import atomic_open  # noqa: E402
from core.early_signals import take as _take_early_signal  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.runtimes import runtime_names  # noqa: E402
from edge.api import CameraLoop, CameraLoopOptions, Decision, RunResult  # noqa: E402
from edge.auth import load_link_key  # noqa: E402
from edge.capture import END_LOST, CameraLost, make_source  # noqa: E402
from edge.display import Display  # noqa: E402
from edge.models import TASKS  # noqa: E402
from edge.payloads import (  # noqa: E402
    DEFAULT_LEVEL,
    PayloadOptions,
    file_payload_help,
    file_payload_names,
    get_payload,
    payload_help,
    payload_names,
)
from edge.serve import parse_serve  # noqa: E402

PROG = "run_camera"
EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CAMERA = 0, 1, 2, 3
END_TEXT = {"eof": "end of file", "max_frames": "--max-frames reached", "interrupted": "interrupted",
            "quit": "closed by the user", "stopped": "stopped", "lost": "camera lost"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):      # one line, exit 2 (argparse prints usage over two)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be 0..60 s, got {value}")
    return value


def _serve_address(text: str) -> str:
    try:
        parse_serve(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="PixelRNN camera loop: frames -> simulated in-pixel RNN -> one "
                "readout packet per 16 frames -> host decoder -> class and score per window. Video "
                "files and the test pattern run as fast as possible (every frame, none dropped) "
                "unless --realtime; live cameras keep only the newest frame.")
    p.add_argument("--source", default="auto", metavar="auto|INDEX|picamera[:N]|/dev/videoN|URL|PATH|test",
                   help="camera index, 'picamera[:N]' (a Pi camera module through picamera2/libcamera; on Pi OS "
                        "apt install python3-picamera2, venv with --system-site-packages), a V4L2 device "
                        "(/dev/videoN: USB webcams), an rtsp://, rtsps://, rtmp://, http(s):// stream URL "
                        "(OpenCV's FFmpeg; no GStreamer pipelines: the opencv-python-headless wheels have none; "
                        "a Pi camera module's /dev/video nodes give raw Bayer data: use picamera), a video "
                        "file, 'test' (moving test pattern) or 'auto' (camera 0 if it opens, else the test "
                        "pattern); default auto")
    p.add_argument("--model", default="default", metavar="BUNDLE|default",
                   help="export bundle folder, or 'default': the package's bundled model of --task "
                        "(pixelrnn/models/<task>, or $PIXELRNN_MODELS/<task>)")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="default: the bundle's task (gesture when --model is default); lips uses the "
                        "mouth ROI, gesture the centre square")
    p.add_argument("--runtime", choices=runtime_names(), default="onnxruntime",
                   help="host decoder runtime (tflite = ai-edge-litert, else tflite-runtime); default onnxruntime")
    p.add_argument("--threads", type=_positive_int, default=1, help="runtime threads (default 1)")
    p.add_argument("--headless", action="store_true",
                   help="no window: one JSON line per window on stdout (a window needs a GUI build of OpenCV)")
    p.add_argument("--max-frames", type=_positive_int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                   help="also write JSON Lines: one object per window, then {'summary': ...}")
    p.add_argument("--link", type=str, default="inproc", metavar="inproc|udp://127.0.0.1:PORT",
                   help="readout link: in-process queue (default) or UDP to a host process (port 0: any free port)")
    p.add_argument("--link-key", type=Path, default=None, metavar="FILE",
                   help="--link udp:// only: the shared key that authenticates every packet (HMAC-SHA256); "
                        "created (32 random bytes, mode 0600) if absent, refused if group/others can read it; "
                        "default: a random key for this run only (see docs/SECURITY.md)")
    p.add_argument("--payload", choices=payload_names(), default="8bit",
                   help=f"readout payload (default 8bit): {payload_help()}")
    p.add_argument("--prior", type=Path, default=None, metavar="FILE.npz",
                   help=f"the payload's file, for {file_payload_help()}; sensor and host both load it")
    p.add_argument("--level", type=_positive_int, default=DEFAULT_LEVEL,
                   help=f"{'/'.join(n for n in payload_names() if get_payload(n).uses_level)} only: the host "
                        f"maps bits to levels 127 +- LEVEL (default {DEFAULT_LEVEL}, o = +-5)")
    p.add_argument("--roi", default=None, metavar="center|mouth|x,y,w,h",
                   help="region of interest (default: mouth for lips, center for gesture)")
    p.add_argument("--realtime", action="store_true", help="pace files and the test pattern at their own fps")
    p.add_argument("--noise", default="off", metavar="off|authors|FILE",
                   help="analog noise in the simulated sensor (default off)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--retries", type=int, default=3,
                   help="reopen attempts for a camera that stops delivering (default 3)")
    p.add_argument("--retry-delay", type=_seconds, default=0.5,
                   help="seconds x attempt before each reopen (default 0.5)")
    p.add_argument("--frame-timeout", type=_seconds, default=2.0,
                   help="a camera silent this long counts as one failed read (default 2 s)")
    p.add_argument("--serve", type=_serve_address, default=None, metavar="[HOST:]PORT",
                   help="also serve a live web page for the run (decision, last readout, latency/fps/link "
                        "charts; works with --headless): HOST defaults to 127.0.0.1 (this machine only; "
                        "0.0.0.0 for every interface, with a warning: no password), PORT 0 picks a free one; "
                        "the URL is printed on stderr")
    return p


def _check_payload_args(args: argparse.Namespace) -> None:
    """--payload with --prior, in the flags' words (the library's messages name no flags)."""
    codec = get_payload(args.payload)
    if codec.open_state is not None and args.prior is None:
        raise InputError(f"--payload {codec.name} needs --prior FILE.npz ({codec.file_hint})")
    if codec.open_state is None and args.prior is not None:
        raise InputError(f"--prior is only used with --payload {' or '.join(file_payload_names())} "
                         f"(the payload is {codec.name})")
    if args.prior is not None:
        try:
            PayloadOptions(name=codec.name, level=args.level, file=args.prior).open()
        except InputError as exc:
            raise InputError(f"--prior: {exc}") from None


def _check_link_key_args(args: argparse.Namespace) -> None:
    """--link-key with --link udp://, and a usable key file, in the flags' words."""
    if args.link_key is None:
        return
    if not args.link.startswith("udp://"):
        raise InputError(f"--link-key is only used with --link udp://IPV4:PORT (the link is {args.link})")
    try:
        load_link_key(path=args.link_key)
    except InputError as exc:
        raise InputError(f"--link-key: {exc}") from None


def options_from_args(args: argparse.Namespace) -> CameraLoopOptions:
    """Parsed arguments -> the loop's options (validated there: a bad value is a one-line InputError)."""
    return CameraLoopOptions(
        bundle_path=None if args.model == "default" else args.model, task=args.task, runtime=args.runtime,
        threads=args.threads, link=args.link, link_key=args.link_key, payload=args.payload, prior=args.prior,
        level=args.level,
        roi=args.roi, noise=args.noise, seed=args.seed, realtime=args.realtime, max_frames=args.max_frames,
        retries=args.retries, retry_delay=args.retry_delay, frame_timeout=args.frame_timeout,
        serve=getattr(args, "serve", None))


def format_summary(result: RunResult) -> str:
    """The human-readable end-of-run summary (several lines)."""
    s = result.summary
    b, d, lat, rt = s["bytes"], s["drops"], s["latency_ms"], s["runtime"]
    head = (f"summary: {END_TEXT.get(result.end, result.end)} after {s['frames']} frames, {s['windows']} "
            f"windows, {s['decisions']} decisions in {s['seconds']:.2f} s: {s['fps']:.1f} fps")
    if s["source_fps"]:
        head += f" ({s['headroom_vs_source']:.1f}x the source's {s['source_fps']:g} fps)"
    auth = s.get("link_auth")
    link = s["link"] + (f" (MAC {auth['mac']}, key {auth['key']})" if auth else "")
    malformed = sum(s["malformed"].values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["malformed"].items()))
    stages = "  ".join(f"{name} {v['p50']:.3f}/{v['p99']:.3f}" for name, v in lat.items() if "p50" in v)
    lines = [
        head,
        f"  source {s['source']}; model {s['task']} {s['model_id']} ({rt.get('backend')} {rt.get('version')}, "
        f"{rt.get('threads')} thread(s)); link {link}; payload {s['payload']}"
        + (f" (readout {s['readout_layout']['describe']})" if s.get("readout_layout") else ""),
        f"  drops: capture {d['capture']}, lost windows {d['lost_windows']}, malformed packets {malformed}"
        + (f" ({reasons})" if reasons else "") + f"; reconnects {d['reconnects']}; "
        f"{d['partial_window_frames']} trailing frames not a full window",
        f"  latency ms p50/p99: {stages or 'nothing measured'}",
        f"  roi: {_roi_text(s['roi'])}",
    ]
    if s["windows"]:
        lines.append(f"  link: {b['per_window']:,.0f} bytes per window ({b['payload_per_window']:,} payload + "
                     f"{b['header_per_window']} header) vs raw 16x64x64 {b['raw_per_window_64']:,} "
                     f"({b['ratio_64']:.1f}x less) and 16x256x256 {b['raw_per_window_256']:,} "
                     f"({b['ratio_256']:.1f}x less); {b['sent']:,} bytes sent in total")
    return "\n".join(lines)


def _roi_text(roi: dict) -> str:
    """The summary's ROI line: the mode, and for the mouth ROI how its face detector ran."""
    text = roi["mode"]
    if "detector" in roi:
        text += f" (face detector {roi['detector']}: {roi['face_detections']} faces found"
        if "runs" in roi:
            text += (f" in {roi['runs']} runs, {roi['replaced_frames']} frames replaced by newer ones, "
                     f"{roi['errors']} errors, {roi['busy_ms']:,.0f} ms busy")
        text += ")"
    if roi.get("fallback_frames"):
        text += f"; {roi['fallback_frames']} frames on the centre fallback (no face yet)"
    return text


class _Signals:
    """SIGINT / SIGTERM for one run: the first sets the run's ``stop`` event, so the loop ends between
    frames and ends in order (end packet, host counters, the last decision written); a second one
    raises KeyboardInterrupt at once. Raising at the first would land at any line: inside a
    decision's write (the jsonl then lacks a decision stdout has) or a counter's update."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received = False

    def __call__(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        self.stop.set()


def _note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def run(args: argparse.Namespace, *, source=None, stop: threading.Event | None = None,
        signals: _Signals | None = None) -> int:
    """Run the loop the arguments describe; the exit code (bad input raises, see :func:`main`).
    ``signals``: a run that ``stop`` ended because of a signal reports itself ``interrupted``."""
    _check_payload_args(args)
    _check_link_key_args(args)
    options = options_from_args(args)
    if args.json_out is not None and not args.json_out.absolute().parent.is_dir():
        raise InputError(f"--json-out: folder {args.json_out.absolute().parent} does not exist")
    with ExitStack() as stack:
        loop = stack.enter_context(CameraLoop.create_from_options(options))
        frames, note = make_source(args.source if source is None else source)
        if note:
            _note(note)
        display = None
        if not args.headless:
            display = stack.enter_context(Display())
            if not display.available:
                print(f"{PROG}: {display.reason}: running headless (JSON lines on stdout)", file=sys.stderr)
                display = None
        headless = display is None
        # atomic: a run that fails (e.g. a decoder that does not load) leaves no empty or partial file
        jsonl = (stack.enter_context(atomic_open(args.json_out, "w", encoding="utf-8", shared=True))
                 if args.json_out else None)

        def on_decision(decision: Decision) -> None:
            line = json.dumps(decision.to_dict())
            if headless:
                print(line, flush=True)
            if jsonl is not None:
                jsonl.write(line + "\n")
                jsonl.flush()

        result = loop.run(frames, on_decision=on_decision, on_note=_note, display=display, stop=stop)
        if signals is not None and signals.received and result.end == "stopped":
            result.end = "interrupted"
            if "end" in result.summary:
                result.summary["end"] = "interrupted"
        if jsonl is not None:
            jsonl.write(json.dumps({"summary": {"end": result.end, **result.summary}}) + "\n")
    print(format_summary(result), file=sys.stderr)
    if result.end == END_LOST:
        print(f"{PROG}: camera lost: {result.message}", file=sys.stderr)
        return EXIT_CAMERA
    if result.message:
        print(f"{PROG}: {result.message}", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None, *, source=None, stop: threading.Event | None = None) -> int:
    """Parse ``argv`` and run; ``source`` replaces ``--source`` with a frame-source object (tests)."""
    previous = previous_int = signals = None
    stop = stop if stop is not None else threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C must work even when started from a shell that ignores SIGINT for background jobs
        # (Python keeps an inherited SIG_IGN): our handler replaces it (see _Signals).
        signals = _Signals(stop)
        previous = signal.signal(signal.SIGTERM, signals)
        previous_int = signal.signal(signal.SIGINT, signals)
    try:
        if _take_early_signal() is not None:     # came during the imports (core.early_signals)
            raise KeyboardInterrupt
        args = get_args_parser().parse_args(argv)
        return run(args, source=source, stop=stop, signals=signals)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_OK
    except CameraLost as exc:
        print(f"{PROG}: camera lost: {exc}", file=sys.stderr)
        return EXIT_CAMERA
    except (ValueError, OSError, MemoryError) as exc:      # InputError, BundleError, files
        if os.environ.get("PIXELRNN_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - never a traceback; PIXELRNN_DEBUG=1 shows it
        if os.environ.get("PIXELRNN_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(PIXELRNN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
