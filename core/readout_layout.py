"""What leaves the sensor per window: which frames, how many maps, at what size and precision.

The authors' network reads out one 64x64 map, o at the last frame, at 8 bits (``AUTHORS``). A
:class:`ReadoutLayout` generalises that along the four axes a pixel-processor array allows:

- ``frames``: the 1-based frames whose o_t leave the sensor (e.g. every 4th: 4, 8, 12, 16);
- ``channels``: K output kernel pairs (W_oi, W_oh), so K maps per read-out frame;
- ``pool``: each map averaged over ``pool x pool`` blocks on the array before readout (neighbour
  adds and halvings), so a map is ``64 / pool`` on a side;
- ``bits``: 8 (the authors' ADC level ``clip(floor(127 + 10 o), 0, 255)``), or 4, 2, 1: the level
  ``clip(floor(o / step) + 2**(bits-1), 0, 2**bits - 1)`` (1 bit: ``o >= 0``, sign(0) = +1).

Torch-free, so the sensor simulator, the packet, the host and training all read the one
definition. Levels are uint8 arrays shaped (maps, side, side), maps ordered frame-major
(frame 0's K channels, then frame 1's, ...).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from core.constants import IW, ZERO_LEVEL

SIZE = 64
BITS = (1, 2, 4, 8)
POOLS = (1, 2, 4, 8)
MAX_TIMESTEPS = 1024      # frames per window (core.bundle's bound)
MAX_CHANNELS = 4          # K output pairs; program.py checks what the array's registers hold
DEFAULT_STEP = {8: 1.0 / IW, 4: 2.0, 2: 4.0, 1: 8.0}    # MAC units per level
MAX_STEP = 1000.0         # a b-bit step larger than this reads |o| <= 50 as one or two levels


def _as_int(value) -> int | None:
    """``value`` as a Python int if it is an integer (numpy ones too) and not a bool, else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


