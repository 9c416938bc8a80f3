"""The sensor's analog noise model, in units of one binary MAC.

The authors train with Gaussian noise at three places (``authors``): N(0, 0.6^2) on the pooled conv
output before its threshold, N(0, 0.6^2) on the gate pre-activation, N(0, 1) on the output o_t.
A calibration file (JSON, ``calib noise``) may also add a per-pixel fixed-pattern offset on o.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class NoiseModel:
    conv_sigma: float = 0.0
    gate_sigma: float = 0.0
    out_sigma: float = 0.0
    out_offset: float = 0.0
    model_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("conv_sigma", "gate_sigma", "out_sigma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"noise {name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(self.out_offset):
            raise ValueError(f"noise out_offset must be finite, got {self.out_offset!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.conv_sigma or self.gate_sigma or self.out_sigma or self.out_offset)

    @classmethod
    def off(cls) -> "NoiseModel":
        return cls()

    @classmethod
    def authors(cls) -> "NoiseModel":
        return cls(conv_sigma=0.6, gate_sigma=0.6, out_sigma=1.0)

    @classmethod
    def from_spec(cls, spec: str) -> "NoiseModel":
        """``off``, ``authors`` or the path of a calibration JSON file."""
        if spec == "off":
            return cls.off()
        if spec == "authors":
            return cls.authors()
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--noise {spec!r}: not 'off', 'authors' or an existing JSON file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            params = data.get("noise", data)
            return cls(**{k: float(params[k]) for k in ("conv_sigma", "gate_sigma", "out_sigma") if k in params},
                       out_offset=float(params.get("out_offset", 0.0)),
                       model_id=str(data.get("model_id", "")))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"--noise {spec}: not a valid noise calibration file ({exc})") from None

    def to_dict(self) -> dict:
        return asdict(self)
