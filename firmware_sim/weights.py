"""The sensor program's parameters: what gets loaded into the pixel-processor array.

Plain numpy (no PyTorch), so the camera loop can run the sensor stage on a Pi. The PyTorch model
produces one with ``PixelRNN.sensor_weights()``; a bundle stores it as an ``.npz``.

The readout (which frames' o_t leave the sensor, K output kernel pairs, pooling, bits) is a
:class:`core.readout_layout.ReadoutLayout`; the authors' (o at the last frame, one kernel pair,
64x64, 8 bit) is the default, and a program with it hashes and stores exactly as before layouts
existed (``w_oi``/``w_oh`` are (K, 5, 5), and (1, 5, 5) has the bytes of the old (5, 5)).

Hidden channels: H >= 1 independent gated chains j, each with its own gate kernels W_fi^j, W_fh^j
and threshold thr_j; the outputs mix them, o^k = W_oi^k * x + sum_j W_oh^{k,j} * h^j
(docs/MODEL.md). H = 1 is the authors' RNN and keeps its fields exactly: ``w_fi``/``w_fh`` (5, 5),
``w_oh`` (K, 5, 5), ``rnn_threshold`` a float, so its hash and its ``.npz`` are those of before.
H > 1: ``w_fi``/``w_fh`` (H, 5, 5), ``w_oh`` (K, H, 5, 5), ``rnn_threshold`` H floats (a tuple);
the ``.npz`` adds ``rnn_thresholds`` (H,). :attr:`SensorWeights.fi_kernels` and the other
``*_kernels`` properties give every H the same shapes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from core.readout_layout import ReadoutLayout
from firmware_sim.frontend import FrontEnd

KERNEL = 5
N_MAPS = 16


def o_max(hidden: int = 1) -> int:
    """The largest |o| of a program with ``hidden`` maps: 25 (H + 1) (one +-1 5x5 kernel on x_t, one on
    each h^j; every term a sum of 25 products of +-1)."""
    return KERNEL * KERNEL * (hidden + 1)


def _signs(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise ValueError(f"sensor weight {name} must have shape {shape}, got {array.shape}")
    if not np.all(np.isin(array, (-1, 1))):
        raise ValueError(f"sensor weight {name} must hold only -1/+1 (binarize it first)")
    return array.astype(np.int8)


def _hidden_kernels(name: str, array) -> np.ndarray:
    """A gate kernel field -> (5, 5) for one hidden map, (H, 5, 5) for H > 1 ((1, 5, 5) is H = 1)."""
    array = np.asarray(array)
    if array.shape == (1, KERNEL, KERNEL):
        array = array[0]
    if array.shape != (KERNEL, KERNEL) and not (array.ndim == 3 and array.shape[1:] == (KERNEL, KERNEL)
                                                 and array.shape[0] >= 1):
        raise ValueError(f"sensor weight {name} must have shape ({KERNEL}, {KERNEL}) or (H, {KERNEL}, {KERNEL}) "
                         f"for H hidden maps, got {array.shape}")
    return _signs(name, array, array.shape)


def _thresholds(value, hidden: int):
    """``rnn_threshold`` -> a float (H = 1) or a tuple of H floats (one number is every chain's)."""
    arr = np.asarray(value, dtype=np.float64) if not isinstance(value, (str, bytes)) else None
    if arr is None or arr.ndim > 1 or (arr.ndim == 1 and arr.size not in (1, hidden)):
        raise ValueError(f"sensor weight rnn_threshold must be a number or {hidden} numbers (one per hidden "
                         f"map), got {value!r}")
    arr = np.broadcast_to(arr.reshape(-1), (hidden,))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"sensor weight rnn_threshold must be finite, got {value!r}")
    return float(arr[0]) if hidden == 1 else tuple(float(v) for v in arr)


