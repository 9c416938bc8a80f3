"""Region of interest of a gray frame: centre square, a fixed ``x,y,w,h``, or a mouth from a face.

Cropping and resizing themselves are ``firmware_sim.frontend.crop_resize`` (the same call training
makes); this module only chooses the box.

Mouth ROI (lip reading): OpenCV's Haar frontal-face detector, then a square of side ``0.55 w``
centred at ``(x + 0.5 w, y + 0.78 h)`` of the face box (x, y, w, h): the lower part of the face,
nostrils to chin. These factors were measured on the GRID training crops
(``grid_s1_digits.npz``): on ``videos/grid_s1_bbaf2n.mpg`` the crop of clip ``bbaf2n`` is exactly
x=117, y=170, side 78, and the detector finds the face at about (84, 97, 143, 143). Detection runs
every ``detect_every`` frames on a frame scaled to ``detect_width`` pixels, and the box is
smoothed (exponential moving average), so the crop does not jitter; between detections the last
box is kept. Until a face is found the centre square is used (counted in ``fallback_frames``).

The detector (~10 ms here, several times that on a Pi) either runs inside the frame's call
(synchronous: reproducible boxes, for files processed as fast as possible and tests) or in its own
daemon thread fed the newest due frame (threaded: the per-frame call only crops, so a window's
decision never waits for it; the default for live sources, see :func:`make_roi`). The thread
runs at a low priority (``nice``) so that on one core the decision's critical path wins the CPU,
and stops on ``close()``.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from firmware_sim.frontend import center_square

ROI_MODES = ("center", "mouth")
MOUTH_SIDE = 0.55          # of the face width
MOUTH_CY = 0.78            # of the face height, from its top
FACE_CASCADE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]


def parse_roi(spec: str | Box) -> str | Box:
    """``center`` | ``mouth`` | ``x,y,w,h`` (a string, or four integers; w and h > 0) -> mode or box."""
    if isinstance(spec, str) and spec in ROI_MODES:
        return spec
    if isinstance(spec, str):
        parts = spec.split(",")
    elif isinstance(spec, (tuple, list)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                 for v in spec):
        parts = list(spec)
    else:
        raise InputError(f"roi must be center, mouth or x,y,w,h, got {spec!r}")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"roi {spec!r}: expected center, mouth or four integers x,y,w,h") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise InputError(f"roi {spec!r}: x and y must be >= 0 and w, h > 0")
    return (x, y, w, h)


class CenterROI:
    """The largest centred square."""

    fallback_frames = 0

    def __call__(self, gray: np.ndarray, *, defer: bool = False) -> Box:
        h, w = gray.shape[:2]
        return center_square(w, h)

    def close(self) -> None:
        """Nothing to release (the same interface as :class:`MouthROI`)."""


class FixedROI:
    """A fixed box; refused (one line) if it does not lie inside the frame."""

    fallback_frames = 0

    def __init__(self, box: Box) -> None:
        self.box = tuple(int(v) for v in box)

    def __call__(self, gray: np.ndarray, *, defer: bool = False) -> Box:
        x, y, w, h = self.box
        fh, fw = gray.shape[:2]
        if x + w > fw or y + h > fh:
            raise InputError(f"roi {x},{y},{w},{h} does not fit in the {fw}x{fh} frame")
        return self.box

    def close(self) -> None:
        """Nothing to release (the same interface as :class:`MouthROI`)."""


@dataclass(frozen=True)
class MouthOptions:
    detect_every: int = 8        # run the face detector on every n-th frame (~10 ms each here)
    detect_width: int = 240      # detector input width (frames are scaled down to it)
    smoothing: float = 0.3       # weight of a new detection in the moving average (1 = none)
    min_face: float = 0.25       # smallest face, as a fraction of the frame height
    threaded: bool | None = None  # detector in its own thread; None: yes for a live source (make_roi)
    nice: int = 19               # threaded: the detector thread's nice value (Linux; 0 = unchanged)

    def __post_init__(self) -> None:
        if not (isinstance(self.detect_every, int) and self.detect_every >= 1):
            raise InputError(f"detect_every must be an integer >= 1, got {self.detect_every!r}")
        if not (isinstance(self.detect_width, int) and self.detect_width >= 64):
            raise InputError(f"detect_width must be an integer >= 64, got {self.detect_width!r}")
        if not 0 < self.smoothing <= 1:
            raise InputError(f"smoothing must be in (0, 1], got {self.smoothing!r}")
        if not 0 < self.min_face < 1:
            raise InputError(f"min_face must be in (0, 1), got {self.min_face!r}")
        if self.threaded not in (None, True, False):
            raise InputError(f"threaded must be True, False or None (auto), got {self.threaded!r}")
        if not (isinstance(self.nice, int) and not isinstance(self.nice, bool) and 0 <= self.nice <= 19):
            raise InputError(f"nice must be an integer 0..19, got {self.nice!r}")


def mouth_box(face: Box) -> tuple[float, float, float]:
    """Face box -> mouth square (centre x, centre y, side) in pixels."""
    x, y, w, h = face
    return (x + 0.5 * w, y + MOUTH_CY * h, MOUTH_SIDE * w)


class HaarFaceDetector:
    """``gray -> (x, y, w, h)`` of the largest face in full-frame pixels, or None (OpenCV's Haar
    cascade on the frame scaled to ``detect_width``)."""

    def __init__(self, options: MouthOptions) -> None:
        import cv2

        self.options = options
        path = cv2.data.haarcascades + FACE_CASCADE
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise InputError(f"cannot load OpenCV's face detector {path}: use a fixed roi x,y,w,h instead")

    def __call__(self, gray: np.ndarray) -> Box | None:
        import cv2

        h, w = gray.shape[:2]
        scale = min(1.0, self.options.detect_width / w)
        small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else gray
        side = max(20, int(self.options.min_face * small.shape[0]))
        faces = self._cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(side, side))
        if len(faces) == 0:
            return None
        x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
        return (x / scale, y / scale, fw / scale, fh / scale)


class _DetectorWorker:
    """A daemon thread running ``detect`` on the newest frame handed to it: one pending frame at
    most (a newer one replaces it), one finished result at most (the newest). Holds no reference to
    the :class:`MouthROI`, so an unclosed ROI that is garbage-collected still stops it."""

    def __init__(self, detect, *, nice: int) -> None:
        self._detect = detect
        self._nice = nice
        self._cond = threading.Condition()
        self._pending: np.ndarray | None = None
        self._result: tuple | None = None          # (face or None,) of the newest finished detection
        self._stop = False
        self._working = False                      # a frame is being detected
        self.replaced = 0                          # pending frames replaced before the detector took them
        self.runs = 0                              # detector runs finished
        self.errors = 0                            # detector runs that raised (the box is kept)
        self.busy_s = 0.0                          # detector time, summed
        self._thread = threading.Thread(target=self._run, name="mouth-roi-detector", daemon=True)
        self._thread.start()

    def submit(self, gray: np.ndarray) -> None:
        """Hand over a frame (copied: the caller may reuse its buffer); never waits for the detector."""
        frame = gray.copy()
        with self._cond:
            if self._pending is not None:
                self.replaced += 1
            self._pending = frame
            self._cond.notify()

    def take(self) -> tuple | None:
        """The newest finished result ``(face or None,)`` not taken yet, or None."""
        with self._cond:
            result, self._result = self._result, None
        return result

    def wait_idle(self, timeout: float) -> bool:
        """Block until no frame is pending or being detected (tests, offline tools); False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._working:
                left = end - time.monotonic()
                if left <= 0 or self._stop:
                    return False
                self._cond.wait(left)
        return True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        if self._nice and hasattr(os, "setpriority"):
            try:            # Linux: a thread's own nice value; the loop's critical path wins the core
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (OSError, AttributeError):
                pass
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                frame, self._pending, self._working = self._pending, None, True
            t0 = time.perf_counter()
            try:
                result = (self._detect(frame),)
            except Exception:  # noqa: BLE001 - a failed detection keeps the last box; counted
                result = None
            with self._cond:
                self.busy_s += time.perf_counter() - t0
                self.runs += 1
                if result is None:
                    self.errors += 1
                else:
                    self._result = result
                self._working = False
                self._cond.notify_all()


