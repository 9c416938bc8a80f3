"""Region of interest of a gray frame: centre square, a fixed ``x,y,w,h``, or a mouth from a face.

Cropping and resizing themselves are ``firmware_sim.frontend.crop_resize`` (the same call training
makes); this module only chooses the box.

Mouth ROI (lip reading): OpenCV's Haar frontal-face detector, then a square of side ``0.55 w``
centred at ``(x + 0.5 w, y + 0.78 h)`` of the face box (x, y, w, h): the lower part of the face,
nostrils to chin. These factors were measured on the GRID training crops
(``grid_s1_digits.npz``): on ``videos/grid_s1_bbaf2n.mpg`` the crop of clip ``bbaf2n`` is exactly
x=117, y=170, side 78, and the detector finds the face at about (84, 97, 143, 143). Detection runs
every ``detect_every`` frames on a frame scaled to ``detect_width`` pixels, and the box is
smoothed (exponential moving average), so the crop does not jitter. Until a face is found the
centre square is used (counted in ``fallback_frames``).
"""
from __future__ import annotations

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


@dataclass(frozen=True)
class MouthOptions:
    detect_every: int = 8        # run the face detector on every n-th frame (~10 ms each here)
    detect_width: int = 240      # detector input width (frames are scaled down to it)
    smoothing: float = 0.3       # weight of a new detection in the moving average (1 = none)
    min_face: float = 0.25       # smallest face, as a fraction of the frame height

    def __post_init__(self) -> None:
        if not (isinstance(self.detect_every, int) and self.detect_every >= 1):
            raise InputError(f"detect_every must be an integer >= 1, got {self.detect_every!r}")
        if not (isinstance(self.detect_width, int) and self.detect_width >= 64):
            raise InputError(f"detect_width must be an integer >= 64, got {self.detect_width!r}")
        if not 0 < self.smoothing <= 1:
            raise InputError(f"smoothing must be in (0, 1], got {self.smoothing!r}")
        if not 0 < self.min_face < 1:
            raise InputError(f"min_face must be in (0, 1), got {self.min_face!r}")


def mouth_box(face: Box) -> tuple[float, float, float]:
    """Face box -> mouth square (centre x, centre y, side) in pixels."""
    x, y, w, h = face
    return (x + 0.5 * w, y + MOUTH_CY * h, MOUTH_SIDE * w)


class MouthROI:
    """Mouth square from the Haar face detector, smoothed over frames."""

    def __init__(self, options: MouthOptions | None = None) -> None:
        import cv2

        self.options = options or MouthOptions()
        path = cv2.data.haarcascades + FACE_CASCADE
        self._detector = cv2.CascadeClassifier(path)
        if self._detector.empty():
            raise InputError(f"cannot load OpenCV's face detector {path}: use a fixed roi x,y,w,h instead")
        self._state: np.ndarray | None = None      # smoothed (cx, cy, side)
        self._since = self.options.detect_every - 1     # frames since the last detection: detect now
        self.detections = 0
        self.fallback_frames = 0

    def detect(self, gray: np.ndarray) -> Box | None:
        """The largest face (x, y, w, h) in full-frame pixels, or None."""
        import cv2

        h, w = gray.shape[:2]
        scale = min(1.0, self.options.detect_width / w)
        small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else gray
        side = max(20, int(self.options.min_face * small.shape[0]))
        faces = self._detector.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5,
                                                minSize=(side, side))
        if len(faces) == 0:
            return None
        x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
        return (x / scale, y / scale, fw / scale, fh / scale)

    def __call__(self, gray: np.ndarray, *, defer: bool = False) -> Box:
        """The mouth box for this frame. ``defer``: a detection due now waits for the next frame
        (the camera loop defers it on a window's last frame, which is on the decision's critical
        path); the first detection is never deferred."""
        self._since += 1
        if self._since >= self.options.detect_every and not (defer and self._state is not None):
            self._since = 0
            face = self.detect(gray)
            if face is not None:
                self.detections += 1
                new = np.array(mouth_box(face))
                a = self.options.smoothing
                self._state = new if self._state is None else (1 - a) * self._state + a * new
        h, w = gray.shape[:2]
        if self._state is None:
            self.fallback_frames += 1
            return center_square(w, h)
        cx, cy, side = self._state
        s = int(round(min(side, w, h)))
        x0 = int(round(min(max(cx - s / 2, 0), w - s)))
        y0 = int(round(min(max(cy - s / 2, 0), h - s)))
        return (x0, y0, s, s)


def make_roi(spec: str | Box, *, mouth: MouthOptions | None = None):
    """A ROI chooser for a parsed roi (see :func:`parse_roi`)."""
    if spec == "center":
        return CenterROI()
    if spec == "mouth":
        return MouthROI(mouth)
    return FixedROI(spec)
