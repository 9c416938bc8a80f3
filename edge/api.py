"""The camera loop's Python API, in the style of MediaPipe Tasks: options -> a loop -> decisions.

::

    from edge import CameraLoop, CameraLoopOptions

    # live-stream mode: capture thread, sensor stage, link and host over a whole source
    with CameraLoop.create_from_options(CameraLoopOptions(task="lips")) as loop:
        result = loop.run("grid_s1_bbaf2n.mpg", on_decision=lambda d: print(d.label, d.score))

    # video mode: feed frames yourself, synchronously; a Decision every 16th frame
    with CameraLoop.create_from_bundle("bundles/lips", payload="1bit") as loop:
        for frame in frames:
            decision = loop.process_frame(frame)

Everything a run needs is in :class:`CameraLoopOptions` (frozen, validated when made: a bad value
is a one-line :class:`core.errors.InputError` naming the option). What the script
``edge/run_camera.py`` defaults from the task (its region of interest) and the check of a noise
calibration against the bundle's sensor program live here and in :mod:`edge.models`, so a lips
bundle gets the mouth ROI however it is driven.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError
from core.runtimes import runtime_names
from edge.capture import CaptureOptions, make_source
from edge.decision import Decision
from edge.decoder import HostDecoder
from edge.host import HostStage
from edge.link import LinkSpec, parse_link
from edge.models import TASKS, Bundle, check_noise, resolve_bundle, task_defaults
from edge.payloads import DEFAULT_LEVEL
from edge.pipeline import PipelineOptions, RunResult, run_pipeline
from edge.roi import MouthOptions, make_roi, parse_roi
from edge.sensor_stage import Preprocessor, SensorOptions, SensorStage
from edge.serve import LiveServer, ServeOptions
from firmware_sim.noise import NoiseModel

__all__ = ["CameraLoop", "CameraLoopOptions", "Decision", "RunResult"]

Box = tuple[int, int, int, int]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_seconds(value, *, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class CameraLoopOptions:
    """What one camera loop runs, and how. Fields keep the values given; parsed forms are properties."""

    bundle_path: str | os.PathLike | None = None   # export bundle folder; None: the bundled model of task
    task: str | None = None             # gesture | lips; None: the bundle's own (gesture if no bundle)
    runtime: str = "onnxruntime"        # host decoder runtime (a name in core.runtimes)
    threads: int = 1                    # runtime threads
    link: str | LinkSpec = "inproc"     # readout link: inproc, or udp://IPV4:PORT to a host process
    link_key: str | os.PathLike | None = None   # udp: shared MAC key file (made if absent); None: per-run key
    payload: str = "8bit"               # readout payload (a name in the edge.payloads registry); a model
                                        # with another readout layout sends its own (8bit stands for it)
    prior: str | os.PathLike | None = None   # the payload's file, for payloads that need one (the prior)
    level: int = DEFAULT_LEVEL          # level-carrying payloads: the host maps bits to 127 +- level
    roi: str | Box | None = None        # center | mouth | "x,y,w,h" | (x, y, w, h); None: the task's
    noise: str | NoiseModel = "off"     # off | authors | a calibration JSON file | a NoiseModel
    seed: int = 0                       # noise seed
    realtime: bool = False              # pace files and the test pattern at their own fps
    max_frames: int | None = None       # run(): stop after this many frames
    retries: int = 3                    # reopen attempts for a camera that stops delivering
    retry_delay: float = 0.5            # seconds x attempt before each reopen
    frame_timeout: float = 2.0          # a camera silent this long counts as one failed read
    mouth: MouthOptions = field(default_factory=MouthOptions)   # the mouth ROI's face detector
    serve: str | int | None = None      # run(): a live web page on "[HOST:]PORT" (host 127.0.0.1, port 0: any)

    def __post_init__(self) -> None:
        checks = (
            (self.bundle_path is None or isinstance(self.bundle_path, (str, os.PathLike)),
             f"bundle_path must be a folder path or None, got {type(self.bundle_path).__name__}"),
            (self.task is None or self.task in TASKS,
             f"task must be one of {', '.join(TASKS)} or None, got {self.task!r}"),
            (self.runtime in runtime_names(),
             f"runtime must be one of {', '.join(runtime_names())}, got {self.runtime!r}"),
            (_is_int(self.threads) and self.threads >= 1, f"threads must be an integer >= 1, got {self.threads!r}"),
            (_is_int(self.seed), f"seed must be an integer, got {self.seed!r}"),
            (isinstance(self.realtime, bool), f"realtime must be True or False, got {self.realtime!r}"),
            (self.max_frames is None or (_is_int(self.max_frames) and self.max_frames >= 1),
             f"max_frames must be an integer >= 1 or None, got {self.max_frames!r}"),
            (_is_int(self.retries) and self.retries >= 0, f"retries must be an integer >= 0, got {self.retries!r}"),
            (_is_seconds(self.retry_delay, low=0, high=60), f"retry_delay must be 0..60 s, got {self.retry_delay!r}"),
            (_is_seconds(self.frame_timeout, low=1e-3, high=60),
             f"frame_timeout must be 0.001..60 s, got {self.frame_timeout!r}"),
            (isinstance(self.mouth, MouthOptions), f"mouth must be a MouthOptions, got {type(self.mouth).__name__}"),
            (self.link_key is None or (isinstance(self.link_key, (str, os.PathLike))
                                       and bool(os.fspath(self.link_key))),
             f"link_key must be a key file path or None, got {self.link_key!r}"),
        )
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        link = self._parse_link()
        if self.link_key is not None and link.kind != "udp":
            raise InputError(f"link_key is used only with a udp link (the in-process link carries no MAC), "
                             f"the link is {link.url}")
        derived = {"_link": link, "_roi": None if self.roi is None else parse_roi(self.roi),
                   "_noise": self._parse_noise(), "_serve": self._parse_serve()}
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_sensor", SensorOptions(payload=self.payload, level=self.level,
                                                          noise=self._noise, seed=self.seed, prior=self.prior))

    def _parse_link(self) -> LinkSpec:
        if isinstance(self.link, LinkSpec):
            return self.link
        try:
            return parse_link(self.link)
        except InputError:
            raise InputError(f"link must be 'inproc' or 'udp://IPV4:PORT' (port 0: any free port), "
                             f"got {self.link!r}") from None

    def _parse_serve(self) -> ServeOptions | None:
        if self.serve is None:
            return None
        try:
            return ServeOptions.from_spec(self.serve)
        except InputError:
            raise InputError(f"serve must be '[HOST:]PORT' (PORT 0..65535, 0: any free port; an IPv6 host in "
                             f"brackets) or None, got {self.serve!r}") from None

    def _parse_noise(self) -> NoiseModel:
        if isinstance(self.noise, NoiseModel):
            return self.noise
        if not isinstance(self.noise, (str, os.PathLike)):
            raise InputError(f"noise must be off, authors, a calibration file or a NoiseModel, got {self.noise!r}")
        try:
            return NoiseModel.from_spec(os.fspath(self.noise))
        except ValueError as exc:
            raise InputError(str(exc)) from None

    @property
    def link_spec(self) -> LinkSpec:
        return self._link

    @property
    def serve_options(self) -> ServeOptions | None:
        """The live page's address and limits (edge.serve), or None: no page."""
        return self._serve

    @property
    def noise_model(self) -> NoiseModel:
        return self._noise

    @property
    def roi_spec(self) -> str | Box | None:
        """The parsed roi (a mode or a box), or None: the task's default."""
        return self._roi

    def pipeline_options(self, *, roi: str | Box) -> PipelineOptions:
        """These options as the pipeline's, with ``roi`` resolved."""
        return PipelineOptions(
            runtime=self.runtime, threads=int(self.threads), link=self._link, roi=roi, sensor=self._sensor,
            capture=CaptureOptions(realtime=self.realtime, retries=int(self.retries), retry_delay=self.retry_delay),
            mouth=self.mouth, max_frames=None if self.max_frames is None else int(self.max_frames),
            frame_timeout=self.frame_timeout, link_key=self.link_key)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(CameraLoopOptions))


