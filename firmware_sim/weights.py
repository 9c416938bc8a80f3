"""The sensor program's parameters: what gets loaded into the pixel-processor array.

Plain numpy (no PyTorch), so the camera loop can run the sensor stage on a Pi. The PyTorch model
produces one with ``PixelRNN.sensor_weights()``; a bundle stores it as an ``.npz``.

The readout (which frames' o_t leave the sensor, K output kernel pairs, pooling, bits) is a
:class:`core.readout_layout.ReadoutLayout`; the authors' (o at the last frame, one kernel pair,
64x64, 8 bit) is the default, and a program with it hashes and stores exactly as before layouts
existed (``w_oi``/``w_oh`` are (K, 5, 5), and (1, 5, 5) has the bytes of the old (5, 5)).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from core.readout_layout import ReadoutLayout
from firmware_sim.frontend import FrontEnd

KERNEL = 5
N_MAPS = 16


def _signs(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise ValueError(f"sensor weight {name} must have shape {shape}, got {array.shape}")
    if not np.all(np.isin(array, (-1, 1))):
        raise ValueError(f"sensor weight {name} must hold only -1/+1 (binarize it first)")
    return array.astype(np.int8)


@dataclass(frozen=True)
class SensorWeights:
    """Binary kernels (+-1, int8) and float thresholds of the in-pixel CNN and RNN."""

    conv1: np.ndarray          # (16, 5, 5)
    thresh1: float             # on the pooled conv output
    w_fi: np.ndarray           # (5, 5) gate, input
    w_fh: np.ndarray           # (5, 5) gate, hidden
    w_oi: np.ndarray           # (K, 5, 5) output, input (a (5, 5) array is taken as K = 1)
    w_oh: np.ndarray           # (K, 5, 5) output, hidden
    rnn_threshold: float = 0.0  # 0 for models without a gate threshold (the authors' lip model)
    frontend: FrontEnd = field(default_factory=FrontEnd)
    timesteps: int = 16
    layout: ReadoutLayout = None   # type: ignore[assignment]  # None: the authors' for ``timesteps``

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv1", _signs("conv1", self.conv1, (N_MAPS, KERNEL, KERNEL)))
        for name in ("w_fi", "w_fh"):
            object.__setattr__(self, name, _signs(name, getattr(self, name), (KERNEL, KERNEL)))
        for name in ("w_oi", "w_oh"):
            array = np.asarray(getattr(self, name))
            if array.shape == (KERNEL, KERNEL):
                array = array[None]
            if array.ndim != 3 or array.shape[1:] != (KERNEL, KERNEL) or array.shape[0] < 1:
                raise ValueError(f"sensor weight {name} must have shape (K, {KERNEL}, {KERNEL}) or "
                                 f"({KERNEL}, {KERNEL}), got {np.shape(getattr(self, name))}")
            object.__setattr__(self, name, _signs(name, array, array.shape))
        if self.w_oi.shape != self.w_oh.shape:
            raise ValueError(f"sensor weights w_oi {self.w_oi.shape} and w_oh {self.w_oh.shape} must hold "
                             f"the same number of output kernels")
        for name in ("thresh1", "rnn_threshold"):
            value = float(getattr(self, name))
            if not np.isfinite(value):
                raise ValueError(f"sensor weight {name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if not (isinstance(self.timesteps, int) and self.timesteps >= 1):
            raise ValueError(f"timesteps must be a positive integer, got {self.timesteps!r}")
        k = self.channels
        layout = self.layout
        if layout is None:
            if k != 1:
                raise ValueError(f"sensor weights have K={k} output kernel pairs (w_oi, w_oh) but no readout "
                                 f"layout: pass layout=ReadoutLayout(channels={k}, timesteps={self.timesteps}, ...)")
            layout = ReadoutLayout(frames=(self.timesteps,), timesteps=self.timesteps)
        elif not isinstance(layout, ReadoutLayout):
            raise ValueError(f"sensor weights layout must be a ReadoutLayout, got {type(layout).__name__}")
        if layout.timesteps != self.timesteps:
            raise ValueError(f"the readout layout is for timesteps={layout.timesteps}, the sensor weights "
                             f"run timesteps={self.timesteps}")
        if layout.channels != k:
            raise ValueError(f"the readout layout has channels={layout.channels}, the sensor weights have "
                             f"K={k} output kernel pairs (w_oi, w_oh)")
        object.__setattr__(self, "layout", layout)

    @property
    def channels(self) -> int:
        """K: the number of output kernel pairs (W_oi[k], W_oh[k]), one map per read-out frame each."""
        return int(self.w_oi.shape[0])

    def readout_frames(self, frames: int) -> tuple[int, ...]:
        """The 1-based frames read out of a clip of ``frames`` frames.

        The authors' layout reads out the clip's last frame, whatever its length (as the simulator
        always has); any other layout reads out ``layout.frames`` and needs clips of exactly
        ``timesteps`` frames.
        """
        if self.layout.is_authors:
            return (int(frames),)
        if frames != self.timesteps:
            raise ValueError(f"clips have {frames} frames; the readout layout ({self.layout.describe()}) "
                             f"needs {self.timesteps}")
        return self.layout.frames

    def program_hash(self) -> str:
        """A short hash of everything the sensor runs: the model id carried by readout packets.

        For the authors' layout it is the hash of before layouts existed; any other layout is
        hashed too (its ``to_dict()`` as JSON with sorted keys).
        """
        h = hashlib.sha256()
        for arr in (self.conv1, self.w_fi, self.w_fh, self.w_oi, self.w_oh):
            h.update(np.ascontiguousarray(arr).tobytes())
        fe = self.frontend
        h.update(np.array([self.thresh1, self.rnn_threshold, fe.mean, fe.std, fe.theta0,
                           fe.size, self.timesteps], dtype=np.float64).tobytes())
        if not self.layout.is_authors:
            h.update(self.layout.to_json().encode())
        return h.hexdigest()[:16]

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays for an ``.npz``; the authors' layout is stored exactly as before layouts existed
        ((5, 5) output kernels, no ``layout`` entry), any other adds ``layout`` (JSON, uint8 bytes)."""
        fe = self.frontend
        authors = self.layout.is_authors
        out = {"conv1": self.conv1, "w_fi": self.w_fi, "w_fh": self.w_fh,
               "w_oi": self.w_oi[0] if authors else self.w_oi, "w_oh": self.w_oh[0] if authors else self.w_oh,
               "scalars": np.array([self.thresh1, self.rnn_threshold, fe.mean, fe.std, fe.theta0,
                                    fe.size, self.timesteps], dtype=np.float64)}
        if not authors:
            out["layout"] = self.layout.to_array()
        return out

    @classmethod
    def from_npz_dict(cls, data) -> "SensorWeights":
        """The inverse of :meth:`to_npz_dict`; a file without ``layout`` has the authors' readout."""
        try:
            s = np.asarray(data["scalars"], dtype=np.float64)
            fe = FrontEnd(mean=float(s[2]), std=float(s[3]), theta0=float(s[4]), size=int(s[5]))
            layout = ReadoutLayout.from_array(data["layout"]) if "layout" in data else None
            return cls(conv1=data["conv1"], thresh1=float(s[0]), w_fi=data["w_fi"], w_fh=data["w_fh"],
                       w_oi=data["w_oi"], w_oh=data["w_oh"], rnn_threshold=float(s[1]), frontend=fe,
                       timesteps=int(s[6]), layout=layout)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"not a sensor-weights file: missing {exc}") from None

    @classmethod
    def random(cls, rng: np.random.Generator, *, thresh_range: float = 3.0,
               layout: ReadoutLayout | None = None) -> "SensorWeights":
        """Random binary kernels and thresholds (for tests and benchmarks).

        ``layout``: the readout (its channels and timesteps); None is the authors'. The draws for
        the authors' layout are the ones made before layouts existed.
        """
        def s(*shape):
            return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
        k = 1 if layout is None else layout.channels
        extra = {} if layout is None else {"layout": layout, "timesteps": layout.timesteps}
        return cls(conv1=s(N_MAPS, KERNEL, KERNEL), thresh1=float(rng.uniform(-0.5, thresh_range)),
                   w_fi=s(KERNEL, KERNEL), w_fh=s(KERNEL, KERNEL), w_oi=s(k, KERNEL, KERNEL),
                   w_oh=s(k, KERNEL, KERNEL), rnn_threshold=float(rng.uniform(-thresh_range, thresh_range)),
                   **extra)
