"""The PixelRNN camera loop: a webcam, video file or test pattern through the simulated sensor to the
host decoder, one decision per 16-frame window.

    python edge/run_camera.py [--source auto|INDEX|PATH|test] [--model BUNDLE|default]
        [--task gesture|lips] [--runtime onnxruntime|tflite|lce] [--headless] [--max-frames N]
        [--json-out FILE] [--link inproc|udp://127.0.0.1:PORT] [--payload 8bit|1bit|prior [--prior FILE]]

Run as a script, BLAS is limited to one thread (unless OPENBLAS_NUM_THREADS etc. are set): the
sensor stage's small matrix products measured faster and far steadier that way (p99 per frame
0.9 ms instead of 6 ms on a busy 2-core machine).

Exit codes: 0 normal end (end of file, --max-frames, Ctrl-C, q in the window), 2 bad input
(one line on stderr), 3 a camera that does not open or stops delivering frames after the retries.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:      # run as a script: import the repository's packages
    import os as _os
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(_var, "1")            # before numpy: see the module docstring
    _HERE = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
        sys.path.pop(0)                              # edge/ itself must not shadow other modules
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from contextlib import ExitStack  # noqa: E402

from edge.capture import END_LOST, CameraLost, CaptureOptions, make_source  # noqa: E402
from edge.display import Display  # noqa: E402
from edge.decoder import RUNTIMES  # noqa: E402
from edge.link import parse_link  # noqa: E402
from edge.models import TASKS, resolve_bundle  # noqa: E402
from edge.packet import DEFAULT_LEVEL, PAYLOADS  # noqa: E402
from edge.pipeline import PipelineOptions, RunResult, run_pipeline  # noqa: E402
from edge.roi import parse_roi  # noqa: E402
from edge.sensor_stage import SensorOptions  # noqa: E402
from core.argtypes import positive_int as _positive_int  # noqa: E402
from core.errors import InputError  # noqa: E402
from firmware_sim.noise import NoiseModel  # noqa: E402

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


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="PixelRNN camera loop: frames -> simulated in-pixel RNN -> one "
                "readout packet per 16 frames -> host decoder -> class and score per window. Video "
                "files and the test pattern run as fast as possible (every frame, none dropped) "
                "unless --realtime; live cameras keep only the newest frame.")
    p.add_argument("--source", default="auto", metavar="auto|INDEX|PATH|test",
                   help="camera index, video file, 'test' (moving test pattern) or 'auto' (camera 0 if "
                        "it opens, else the test pattern); default auto")
    p.add_argument("--model", default="default", metavar="BUNDLE|default",
                   help="export bundle folder, or 'default': the package's bundled model of --task "
                        "(pixelrnn/models/<task>, or $PIXELRNN_MODELS/<task>)")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="default: the bundle's task (gesture when --model is default); lips uses the "
                        "mouth ROI, gesture the centre square")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="host decoder runtime (tflite = ai-edge-litert, else tflite-runtime); default onnxruntime")
    p.add_argument("--threads", type=_positive_int, default=1, help="runtime threads (default 1)")
    p.add_argument("--headless", action="store_true",
                   help="no window: one JSON line per window on stdout (a window needs a GUI build of OpenCV)")
    p.add_argument("--max-frames", type=_positive_int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                   help="also write JSON Lines: one object per window, then {'summary': ...}")
    p.add_argument("--link", type=str, default="inproc", metavar="inproc|udp://127.0.0.1:PORT",
                   help="readout link: in-process queue (default) or UDP to a host process (port 0: any free port)")
    p.add_argument("--payload", choices=tuple(PAYLOADS), default="8bit",
                   help="readout payload: 8bit levels (4,096 B/window), 1bit signs (512 B/window, less accurate) "
                        "or prior: the 1bit signs losslessly arithmetic-coded under a learned prior (--prior)")
    p.add_argument("--prior", type=Path, default=None, metavar="FILE.npz",
                   help="--payload prior: the prior file (pixelrnn generate export-prior); sensor and host "
                        "both load it")
    p.add_argument("--level", type=_positive_int, default=DEFAULT_LEVEL,
                   help=f"1bit only: the host maps bits to levels 127 +- LEVEL (default {DEFAULT_LEVEL}, o = +-5)")
    p.add_argument("--roi", default=None, metavar="center|mouth|x,y,w,h",
                   help="region of interest (default: mouth for lips, center for gesture)")
    p.add_argument("--realtime", action="store_true", help="pace files and the test pattern at their own fps")
    p.add_argument("--noise", default="off", metavar="off|authors|FILE",
                   help="analog noise in the simulated sensor (default off)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--retries", type=int, default=3, help="reopen attempts for a camera that stops delivering (default 3)")
    p.add_argument("--retry-delay", type=_seconds, default=0.5,
                   help="seconds x attempt before each reopen (default 0.5)")
    p.add_argument("--frame-timeout", type=_seconds, default=2.0,
                   help="a camera silent this long counts as one failed read (default 2 s)")
    return p


def build(args: argparse.Namespace, *, source=None):
    """Arguments -> (bundle, source, options, note); bad input raises a one-line InputError."""
    link = parse_link(args.link)
    roi = parse_roi(args.roi) if args.roi is not None else None
    try:
        noise = NoiseModel.from_spec(args.noise)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.retries < 0:
        raise InputError(f"--retries must be >= 0, got {args.retries}")
    if args.level > 127:
        raise InputError(f"--level must be 1..127, got {args.level}")
    if args.json_out is not None and not args.json_out.absolute().parent.is_dir():
        raise InputError(f"--json-out: folder {args.json_out.absolute().parent} does not exist")
    bundle = resolve_bundle(model=args.model, task=args.task)
    if noise.model_id and noise.model_id != bundle.model_id:
        raise InputError(f"--noise calibration is for model {noise.model_id}, the bundle is {bundle.model_id}")
    if roi is None:
        roi = "mouth" if bundle.task == "lips" else "center"
    note = ""
    if source is None:
        source, note = make_source(args.source)
    options = PipelineOptions(
        runtime=args.runtime, threads=args.threads, link=link, roi=roi,
        sensor=SensorOptions(payload=args.payload, level=args.level, noise=noise, seed=args.seed, prior=args.prior),
        capture=CaptureOptions(realtime=args.realtime, retries=args.retries, retry_delay=args.retry_delay),
        max_frames=args.max_frames, frame_timeout=args.frame_timeout)
    return bundle, source, options, note


def format_summary(result: RunResult) -> str:
    """The human-readable end-of-run summary (several lines)."""
    s = result.summary
    b, d, lat, rt = s["bytes"], s["drops"], s["latency_ms"], s["runtime"]
    head = (f"summary: {END_TEXT.get(result.end, result.end)} after {s['frames']} frames, {s['windows']} "
            f"windows, {s['decisions']} decisions in {s['seconds']:.2f} s: {s['fps']:.1f} fps")
    if s["source_fps"]:
        head += f" ({s['headroom_vs_source']:.1f}x the source's {s['source_fps']:g} fps)"
    malformed = sum(s["malformed"].values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["malformed"].items()))
    stages = "  ".join(f"{name} {v['p50']:.3f}/{v['p99']:.3f}" for name, v in lat.items() if "p50" in v)
    lines = [
        head,
        f"  source {s['source']}; model {s['task']} {s['model_id']} ({rt.get('backend')} {rt.get('version')}, "
        f"{rt.get('threads')} thread(s)); link {s['link']}; payload {s['payload']}",
        f"  drops: capture {d['capture']}, lost windows {d['lost_windows']}, malformed packets {malformed}"
        + (f" ({reasons})" if reasons else "") + f"; reconnects {d['reconnects']}; "
        f"{d['partial_window_frames']} trailing frames not a full window",
        f"  latency ms p50/p99: {stages}",
    ]
    if s["windows"]:
        lines.append(f"  link: {b['per_window']:,.0f} bytes per window ({b['payload_per_window']:,} payload + "
                     f"{b['header_per_window']} header) vs raw 16x64x64 {b['raw_per_window_64']:,} "
                     f"({b['ratio_64']:.1f}x less) and 16x256x256 {b['raw_per_window_256']:,} "
                     f"({b['ratio_256']:.1f}x less); {b['sent']:,} bytes sent in total")
    return "\n".join(lines)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace, *, source=None, stop: threading.Event | None = None) -> int:
    bundle, source, options, note = build(args, source=source)
    if note:
        print(f"{PROG}: {note}", file=sys.stderr)
    with ExitStack() as stack:
        display = None
        if not args.headless:
            display = stack.enter_context(Display())
            if not display.available:
                print(f"{PROG}: {display.reason}: running headless (JSON lines on stdout)", file=sys.stderr)
                display = None
        headless = display is None
        jsonl = stack.enter_context(open(args.json_out, "w", encoding="utf-8")) if args.json_out else None

        def on_decision(decision: dict) -> None:
            line = json.dumps(decision)
            if headless:
                print(line, flush=True)
            if jsonl is not None:
                jsonl.write(line + "\n")
                jsonl.flush()

        result = run_pipeline(source=source, bundle=bundle, options=options, on_decision=on_decision,
                              on_note=lambda text: print(f"{PROG}: {text}", file=sys.stderr),
                              display=display, stop=stop)
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
    args = get_args_parser().parse_args(argv)
    previous = previous_int = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        # Ctrl-C must work even when started from a shell that ignores SIGINT for background jobs
        # (Python keeps an inherited SIG_IGN): install the default KeyboardInterrupt handler.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args, source=source, stop=stop)
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
