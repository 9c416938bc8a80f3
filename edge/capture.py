"""Frame sources (camera, Pi camera, stream URL, video file, moving test pattern) and a threaded
capture around them.

A source is any object with ``name``, ``live`` (a camera: only the newest frame matters),
``fps`` (nominal frames/s or None), ``open()``, ``read() -> frame | None`` and ``release()``.
:class:`Capture` reads it in its own thread:

- live sources keep only the latest frame (a one-slot mailbox; overwritten frames are counted
  as ``drops``) and the camera is asked for a buffer of 1;
- files and the test pattern deliver every frame (a bounded queue; the reader waits), as fast as
  the loop takes them, or at their own rate with ``realtime``;
- a live source that stops delivering is reopened ``retries`` times (waiting ``retry_delay`` x
  attempt); if that fails the capture ends with reason ``lost`` (the camera loop exits 3).
"""
from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from core.errors import InputError

END_EOF = "eof"
END_LOST = "lost"
END_STOPPED = "stopped"


MAX_CAMERA_INDEX = 255        # V4L2 numbers its devices /dev/video0..255


class SourceError(InputError):
    """A source that cannot be used as given (missing or undecodable file, bad spec): exit 2."""


class CameraLost(RuntimeError):
    """A camera that does not open or stopped delivering frames after the retries: exit 3."""


# -- sources -----------------------------------------------------------------------------------
# URL schemes handed to OpenCV's FFmpeg backend (the opencv-python(-headless) wheels build FFmpeg with
# network protocols; no GStreamer, so no GStreamer pipelines)
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
STREAM_TIMEOUT_MS = 5000          # FFmpeg open and read timeouts for a stream URL