class MouthROI:
    """Mouth square from the Haar face detector, smoothed over frames (tracking: between detections
    the last smoothed box is kept; before the first one, the centre square).

    Synchronous (``threaded=False``, the default when built directly): the detection due on a frame
    runs inside that frame's call, so the boxes depend only on the frames (reproducible; a file
    processed as fast as possible). Threaded (``threaded=True``): the due frame is handed to a
    daemon worker (:class:`_DetectorWorker`, at most one pending frame, the newest) and each call
    only applies a finished detection and returns the box: it never waits for the detector. Boxes
    then depend on timing. ``detector``: a callable ``gray -> (x, y, w, h) | None`` replacing
    OpenCV's Haar cascade (tests). :meth:`close` (or ``with``) stops the worker."""

    def __init__(self, options: MouthOptions | None = None, *, detector=None,
                 threaded: bool | None = None) -> None:
        self.options = options or MouthOptions()
        if threaded is None:
            threaded = bool(self.options.threaded)
        self.threaded = bool(threaded)
        self._detect = detector if detector is not None else HaarFaceDetector(self.options)
        self._state: np.ndarray | None = None      # smoothed (cx, cy, side)
        self._since = self.options.detect_every - 1     # frames since the last detection: detect now
        self._worker: _DetectorWorker | None = None
        self._finalizer = None
        self._closed = False
        self.detections = 0
        self.fallback_frames = 0

    def detect(self, gray: np.ndarray) -> Box | None:
        """The largest face (x, y, w, h) in full-frame pixels, or None (runs the detector now)."""
        return self._detect(gray)

    def _apply(self, face: Box | None) -> None:
        if face is None:
            return
        self.detections += 1
        new = np.array(mouth_box(face), dtype=float)
        a = self.options.smoothing
        self._state = new if self._state is None else (1 - a) * self._state + a * new

    def _start_worker(self) -> _DetectorWorker:
        self._worker = _DetectorWorker(self._detect, nice=self.options.nice)
        self._finalizer = weakref.finalize(self, self._worker.stop, 0.5)
        return self._worker

    def __call__(self, gray: np.ndarray, *, defer: bool = False) -> Box:
        """The mouth box for this frame. Synchronous: ``defer`` makes a detection due now wait for
        the next frame (the camera loop defers it on a window's last frame, which is on the
        decision's critical path); the first detection is never deferred. Threaded: the call never
        waits for the detector; ``defer`` hands the due frame over on the next call instead, so a
        detection does not start (and, on one core, compete for it) while a decision is computed."""
        self._since += 1
        if self.threaded:
            if self._closed:
                raise InputError("the mouth ROI is closed")
            worker = self._worker or self._start_worker()
            done = worker.take()
            if done is not None:
                self._apply(done[0])
            if self._since >= self.options.detect_every and not defer:
                self._since = 0
                worker.submit(gray)
        elif self._since >= self.options.detect_every and not (defer and self._state is not None):
            self._since = 0
            self._apply(self.detect(gray))
        h, w = gray.shape[:2]
        if self._state is None:
            self.fallback_frames += 1
            return center_square(w, h)
        cx, cy, side = self._state
        s = int(round(min(side, w, h)))
        x0 = int(round(min(max(cx - s / 2, 0), w - s)))
        y0 = int(round(min(max(cy - s / 2, 0), h - s)))
        return (x0, y0, s, s)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Threaded: block until the worker has finished every frame handed to it (its result is
        applied on the next call). True at once when synchronous or not started."""
        return True if self._worker is None else self._worker.wait_idle(timeout)

    @property
    def detector_stats(self) -> dict:
        """Threaded: the worker's counters (runs, replaced frames, errors, busy ms); {} otherwise."""
        w = self._worker
        if w is None:
            return {}
        return {"runs": w.runs, "replaced_frames": w.replaced, "errors": w.errors,
                "busy_ms": round(w.busy_s * 1e3, 3)}

    def close(self) -> None:
        """Stop the detector thread (idempotent); a closed threaded ROI refuses further frames."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()            # stops and joins the worker, once

    def __enter__(self) -> "MouthROI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_roi(spec: str | Box, *, mouth: MouthOptions | None = None, live: bool = False):
    """A ROI chooser for a parsed roi (see :func:`parse_roi`). The mouth ROI's detector runs in its
    own thread when ``mouth.threaded`` says so, or, left at None, when ``live`` (a camera, or a
    source paced at its own rate): there the decision must not wait for the detector. Files and the
    test pattern processed as fast as possible (``live`` False) detect synchronously, so their
    decisions are reproducible. Call ``close()`` on the result when done."""
    if spec == "center":
        return CenterROI()
    if spec == "mouth":
        options = mouth or MouthOptions()
        return MouthROI(options, threaded=live if options.threaded is None else options.threaded)
    return FixedROI(spec)
