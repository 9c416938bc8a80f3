"""The sensor program's parameters: what gets loaded into the pixel-processor array.

Plain numpy (no PyTorch), so the camera loop can run the sensor stage on a Pi. The PyTorch model
produces one with ``PixelRNN.sensor_weights()``; a bundle stores it as an ``.npz``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

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
    w_oi: np.ndarray           # (5, 5) output, input
    w_oh: np.ndarray           # (5, 5) output, hidden
    rnn_threshold: float = 0.0  # 0 for models without a gate threshold (the authors' lip model)
    frontend: FrontEnd = field(default_factory=FrontEnd)
    timesteps: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv1", _signs("conv1", self.conv1, (N_MAPS, KERNEL, KERNEL)))
        for name in ("w_fi", "w_fh", "w_oi", "w_oh"):
            object.__setattr__(self, name, _signs(name, getattr(self, name), (KERNEL, KERNEL)))
        for name in ("thresh1", "rnn_threshold"):
            value = float(getattr(self, name))
            if not np.isfinite(value):
                raise ValueError(f"sensor weight {name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if not (isinstance(self.timesteps, int) and self.timesteps >= 1):
            raise ValueError(f"timesteps must be a positive integer, got {self.timesteps!r}")

    def program_hash(self) -> str:
        """A short hash of everything the sensor runs: the model id carried by readout packets."""
        h = hashlib.sha256()
        for arr in (self.conv1, self.w_fi, self.w_fh, self.w_oi, self.w_oh):
            h.update(np.ascontiguousarray(arr).tobytes())
        fe = self.frontend
        h.update(np.array([self.thresh1, self.rnn_threshold, fe.mean, fe.std, fe.theta0,
                           fe.size, self.timesteps], dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        fe = self.frontend
        return {"conv1": self.conv1, "w_fi": self.w_fi, "w_fh": self.w_fh, "w_oi": self.w_oi,
                "w_oh": self.w_oh,
                "scalars": np.array([self.thresh1, self.rnn_threshold, fe.mean, fe.std, fe.theta0,
                                     fe.size, self.timesteps], dtype=np.float64)}

    @classmethod
    def from_npz_dict(cls, data) -> "SensorWeights":
        try:
            s = np.asarray(data["scalars"], dtype=np.float64)
            fe = FrontEnd(mean=float(s[2]), std=float(s[3]), theta0=float(s[4]), size=int(s[5]))
            return cls(conv1=data["conv1"], thresh1=float(s[0]), w_fi=data["w_fi"], w_fh=data["w_fh"],
                       w_oi=data["w_oi"], w_oh=data["w_oh"], rnn_threshold=float(s[1]), frontend=fe,
                       timesteps=int(s[6]))
        except (KeyError, IndexError) as exc:
            raise ValueError(f"not a sensor-weights file: missing {exc}") from None

    @classmethod
    def random(cls, rng: np.random.Generator, *, thresh_range: float = 3.0) -> "SensorWeights":
        """Random binary kernels and thresholds (for tests and benchmarks)."""
        def s(*shape):
            return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
        return cls(conv1=s(N_MAPS, KERNEL, KERNEL), thresh1=float(rng.uniform(-0.5, thresh_range)),
                   w_fi=s(KERNEL, KERNEL), w_fh=s(KERNEL, KERNEL), w_oi=s(KERNEL, KERNEL),
                   w_oh=s(KERNEL, KERNEL), rnn_threshold=float(rng.uniform(-thresh_range, thresh_range)))