class _FrameStream:
    """The synchronous chain behind :meth:`CameraLoop.process_frame`: front end, sensor stage, and
    the host stage in this process (packets go straight from one to the other)."""

    def __init__(self, *, bundle: Bundle, options: PipelineOptions) -> None:
        self.sensor = SensorStage(weights=bundle.sensor, options=options.sensor)
        self.pre = Preprocessor(make_roi(options.roi, mouth=options.mouth), size=self.sensor.size)
        decoder = HostDecoder(bundle=bundle, runtime=options.runtime, threads=options.threads)
        states = options.sensor.payload_options.open().states     # the host's own copy, as in edge.pipeline
        self.host = HostStage(decoder=decoder, expect_model=self.sensor.model_id, states=states)

    def close(self) -> None:
        self.pre.roi.close()               # the mouth ROI's detector thread, if any

    def push(self, frame: np.ndarray, *, t_ns: int) -> Decision | None:
        image = self.pre(frame, last_of_window=self.sensor.next_is_last)
        packet = self.sensor.push(image, t_ns=t_ns)
        if packet is None:
            return None
        data = self.host.handle(packet)
        return None if data is None else Decision.from_dict(data)


class CameraLoop:
    """A verified model bundle with its options. Two running modes: :meth:`process_frame` (video:
    you feed frames, decisions come back synchronously) and :meth:`run` (live stream: a camera,
    file or test pattern through the whole threaded pipeline, decisions to a callback). Each
    :meth:`run` starts a fresh sensor stream; :meth:`process_frame` keeps one stream across calls.
    Make one with :meth:`create_from_options` or :meth:`create_from_bundle`; close it (or use
    ``with``) when done."""

    def __init__(self, *, bundle: Bundle, options: CameraLoopOptions) -> None:
        if not isinstance(bundle, Bundle):
            raise InputError(f"bundle must be an edge.models.Bundle, got {type(bundle).__name__}")
        if not isinstance(options, CameraLoopOptions):
            raise InputError(f"options must be a CameraLoopOptions, got {type(options).__name__}")
        check_noise(noise=options.noise_model, bundle=bundle)
        self._bundle = bundle
        self._options = options
        self._roi = options.roi_spec if options.roi_spec is not None else task_defaults(bundle.task).roi
        self._pipeline = options.pipeline_options(roi=self._roi)
        self._stream: _FrameStream | None = None
        self._last_t_ns: int | None = None
        self._closed = False

    # -- making one --------------------------------------------------------------------------------
    @classmethod
    def create_from_options(cls, options: CameraLoopOptions) -> "CameraLoop":
        """Resolve and verify the bundle (``bundle_path``, or the bundled model of ``task``)."""
        if not isinstance(options, CameraLoopOptions):
            raise InputError(f"options must be a CameraLoopOptions, got {type(options).__name__}")
        return cls(bundle=resolve_bundle(model=options.bundle_path, task=options.task), options=options)

    @classmethod
    def create_from_bundle(cls, path: str | os.PathLike, *, task: str | None = None, **overrides) -> "CameraLoop":
        """A loop over the bundle folder ``path``; ``overrides`` are other :class:`CameraLoopOptions` fields."""
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"path must be a bundle folder, got {type(path).__name__}")
        unknown = sorted(set(overrides) - set(OPTION_NAMES) | set(overrides) & {"bundle_path", "task"})
        if unknown:
            raise InputError(f"unknown option(s) {', '.join(unknown)}; options: "
                             f"{', '.join(n for n in OPTION_NAMES if n not in ('bundle_path', 'task'))}")
        return cls.create_from_options(CameraLoopOptions(bundle_path=path, task=task, **overrides))

    # -- what it is ---------------------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def options(self) -> CameraLoopOptions:
        return self._options

    @property
    def task(self) -> str:
        return self._bundle.task

    @property
    def classes(self) -> list[str]:
        return self._bundle.classes

    @property
    def roi(self) -> str | Box:
        """The region of interest in use: the options' roi, else the task's default."""
        return self._roi

    @property
    def closed(self) -> bool:
        return self._closed

    # -- video mode ----------------------------------------------------------------------------------
    def process_frame(self, frame: np.ndarray, *, t_ns: int | None = None) -> Decision | None:
        """Feed one frame (HxW gray or HxWx3 BGR); the window's Decision on every ``timesteps``-th
        frame (16), else None. ``t_ns``: the frame's capture time on ``time.monotonic_ns()``'s clock
        (default: now), increasing from frame to frame; decisions' ``latency_ms`` count from it."""
        self._check_open()
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
            raise InputError(f"frame must be an HxW or HxWxC numpy array, got "
                             f"{getattr(frame, 'shape', type(frame).__name__)}")
        if t_ns is None:
            t_ns = time.monotonic_ns()
        elif not (_is_int(t_ns) and t_ns >= 0):
            raise InputError(f"t_ns must be an integer >= 0 (nanoseconds), got {t_ns!r}")
        if self._last_t_ns is not None and t_ns <= self._last_t_ns:
            raise InputError(f"t_ns must increase from frame to frame: {t_ns} after {self._last_t_ns}")
        if self._options.link_spec.kind != "inproc":
            raise InputError(f"process_frame decodes in this process: it needs link 'inproc', "
                             f"not {self._options.link_spec.url}")
        if self._stream is None:
            self._stream = _FrameStream(bundle=self._bundle, options=self._pipeline)
        self._last_t_ns = int(t_ns)
        return self._stream.push(frame, t_ns=int(t_ns))

    # -- live-stream mode ----------------------------------------------------------------------------
    def run(self, source, *, on_decision: Callable[[Decision], None] | None = None,
            on_note: Callable[[str], None] | None = None, display=None, stop=None) -> RunResult:
        """Run the pipeline over ``source`` (a camera index, a video path, ``'test'``, ``'auto'`` or a
        frame source object, see :func:`edge.capture.make_source`) until it ends, ``max_frames``,
        Ctrl-C, ``stop`` (a ``threading.Event``), q in ``display`` (an open
        :class:`edge.display.Display`) or a lost camera. ``on_decision`` gets each Decision and
        ``on_note`` one-line notes (e.g. ``auto`` falling back to the test pattern). With the
        ``serve`` option a live web page (:mod:`edge.serve`) runs for the length of the run; its
        URL is in a note."""
        self._check_open()
        for name, fn in (("on_decision", on_decision), ("on_note", on_note)):
            if fn is not None and not callable(fn):
                raise InputError(f"{name} must be callable or None, got {type(fn).__name__}")
        on_decision = on_decision or (lambda decision: None)
        on_note = on_note or (lambda text: None)
        frames, note = make_source(source)
        if note:
            on_note(note)
        serve = self._options.serve_options
        if serve is None:
            return run_pipeline(source=frames, bundle=self._bundle, options=self._pipeline, on_decision=on_decision,
                                on_note=on_note, display=display, stop=stop)
        with LiveServer(options=serve, task=self.task, classes=self.classes,
                        readout=self._bundle.layout.describe(), on_note=on_note) as server:
            result = run_pipeline(source=frames, bundle=self._bundle, options=self._pipeline,
                                  on_decision=on_decision, on_note=on_note, display=display, stop=stop,
                                  publisher=server.publisher)
            server.publisher.finish(end=result.end)
        return result

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the host decoder, the sensor stream and the ROI's detector; later calls raise.
        Closing twice is fine."""
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this CameraLoop is closed: create a new one "
                               "(CameraLoop.create_from_options or create_from_bundle)")

    def __enter__(self) -> "CameraLoop":
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"CameraLoop(task={self.task!r}, bundle={str(self._bundle.path)!r}, roi={self._roi!r}, {state})"