@dataclass(frozen=True)
class ReadoutLayout:
    """The readout of one window (see the module docstring). ``step`` 0 means the default for ``bits``;
    ``frames`` empty means the last frame, ``(timesteps,)``."""

    frames: tuple[int, ...] = ()
    channels: int = 1
    bits: int = 8
    pool: int = 1
    step: float = 0.0
    timesteps: int = 16

    def __post_init__(self) -> None:
        t = _as_int(self.timesteps)
        if t is None or not 1 <= t <= MAX_TIMESTEPS:
            raise ValueError(f"timesteps must be an integer 1..{MAX_TIMESTEPS}, got {self.timesteps!r}")
        object.__setattr__(self, "timesteps", t)
        wanted = {"channels": f"an integer in 1..{MAX_CHANNELS}", "bits": f"one of {BITS}", "pool": f"one of {POOLS}"}
        for name, what in wanted.items():
            value = _as_int(getattr(self, name))
            if value is None:
                raise ValueError(f"readout {name} must be {what}, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if not isinstance(self.frames, (list, tuple, np.ndarray)):
            raise ValueError(f"readout frames must be a non-empty list of integers, got {self.frames!r}")
        frames = tuple(self.frames) or (t,)
        if not all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) for f in frames):
            raise ValueError(f"readout frames must be a non-empty list of integers, got {self.frames!r}")
        frames = tuple(int(f) for f in frames)
        if any(f < 1 or f > t for f in frames) or list(frames) != sorted(set(frames)):
            raise ValueError(f"readout frames must be increasing, each in 1..{t} (timesteps), got {list(frames)}")
        object.__setattr__(self, "frames", frames)
        if not (isinstance(self.channels, int) and 1 <= self.channels <= MAX_CHANNELS):
            raise ValueError(f"readout channels must be an integer in 1..{MAX_CHANNELS}, got {self.channels!r}")
        if self.bits not in BITS:
            raise ValueError(f"readout bits must be one of {BITS}, got {self.bits!r}")
        if self.pool not in POOLS:
            raise ValueError(f"readout pool must be one of {POOLS}, got {self.pool!r}")
        step = self.step
        if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(step)) or not 0 <= step <= MAX_STEP:
            raise ValueError(f"readout step must be a number 0..{MAX_STEP:g} (0 = default; |o| <= 50 MAC units, so "
                             f"a larger step reads every value as one or two levels), got {self.step!r}")
        step = float(step)
        if self.bits == 8 and step not in (0.0, DEFAULT_STEP[8]):
            raise ValueError("the 8-bit readout is the sensor's ADC (step 1/10 MAC); leave step at 0")
        object.__setattr__(self, "step", step or DEFAULT_STEP[self.bits])

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def every(cls, every: int, *, timesteps: int = 16, **kw) -> "ReadoutLayout":
        """Frames every, 2*every, ..., timesteps (every 0: the last frame only)."""
        if not (isinstance(every, int) and every >= 0):
            raise ValueError(f"readout_every must be an integer >= 0, got {every!r}")
        if not (isinstance(timesteps, int) and 1 <= timesteps <= MAX_TIMESTEPS):   # before building the frames
            raise ValueError(f"timesteps must be an integer 1..{MAX_TIMESTEPS}, got {timesteps!r}")
        if every == 0:
            return cls(frames=(timesteps,), timesteps=timesteps, **kw)
        if timesteps % every:
            raise ValueError(f"readout_every={every} must divide timesteps={timesteps}")
        return cls(frames=tuple(range(every, timesteps + 1, every)), timesteps=timesteps, **kw)

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def maps(self) -> int:
        return len(self.frames) * self.channels

    @property
    def side(self) -> int:
        return SIZE // self.pool

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.maps, self.side, self.side)

    @property
    def payload_bits(self) -> int:
        return self.maps * self.side * self.side * self.bits

    @property
    def payload_bytes(self) -> int:
        """Bytes of one window's levels, bit-packed (what the packet's payload carries)."""
        return (self.payload_bits + 7) // 8

    @property
    def is_authors(self) -> bool:
        return self == ReadoutLayout(timesteps=self.timesteps, frames=(self.timesteps,))

    @property
    def zero(self) -> float:
        return float(ZERO_LEVEL) if self.bits == 8 else float(2 ** (self.bits - 1))

    @property
    def max_level(self) -> int:
        return 2 ** self.bits - 1

    def describe(self) -> str:
        fr = ",".join(map(str, self.frames))
        return (f"o at frame(s) {fr} x {self.channels} channel(s), {self.side}x{self.side}"
                f"{' (mean of ' + str(self.pool) + 'x' + str(self.pool) + ')' if self.pool > 1 else ''},"
                f" {self.bits} bit: {self.payload_bytes} B/window")

    # -- the readout itself ------------------------------------------------------------------------
    def pool_maps(self, o: np.ndarray) -> np.ndarray:
        """(..., 64, 64) analog o (float64) -> (..., side, side): the mean of each pool x pool block."""
        if self.pool == 1:
            return o
        p = self.pool
        *lead, h, w = o.shape
        return o.reshape(*lead, h // p, p, w // p, p).sum(axis=(-3, -1)) / float(p * p)

    def quantize(self, o: np.ndarray) -> np.ndarray:
        """Analog values (MAC units, float64) -> uint8 levels."""
        o = np.asarray(o, dtype=np.float64)
        if self.bits == 8:
            levels = np.floor(ZERO_LEVEL + IW * o)
        else:
            levels = np.floor(o / self.step) + self.zero
        return np.clip(levels, 0, self.max_level).astype(np.uint8)

    def dequantize(self, levels: np.ndarray) -> np.ndarray:
        """uint8 levels -> float32 values in MAC units (a b<8-bit level maps to its bin's centre)."""
        lv = np.asarray(levels, dtype=np.float32)
        if self.bits == 8:
            return ((lv - np.float32(ZERO_LEVEL)) / np.float32(IW)).astype(np.float32)
        return ((lv - np.float32(self.zero) + np.float32(0.5)) * np.float32(self.step)).astype(np.float32)

    def pack(self, levels: np.ndarray) -> bytes:
        """(maps, side, side) uint8 levels -> the payload: ``bits`` bits per level, MSB first."""
        levels = np.asarray(levels)
        if levels.shape != self.shape or levels.dtype != np.uint8:
            raise ValueError(f"readout levels must be uint8 {self.shape}, got {levels.dtype} {levels.shape}")
        if int(levels.max(initial=0)) > self.max_level:
            raise ValueError(f"readout level {int(levels.max())} does not fit {self.bits} bit(s)")
        if self.bits == 8:
            return levels.tobytes()
        planes = np.unpackbits(levels.reshape(-1, 1), axis=1)[:, 8 - self.bits:]
        return np.packbits(planes.reshape(-1)).tobytes()

    def unpack(self, payload: bytes) -> np.ndarray:
        """The inverse of :meth:`pack`; a wrong length is a ValueError naming both sizes."""
        if len(payload) != self.payload_bytes:
            raise ValueError(f"readout payload has {len(payload)} bytes, the layout needs {self.payload_bytes}")
        raw = np.frombuffer(payload, dtype=np.uint8)
        if self.bits == 8:
            return raw.reshape(self.shape).copy()
        bits = np.unpackbits(raw)[:self.payload_bits].reshape(-1, self.bits)
        weights = (1 << np.arange(self.bits - 1, -1, -1)).astype(np.uint8)
        return (bits * weights).sum(1).astype(np.uint8).reshape(self.shape)

    # -- storage -------------------------------------------------------------------------------
    def to_json(self) -> str:
        """JSON with sorted keys: what a program hash covers and an ``.npz`` stores."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_array(self) -> np.ndarray:
        """:meth:`to_json` as a 1-D uint8 array (an ``.npz`` entry without pickles)."""
        return np.frombuffer(self.to_json().encode("utf-8"), dtype=np.uint8).copy()

    @classmethod
    def from_array(cls, raw) -> "ReadoutLayout":
        """The inverse of :meth:`to_array`; anything else a ValueError."""
        raw = np.asarray(raw)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"the sensor-weights layout must be JSON bytes (uint8, 1-D), got {raw.dtype} {raw.shape}")
        try:
            data = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"the sensor-weights layout is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frames"] = list(self.frames)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "ReadoutLayout":
        if not isinstance(data, dict):
            raise ValueError(f"a readout layout must be a mapping, got {type(data).__name__}")
        known = {"frames", "channels", "bits", "pool", "step", "timesteps"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown readout layout keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(data)
        if "frames" in d:
            if not isinstance(d["frames"], (list, tuple)):
                raise ValueError(f"readout frames must be a list, got {d['frames']!r}")
            d["frames"] = tuple(d["frames"])
        return cls(**d)


AUTHORS = ReadoutLayout()

__all__ = ["AUTHORS", "BITS", "DEFAULT_STEP", "MAX_CHANNELS", "MAX_STEP", "POOLS", "ReadoutLayout"]
