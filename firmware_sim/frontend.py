"""The sensor's front end: grayscale, region of interest, resize to 64x64, normalise, binarize.

Defined once here; training (``pixelrnn``), ``simulate``/``evaluate`` and the camera loop (``edge``)
all call it, so they cannot drift apart. Normalisation follows the authors:
``x = (gray / 255 - mean) / std`` and the binary input is ``sign(x - theta0)`` with sign(0) = +1.
The defaults are ImageNet's mean/std folded through the grayscale conversion the authors apply
after ``Normalize`` (0.299 R + 0.587 G + 0.114 B of the normalised channels): for a gray pixel this
is ``(g - 0.45883) / 0.22559``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SENSOR_SIZE = 64
IMAGENET_GRAY_MEAN = 0.45883
IMAGENET_GRAY_STD = 0.22559


@dataclass(frozen=True)
class FrontEnd:
    """Normalisation and input binarization of the sensor (all in float32, like the model)."""

    mean: float = IMAGENET_GRAY_MEAN
    std: float = IMAGENET_GRAY_STD
    theta0: float = 0.0
    size: int = SENSOR_SIZE

    def __post_init__(self) -> None:
        if not np.isfinite(self.mean) or not np.isfinite(self.theta0):
            raise ValueError("FrontEnd mean and theta0 must be finite numbers")
        if not (np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"FrontEnd std must be a positive number, got {self.std}")
        if self.size < 8:
            raise ValueError(f"FrontEnd size must be >= 8, got {self.size}")

    @property
    def threshold_gray(self) -> float:
        """The gray level (0..255 scale) at which the binary input flips to +1."""
        return 255.0 * (self.mean + self.theta0 * self.std)

    def normalize(self, gray: np.ndarray) -> np.ndarray:
        """uint8 gray frames -> normalised float32 ``x`` (same float32 ops as the PyTorch model)."""
        g = np.asarray(gray, dtype=np.float32) / np.float32(255.0)
        return (g - np.float32(self.mean)) / np.float32(self.std)

    def binarize(self, gray: np.ndarray) -> np.ndarray:
        """uint8 gray frames -> int8 +-1 binary input, ``sign(x - theta0)`` with sign(0) = +1."""
        return np.where(self.normalize(gray) - np.float32(self.theta0) >= 0, 1, -1).astype(np.int8)

    def to_dict(self) -> dict:
        return asdict(self)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """A camera frame (HxW gray, HxWx3 BGR or HxWx4 BGRA, any dtype) -> HxW uint8 gray."""
    import cv2

    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.dtype != np.uint8:
        if not np.all(np.isfinite(frame)):
            raise ValueError("frame contains NaN or infinite values")
        if frame.dtype.kind == "f" and frame.size and frame.max() <= 1.0:
            frame = frame * 255.0
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"unsupported frame shape {frame.shape}: expected HxW, HxWx3 or HxWx4")


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square ROI (x, y, w, h) of a width x height frame."""
    side = min(width, height)
    return ((width - side) // 2, (height - side) // 2, side, side)


def crop_resize(gray: np.ndarray, *, roi: tuple[int, int, int, int] | None = None,
                size: int = SENSOR_SIZE) -> np.ndarray:
    """Crop ``roi`` (x, y, w, h; default: centred square) and resize to size x size (area filter)."""
    import cv2

    h, w = gray.shape[:2]
    x0, y0, rw, rh = roi if roi is not None else center_square(w, h)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w, x0 + rw), min(h, y0 + rh)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"ROI {roi} lies outside the {w}x{h} frame")
    crop = gray[y0:y1, x0:x1]
    if crop.shape == (size, size):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