@dataclass(frozen=True)
class SensorWeights:
    """Binary kernels (+-1, int8) and float thresholds of the in-pixel CNN and RNN (H hidden maps)."""

    conv1: np.ndarray          # (16, 5, 5)
    thresh1: float             # on the pooled conv output
    w_fi: np.ndarray           # (5, 5) gate, input; (H, 5, 5) for H > 1 hidden maps
    w_fh: np.ndarray           # (5, 5) gate, hidden; (H, 5, 5)
    w_oi: np.ndarray           # (K, 5, 5) output, input (a (5, 5) array is taken as K = 1)
    w_oh: np.ndarray           # (K, 5, 5) output, hidden; (K, H, 5, 5) for H > 1
    rnn_threshold: float | tuple[float, ...] = 0.0  # 0 for models without a gate threshold (the authors'
                                                    # lip model); H > 1: one per hidden map
    frontend: FrontEnd = field(default_factory=FrontEnd)
    timesteps: int = 16
    layout: ReadoutLayout = None   # type: ignore[assignment]  # None: the authors' for ``timesteps``

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv1", _signs("conv1", self.conv1, (N_MAPS, KERNEL, KERNEL)))
        for name in ("w_fi", "w_fh"):
            object.__setattr__(self, name, _hidden_kernels(name, getattr(self, name)))
        if self.w_fi.shape != self.w_fh.shape:
            raise ValueError(f"sensor weights w_fi {self.w_fi.shape} and w_fh {self.w_fh.shape} must hold the "
                             f"same number of hidden maps")
        hidden = self.hidden
        array = np.asarray(self.w_oi)
        if array.shape == (KERNEL, KERNEL):
            array = array[None]
        if array.ndim != 3 or array.shape[1:] != (KERNEL, KERNEL) or array.shape[0] < 1:
            raise ValueError(f"sensor weight w_oi must have shape (K, {KERNEL}, {KERNEL}) or "
                             f"({KERNEL}, {KERNEL}), got {np.shape(self.w_oi)}")
        object.__setattr__(self, "w_oi", _signs("w_oi", array, array.shape))
        array = np.asarray(self.w_oh)
        if hidden == 1:             # (5, 5), (K, 5, 5) or (K, 1, 5, 5) -> (K, 5, 5), as before
            if array.shape == (KERNEL, KERNEL):
                array = array[None]
            if array.ndim == 4 and array.shape[1] == 1:
                array = array[:, 0]
            want = f"(K, {KERNEL}, {KERNEL}) or ({KERNEL}, {KERNEL})"
            ok = array.ndim == 3 and array.shape[1:] == (KERNEL, KERNEL) and array.shape[0] >= 1
        else:
            want = f"(K, {hidden}, {KERNEL}, {KERNEL}) for {hidden} hidden maps"
            ok = array.ndim == 4 and array.shape[1:] == (hidden, KERNEL, KERNEL) and array.shape[0] >= 1
        if not ok:
            raise ValueError(f"sensor weight w_oh must have shape {want}, got {np.shape(self.w_oh)}")
        object.__setattr__(self, "w_oh", _signs("w_oh", array, array.shape))
        if self.w_oi.shape[0] != self.w_oh.shape[0]:
            raise ValueError(f"sensor weights w_oi {self.w_oi.shape} and w_oh {self.w_oh.shape} must hold "
                             f"the same number of output kernels")
        value = float(self.thresh1)
        if not np.isfinite(value):
            raise ValueError(f"sensor weight thresh1 must be finite, got {value}")
        object.__setattr__(self, "thresh1", value)
        object.__setattr__(self, "rnn_threshold", _thresholds(self.rnn_threshold, hidden))
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

    @property
    def hidden(self) -> int:
        """H: the number of binary hidden maps, each a gated chain with its own kernels and threshold."""
        return 1 if self.w_fi.ndim == 2 else int(self.w_fi.shape[0])

    @property
    def fi_kernels(self) -> np.ndarray:
        """W_fi^j as (H, 5, 5) for every H (a view)."""
        return self.w_fi.reshape(-1, KERNEL, KERNEL)

    @property
    def fh_kernels(self) -> np.ndarray:
        """W_fh^j as (H, 5, 5) for every H (a view)."""
        return self.w_fh.reshape(-1, KERNEL, KERNEL)

    @property
    def oh_kernels(self) -> np.ndarray:
        """W_oh^{k,j} as (K, H, 5, 5) for every H (a view)."""
        return self.w_oh.reshape(self.channels, self.hidden, KERNEL, KERNEL)

    @property
    def gate_thresholds(self) -> tuple[float, ...]:
        """thr_j, one float per hidden map (H = 1: ``(rnn_threshold,)``)."""
        return (self.rnn_threshold,) if self.hidden == 1 else tuple(self.rnn_threshold)

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
        hashed too (its ``to_dict()`` as JSON with sorted keys). H = 1 hashes as before hidden
        channels existed; H > 1 adds its count and every chain's threshold.
        """
        h = hashlib.sha256()
        for arr in (self.conv1, self.w_fi, self.w_fh, self.w_oi, self.w_oh):
            h.update(np.ascontiguousarray(arr).tobytes())
        fe = self.frontend
        h.update(np.array([self.thresh1, self.gate_thresholds[0], fe.mean, fe.std, fe.theta0,
                           fe.size, self.timesteps], dtype=np.float64).tobytes())
        if not self.layout.is_authors:
            h.update(self.layout.to_json().encode())
        if self.hidden > 1:
            h.update(f"hidden={self.hidden}".encode())
            h.update(np.array(self.gate_thresholds, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays for an ``.npz``; the authors' layout is stored exactly as before layouts existed
        ((5, 5) output kernels, no ``layout`` entry), any other adds ``layout`` (JSON, uint8 bytes).
        H > 1 hidden maps store ``w_fi``/``w_fh`` (H, 5, 5), ``w_oh`` (K, H, 5, 5), and add
        ``rnn_thresholds`` (H,) float64 (``scalars`` keeps chain 0's, so its 7 numbers still check)."""
        fe = self.frontend
        authors = self.layout.is_authors
        one = authors and self.hidden == 1
        out = {"conv1": self.conv1, "w_fi": self.w_fi, "w_fh": self.w_fh,
               "w_oi": self.w_oi[0] if one else self.w_oi, "w_oh": self.w_oh[0] if one else self.w_oh,
               "scalars": np.array([self.thresh1, self.gate_thresholds[0], fe.mean, fe.std, fe.theta0,
                                    fe.size, self.timesteps], dtype=np.float64)}
        if not authors:
            out["layout"] = self.layout.to_array()
        if self.hidden > 1:
            out["rnn_thresholds"] = np.array(self.gate_thresholds, dtype=np.float64)
        return out

    @classmethod
    def from_npz_dict(cls, data) -> "SensorWeights":
        """The inverse of :meth:`to_npz_dict`; a file without ``layout`` has the authors' readout,
        one without ``rnn_thresholds`` one hidden map."""
        try:
            s = np.asarray(data["scalars"], dtype=np.float64)
            fe = FrontEnd(mean=float(s[2]), std=float(s[3]), theta0=float(s[4]), size=int(s[5]))
            layout = ReadoutLayout.from_array(data["layout"]) if "layout" in data else None
            thresholds = float(s[1])
            hidden = np.asarray(data["w_fi"]).reshape(-1, KERNEL * KERNEL).shape[0]
            if "rnn_thresholds" in data or hidden > 1:
                thresholds = np.asarray(data["rnn_thresholds"], dtype=np.float64)
                if thresholds.shape != (hidden,):
                    raise ValueError(f"rnn_thresholds {thresholds.shape} must hold one threshold per hidden map "
                                     f"({hidden})")
                thresholds = tuple(float(v) for v in thresholds)
            return cls(conv1=data["conv1"], thresh1=float(s[0]), w_fi=data["w_fi"], w_fh=data["w_fh"],
                       w_oi=data["w_oi"], w_oh=data["w_oh"], rnn_threshold=thresholds, frontend=fe,
                       timesteps=int(s[6]), layout=layout)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"not a sensor-weights file: missing {exc}") from None

    @classmethod
    def random(cls, rng: np.random.Generator, *, thresh_range: float = 3.0,
               layout: ReadoutLayout | None = None, hidden: int = 1) -> "SensorWeights":
        """Random binary kernels and thresholds (for tests and benchmarks).

        ``layout``: the readout (its channels and timesteps); None is the authors'. ``hidden``: H,
        the number of hidden maps. The draws for the authors' layout and H = 1 are the ones made
        before layouts and hidden channels existed.
        """
        if not (isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 1):
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")

        def s(*shape):
            return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
        k = 1 if layout is None else layout.channels
        extra = {} if layout is None else {"layout": layout, "timesteps": layout.timesteps}
        gate = (KERNEL, KERNEL) if hidden == 1 else (hidden, KERNEL, KERNEL)
        out = (k, KERNEL, KERNEL) if hidden == 1 else (k, hidden, KERNEL, KERNEL)
        return cls(conv1=s(N_MAPS, KERNEL, KERNEL), thresh1=float(rng.uniform(-0.5, thresh_range)),
                   w_fi=s(*gate), w_fh=s(*gate), w_oi=s(k, KERNEL, KERNEL), w_oh=s(*out),
                   rnn_threshold=(float(rng.uniform(-thresh_range, thresh_range)) if hidden == 1 else
                                  tuple(float(v) for v in rng.uniform(-thresh_range, thresh_range, hidden))),
                   **extra)
