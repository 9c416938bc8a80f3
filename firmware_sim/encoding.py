"""The sensor's 8-bit encodings, defined once for the simulator, the readout link and the host.

Analog values ``v`` are in units of one binary multiply-accumulate (MAC). On the sensor one MAC
adds ``IW`` (input white, 10) to an analog register, and the 8-bit readout (ADC) of a register
holding ``v`` is ``clip(floor(127 + IW * v), 0, 255)``. Floor (not round) is what the authors'
intermediates were written with (``astype(int)``); for integer ``v`` the two agree. Binary maps
are written as 0 (for -1) and 255 (for +1).
"""
from __future__ import annotations

import numpy as np

from core import constants

IW = float(constants.IW)
ZERO_LEVEL = float(constants.ZERO_LEVEL)     # a float here: the analog encodings compute in float


def encode_analog(values: np.ndarray, *, iw: float = IW) -> np.ndarray:
    """Analog values (MAC units) -> uint8 readout levels, saturating at 0 and 255 (the ADC range)."""
    scaled = np.floor(ZERO_LEVEL + iw * np.asarray(values, dtype=np.float64))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def decode_analog(levels: np.ndarray, *, iw: float = IW) -> np.ndarray:
    """uint8 readout levels -> analog values in MAC units (float32), the host decoder's input."""
    return ((np.asarray(levels, dtype=np.float32) - np.float32(ZERO_LEVEL)) / np.float32(iw)).astype(np.float32)


def encode_binary(signs: np.ndarray) -> np.ndarray:
    """A +-1 map -> uint8 (255 for +1, 0 for -1)."""
    return np.where(np.asarray(signs) > 0, 255, 0).astype(np.uint8)


def decode_binary(levels: np.ndarray) -> np.ndarray:
    """A 0/255 map -> int8 +-1 (any level >= 128 is +1)."""
    return np.where(np.asarray(levels) >= 128, 1, -1).astype(np.int8)