def _redact(url: str) -> str:
    """``url`` without a password (``rtsp://user:secret@host`` -> ``rtsp://user:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class CameraSource:
    """``cv2.VideoCapture`` of a camera index, a V4L2 device path (``/dev/video0``) or a stream URL
    (``rtsp://``, ``http://``: through OpenCV's FFmpeg with open/read timeouts), with a one-frame
    buffer where the backend has one. All are live: the newest frame only, reopened when they stop."""

    live = True

    def __init__(self, index: int | str) -> None:
        if isinstance(index, str) and index:
            self.kind = "url" if "://" in index else "device"
            self.name = _redact(index) if self.kind == "url" else index
        elif isinstance(index, int) and not isinstance(index, bool) and 0 <= index <= MAX_CAMERA_INDEX:
            self.kind = "index"
            self.name = f"camera {index}"
        else:
            raise SourceError(f"camera index must be an integer 0..{MAX_CAMERA_INDEX}, got {index!r}")
        self.index = index
        self.fps: float | None = None
        self._cap = None

    def open(self) -> None:
        import cv2

        quiet = hasattr(cv2, "setLogLevel") and hasattr(cv2, "getLogLevel")
        level = cv2.getLogLevel() if quiet else None
        if quiet:
            cv2.setLogLevel(0)           # the backends log each failed probe; we report it in one line
        try:
            if self.kind == "url" and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
                cap = cv2.VideoCapture(self.index, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
            else:
                cap = cv2.VideoCapture(self.index)
        finally:
            if quiet:
                cv2.setLogLevel(level)
        if not cap.isOpened():
            cap.release()
            raise CameraLost(f"{self.name} does not open")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        return frame if ok else None

    def release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


PICAMERA2_MISSING = ("picamera2 is not installed: on Pi OS, apt install python3-picamera2 and make the venv "
                     "with --system-site-packages")
# picamera2's formats (its manual: the byte order in memory) -> how to make OpenCV's BGR of them
PICAMERA_FORMATS = {
    "RGB888": "bgr",        # B, G, R: already BGR
    "BGR888": "rgb",        # R, G, B
    "XRGB8888": "bgrx",     # B, G, R, X: drop X
    "XBGR8888": "rgbx",     # R, G, B, X
    "YUV420": "i420",       # planar Y, U, V (height x 3/2 rows)
}


def _import_picamera2():
    os.environ.setdefault("LIBCAMERA_LOG_LEVELS", "*:ERROR")    # libcamera logs INFO lines to stderr
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        if exc.name in ("picamera2", None):
            raise SourceError(PICAMERA2_MISSING) from None
        raise SourceError(f"picamera2 does not import ({exc.name} is missing): on Pi OS, apt install "
                          f"python3-picamera2 and make the venv with --system-site-packages") from None
    return Picamera2


class PiCameraSource:
    """A Raspberry Pi camera module through picamera2 (libcamera): ``camera_num`` as listed by
    ``Picamera2.global_camera_info()``, a video configuration of ``size`` in ``fmt`` (one of
    :data:`PICAMERA_FORMATS`; RGB888, the default, is B,G,R in memory: OpenCV's BGR as it is).
    Frames come out as BGR uint8 arrays. picamera2 is a system package on Pi OS (python3-picamera2),
    imported when the source is made; a venv needs ``--system-site-packages`` to see it.
    Tested with a stand-in picamera2 module, not yet on a real Pi."""

    live = True

    def __init__(self, camera_num: int = 0, *, size: tuple[int, int] = (640, 480), fmt: str = "RGB888") -> None:
        if not (isinstance(camera_num, int) and not isinstance(camera_num, bool) and camera_num >= 0):
            raise SourceError(f"Pi camera number must be an integer >= 0, got {camera_num!r}")
        if fmt not in PICAMERA_FORMATS:
            raise SourceError(f"Pi camera format must be one of {', '.join(PICAMERA_FORMATS)}, got {fmt!r}")
        if not (len(size) == 2 and all(isinstance(v, int) and v >= 16 for v in size)):
            raise SourceError(f"Pi camera size must be (width, height), each at least 16, got {size!r}")
        self._picamera2 = _import_picamera2()
        self.camera_num = camera_num
        self.size = (int(size[0]), int(size[1]))
        self.fmt = fmt
        self.name = f"Pi camera {camera_num}"
        self.fps: float | None = None
        self._cam = None
        self._convert = PICAMERA_FORMATS[fmt]

    def open(self) -> None:
        try:
            info = list(self._picamera2.global_camera_info() or [])
        except Exception as exc:   # noqa: BLE001 - libcamera's own errors
            raise CameraLost(f"{self.name}: libcamera lists no cameras: "
                             f"{type(exc).__name__}: {str(exc)[:120]}") from None
        if self.camera_num >= len(info):
            listed = ", ".join(f"{i}: {c.get('Model', '?')}" for i, c in enumerate(info)) or "none"
            raise CameraLost(f"Pi camera {self.camera_num} does not exist (libcamera lists {listed})")
        cam = None
        try:
            cam = self._picamera2(self.camera_num)
            config = cam.create_video_configuration(main={"format": self.fmt, "size": self.size})
            cam.configure(config)
            cam.start()
        except Exception as exc:   # noqa: BLE001 - libcamera raises RuntimeError, IndexError, ...
            if cam is not None:
                _close_quietly(cam)
            raise CameraLost(f"{self.name} does not open: {type(exc).__name__}: {str(exc)[:120]}") from None
        main = (config or {}).get("main") or {}
        self._convert = PICAMERA_FORMATS.get(main.get("format", self.fmt), self._convert)
        limits = ((config or {}).get("controls") or {}).get("FrameDurationLimits")
        self.fps = 1e6 / limits[0] if limits and limits[0] else None    # microseconds per frame
        self._cam = cam

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            return None
        try:
            array = self._cam.capture_array("main")
        except (RuntimeError, OSError, TimeoutError):   # a camera that stopped: Capture reopens it
            return None
        return None if array is None else to_bgr(array, self._convert)

    def release(self) -> None:
        if self._cam is not None:
            cam, self._cam = self._cam, None
            _close_quietly(cam)


def _close_quietly(cam) -> None:
    for step in ("stop", "close"):
        try:
            getattr(cam, step)()
        except Exception:   # noqa: BLE001, S110 - releasing a failed camera must not raise
            pass


def to_bgr(array: np.ndarray, layout: str) -> np.ndarray:
    """A picamera2 array in ``layout`` (a :data:`PICAMERA_FORMATS` value) -> contiguous BGR uint8."""
    import cv2

    if layout == "i420":
        if array.ndim != 2 or array.shape[0] % 3:
            raise SourceError(f"YUV420 frame must be 2-D with height x 3/2 rows, got shape {array.shape}")
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_YUV2BGR_I420)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise SourceError(f"expected a height x width x 3 or 4 frame, got shape {array.shape}")
    bgr = array[:, :, :3]
    if layout in ("rgb", "rgbx"):
        bgr = bgr[:, :, ::-1]
    return np.ascontiguousarray(bgr)


class FileSource:
    """A video file decoded with OpenCV; ``loop`` restarts it at the end (for benchmarks)."""

    live = False

    def __init__(self, path: str | os.PathLike, *, loop: bool = False) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.loop = loop
        self.fps: float | None = None
        self.frame_count: int | None = None
        self._cap = None
        self._pending: np.ndarray | None = None

    def open(self) -> None:
        import cv2

        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        cap = cv2.VideoCapture(str(self.path))
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            raise SourceError(f"cannot decode video {self.path}: OpenCV read no frame from it")
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.fps = float(fps) if fps and fps > 0 else None
        self.frame_count = int(count) if count and count > 0 else None
        self._cap, self._pending = cap, first

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        if not ok and self.loop:
            self.release()
            self.open()
            return self.read()
        return frame if ok else None

    def release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None


class TestPattern:
    """A moving test pattern (like GStreamer's videotestsrc): gray bars scrolling sideways and a
    bright ball bouncing over them, BGR, deterministic for a frame index. ``frames``: stop after
    that many (None: endless)."""

    __test__ = False       # not a pytest test class
    live = False

    def __init__(self, *, width: int = 320, height: int = 240, fps: float = 30.0,
                 frames: int | None = None) -> None:
        if not (isinstance(width, int) and isinstance(height, int) and width >= 16 and height >= 16):
            raise SourceError(f"test pattern size must be at least 16x16, got {width}x{height}")
        if frames is not None and not (isinstance(frames, int) and frames >= 0):
            raise SourceError(f"test pattern frames must be an integer >= 0, got {frames!r}")
        self.width, self.height, self.fps, self.frames = width, height, float(fps), frames
        self.name = "test pattern"
        self._index = 0
        x = np.arange(2 * width)
        bars = (127.5 + 127.5 * np.sin(2 * np.pi * x / (width / 2.5))).astype(np.uint8)
        self._bars = np.repeat(np.repeat(bars[None, :, None], height, axis=0), 3, axis=2)

    def open(self) -> None:
        self._index = 0

    def read(self) -> np.ndarray | None:
        import cv2

        if self.frames is not None and self._index >= self.frames:
            return None
        i = self._index
        self._index += 1
        shift = (4 * i) % self.width
        frame = np.ascontiguousarray(self._bars[:, shift:shift + self.width])
        r = max(4, min(self.width, self.height) // 8)
        cx = r + int(abs((7 * i) % (2 * (self.width - 2 * r)) - (self.width - 2 * r)))
        cy = r + int(abs((5 * i) % (2 * (self.height - 2 * r)) - (self.height - 2 * r)))
        cv2.circle(frame, (cx, cy), r, (255, 255, 255), thickness=-1)
        cv2.rectangle(frame, (0, self.height - 12), (self.width // 4, self.height), (0, 0, 0), -1)
        return frame

    def release(self) -> None:
        pass


SOURCE_ATTRS = ("open", "read", "release", "live", "name")


def is_source(obj) -> bool:
    """Whether ``obj`` is a frame source (see the module docstring)."""
    return all(hasattr(obj, attr) for attr in SOURCE_ATTRS)


SOURCE_FORMS = ("'auto', 'test', a camera index, 'picamera[:N]', a /dev/video device, an rtsp:// or http(s):// "
                "URL, a video path or a frame source")


def make_source(spec, *, test_fps: float = 30.0) -> tuple[object, str]:
    """``auto`` | ``test`` | camera index (an int or digits) | ``picamera[:N]`` (picamera2) | V4L2 device
    path (``/dev/videoN``) | stream URL (:data:`STREAM_SCHEMES`) | video path | a source object ->
    (source, note). ``auto`` tries camera 0 and falls back to the test pattern with a note saying
    so; a source object is returned as it is. Sources are opened by :class:`Capture`."""
    if is_source(spec):
        return spec, ""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return CameraSource(spec), ""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise SourceError(f"source must be {SOURCE_FORMS}, got {spec!r}")
    if spec == "test":
        return TestPattern(fps=test_fps), ""
    if spec == "auto":
        camera = CameraSource(0)
        try:
            camera.open()
        except CameraLost:
            return TestPattern(fps=test_fps), "no camera at index 0: using the test pattern (source 'test')"
        camera.release()
        return camera, "using camera 0"
    if spec.isdigit():
        return CameraSource(int(spec)), ""
    if spec == "picamera" or spec.startswith("picamera:"):
        num = spec.partition(":")[2] if ":" in spec else "0"
        if not (num.isascii() and num.isdigit()):
            raise SourceError(f"source {spec!r}: expected 'picamera' or 'picamera:N' (N a camera number)")
        return PiCameraSource(int(num)), ""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", spec)
    if scheme:
        if scheme.group(1).lower() not in STREAM_SCHEMES:
            raise SourceError(f"source {_redact(spec)}: OpenCV's FFmpeg here reads {', '.join(STREAM_SCHEMES)} "
                              f"URLs, not {scheme.group(1)}:// (no GStreamer in the opencv-python wheels)")
        return CameraSource(spec), ""
    path = Path(spec)
    if spec.startswith("/dev/"):
        try:
            is_device = stat.S_ISCHR(path.stat().st_mode)
        except OSError:
            raise SourceError(f"camera device not found: {spec}") from None
        if not is_device:
            raise SourceError(f"{spec} is not a camera device (a character device such as /dev/video0)")
        return CameraSource(spec), ""
    if not path.is_file():
        raise SourceError(f"video file not found: {path}" if not path.is_dir() else
                          f"source {path} is a folder, not a video file")
    return FileSource(path), ""


# -- threaded capture -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptureOptions:
    realtime: bool = False       # pace files / test pattern at their own fps (live sources always are)
    retries: int = 3             # reopen attempts for a live source that stops delivering
    retry_delay: float = 0.5     # seconds x attempt number before each reopen
    queue_size: int = 8          # frames read ahead from a file

    def __post_init__(self) -> None:
        if not (isinstance(self.retries, int) and self.retries >= 0):
            raise InputError(f"retries must be an integer >= 0, got {self.retries!r}")
        if not (isinstance(self.retry_delay, (int, float)) and 0 <= self.retry_delay <= 60):
            raise InputError(f"retry delay must be 0..60 s, got {self.retry_delay!r}")
        if not (isinstance(self.queue_size, int) and self.queue_size >= 1):
            raise InputError(f"queue_size must be an integer >= 1, got {self.queue_size!r}")


@dataclass(frozen=True)
class Frame:
    index: int                   # frames read from the source so far (drops leave gaps)
    image: np.ndarray
    t_capture: float             # time.perf_counter() when the source returned it
    read_s: float                # seconds the source took to return it (decode / grab)


@dataclass(frozen=True)
class End:
    reason: str                  # eof | lost | stopped
    message: str = ""


class Capture:
    """Runs ``source.read()`` in a thread; ``get()`` returns a :class:`Frame`, an :class:`End`, or
    None on timeout. Use as a context manager: the thread is stopped and the source released."""

    def __init__(self, source, options: CaptureOptions | None = None) -> None:
        for attr in SOURCE_ATTRS:
            if not hasattr(source, attr):
                raise InputError(f"a frame source needs {attr!r}; got {type(source).__name__}")
        self.source = source
        self.options = options or CaptureOptions()
        self.live = bool(source.live)
        self.frames_read = 0
        self.drops = 0
        self.reconnects = 0
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "Capture":
        """Open the source (retrying a camera) and start the reader thread."""
        self._open_with_retries()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():     # stuck inside a driver read: leave it (daemon)
                return
        self.source.release()

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, timeout: float) -> Frame | End | None:
        """The next frame (the newest one for a live source) or End; None after ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout=timeout):
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    # reader thread
    def _open_with_retries(self) -> None:
        try:
            self.source.open()
            return
        except CameraLost as exc:
            if not self.live:
                raise
            last = exc
        for attempt in range(1, self.options.retries + 1):
            if self._stop.wait(self.options.retry_delay * attempt):
                break
            try:
                self.source.open()
                return
            except CameraLost as exc:
                last = exc
        raise CameraLost(f"{last} (after {self.options.retries} retries)")

    def _run(self) -> None:
        period = 1.0 / self.source.fps if (self.options.realtime and not self.live
                                           and getattr(self.source, "fps", None)) else 0.0
        due = time.perf_counter()
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                image = self.source.read()
                t1 = time.perf_counter()
                if image is None:
                    if not self.live:
                        self._put(End(END_EOF))
                        return
                    image = self._recover()
                    if image is None:
                        if not self._stop.is_set():
                            self._put(End(END_LOST, f"{self.source.name} stopped delivering frames; "
                                                    f"gave up after {self.options.retries} retries"))
                        return
                    t1 = time.perf_counter()
                if period:
                    due += period
                    delay = due - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        return
                    t1 = time.perf_counter()
                self._put(Frame(self.frames_read, image, t1, t1 - t0))
                self.frames_read += 1
        except Exception as exc:   # a driver error must end the loop cleanly, not kill it silently
            self._put(End(END_LOST if self.live else END_EOF,
                          f"{self.source.name} failed: {type(exc).__name__}: {str(exc)[:120]}"))

    def _recover(self) -> np.ndarray | None:
        for attempt in range(1, self.options.retries + 1):
            if self._stop.wait(self.options.retry_delay * attempt):
                return None
            self.reconnects += 1
            self.source.release()
            try:
                self.source.open()
            except CameraLost:
                continue
            image = self.source.read()
            if image is not None:
                return image
        return None

    def _put(self, item) -> None:
        with self._cond:
            if isinstance(item, Frame):
                if self.live:
                    stale = sum(isinstance(i, Frame) for i in self._items)
                    self.drops += stale
                    self._items = deque(i for i in self._items if not isinstance(i, Frame))
                else:
                    self._cond.wait_for(lambda: len(self._items) < self.options.queue_size
                                        or self._stop.is_set())
                    if self._stop.is_set():
                        return
            self._items.append(item)
            self._cond.notify_all()
