"""The sensor's analog noise model, in units of one binary MAC.

The authors train with Gaussian noise at three places (``authors``): N(0, 0.6^2) on the pooled conv
output before its threshold, N(0, 0.6^2) on the gate pre-activation, N(0, 1) on the output o_t.
A calibration file (JSON, written by ``pixelrnn calib noise``) may also describe how a physical
sensor's output stage differs from the ideal one::

    o_read = out_gain * o + N(0, out_sigma^2) + out_offset + offset_map[row, col]

``out_gain`` is the analog scale of the output register (charge lost while accumulating the
taps), ``out_offset`` a global offset and ``offset_map`` a per-pixel fixed-pattern offset (an
(H, W) array, stored in the JSON file as a nested list of rows).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

OffsetMap = tuple[tuple[float, ...], ...]


def _offset_map_tuple(value) -> OffsetMap | None:
    """A 2-D array-like of finite numbers -> an immutable tuple of row tuples (None stays None)."""
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("noise offset_map must be a 2-D array of numbers (a list of rows)") from None
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"noise offset_map must be a non-empty 2-D array (rows x columns), "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("noise offset_map must hold only finite numbers (found NaN or inf)")
    return tuple(tuple(float(v) for v in row) for row in arr)


@dataclass(frozen=True)
class NoiseModel:
    conv_sigma: float = 0.0
    gate_sigma: float = 0.0
    out_sigma: float = 0.0
    out_offset: float = 0.0
    model_id: str = field(default="", compare=False)
    out_gain: float = 1.0
    offset_map: OffsetMap | None = None

    def __post_init__(self) -> None:
        for name in ("conv_sigma", "gate_sigma", "out_sigma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"noise {name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(self.out_offset):
            raise ValueError(f"noise out_offset must be finite, got {self.out_offset!r}")
        if not (isinstance(self.out_gain, numbers.Real) and math.isfinite(self.out_gain) and self.out_gain > 0):
            raise ValueError(f"noise out_gain must be a finite number > 0, got {self.out_gain!r}")
        # any 2-D array-like is stored as an immutable tuple of rows (hashable, comparable)
        object.__setattr__(self, "offset_map", _offset_map_tuple(self.offset_map))

    @property
    def enabled(self) -> bool:
        return bool(self.conv_sigma or self.gate_sigma or self.out_sigma or self.out_offset
                    or self.out_gain != 1.0 or self.offset_map is not None)

    @property
    def has_offset(self) -> bool:
        """True when the readout gets an additive offset (global and/or per pixel)."""
        return bool(self.out_offset) or self.offset_map is not None

    @cached_property
    def offset_array(self) -> np.ndarray | None:
        """The per-pixel offset map as a read-only float64 (H, W) array, or None."""
        if self.offset_map is None:
            return None
        arr = np.array(self.offset_map, dtype=np.float64)
        arr.setflags(write=False)
        return arr

    def output_offset(self, shape: tuple[int, int]) -> float | np.ndarray:
        """The offset added to o on an (H, W) output: ``out_offset``, plus the map if there is one.

        Raises ValueError when the map was fitted to an output of another size.
        """
        if self.offset_map is None:
            return float(self.out_offset)
        arr = self.offset_array
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"noise offset_map is {arr.shape[0]}x{arr.shape[1]}, the sensor output is "
                             f"{shape[0]}x{shape[1]}: use a calibration file made for this sensor")
        return arr + float(self.out_offset)

    @classmethod
    def off(cls) -> "NoiseModel":
        return cls()

    @classmethod
    def authors(cls) -> "NoiseModel":
        return cls(conv_sigma=0.6, gate_sigma=0.6, out_sigma=1.0)

    @classmethod
    def from_dict(cls, params: dict, *, model_id: str = "") -> "NoiseModel":
        """Build from a dict of the fields (as in a calibration file's ``noise`` object)."""
        if not isinstance(params, dict):
            raise ValueError(f"noise parameters must be a JSON object, got {type(params).__name__}")
        known = {"conv_sigma", "gate_sigma", "out_sigma", "out_offset", "out_gain", "offset_map", "model_id"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown noise parameter(s) {unknown}; known: {sorted(known - {'model_id'})}")
        scalars = {k: float(params[k]) for k in ("conv_sigma", "gate_sigma", "out_sigma", "out_offset",
                                                 "out_gain") if k in params}
        return cls(**scalars, offset_map=_offset_map_tuple(params.get("offset_map")),
                   model_id=str(model_id or params.get("model_id", "")))

    @classmethod
    def from_spec(cls, spec: str) -> "NoiseModel":
        """``off``, ``authors`` or the path of a calibration JSON file.

        A file holds the fields at its top level or under ``"noise"``, and ``"model_id"`` (the
        program hash of the sensor weights it was fitted to; check it with
        :meth:`check_program`).
        """
        if spec == "off":
            return cls.off()
        if spec == "authors":
            return cls.authors()
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"noise {spec!r}: not 'off', 'authors' or an existing JSON file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the file does not hold a JSON object")
            params = data.get("noise", data)
            if params is data:
                params = {k: v for k, v in data.items() if k in {"conv_sigma", "gate_sigma", "out_sigma",
                                                                 "out_offset", "out_gain", "offset_map"}}
            return cls.from_dict(params, model_id=str(data.get("model_id", "")))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"noise {spec}: not a valid noise calibration file ({exc})") from None

    def check_program(self, program_hash: str) -> None:
        """A calibration file names the sensor program it was fitted to; refuse another program's."""
        if self.model_id and self.model_id != program_hash:
            raise ValueError(f"noise calibration is for model {self.model_id}, these weights are "
                             f"{program_hash}: calibrate for this model (pixelrnn calib noise)")

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (the offset map as a list of rows, or None)."""
        data = asdict(self)
        if self.offset_map is not None:
            data["offset_map"] = [list(row) for row in self.offset_map]
        return data


def noise_arg(spec: str) -> NoiseModel:
    """argparse type: ``off``, ``authors`` or a calibration JSON file -> a NoiseModel."""
    import argparse

    try:
        return NoiseModel.from_spec(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
