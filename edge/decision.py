"""One decision of the camera loop: the class the host decoded for one 16-frame window.

The host stage (:mod:`edge.host`, also in a UDP host process) produces plain dicts, which cross
process boundaries as they are; the loop hands callers this typed, immutable view of them.
``to_dict()`` gives the JSON object the camera script prints, key for key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import InputError

# Decision field -> JSON key (the script's output format; tests parse it)
JSON_KEYS = {"window": "window", "class_index": "class", "label": "label", "score": "score",
             "latency_ms": "latency_ms", "host_us": "host_us", "bytes": "bytes", "logits": "logits"}


@dataclass(frozen=True)
class Decision:
    window: int                    # window number (the packet's sequence number), from 0
    class_index: int               # argmax of the logits
    label: str                     # the bundle's name for that class
    score: float                   # its softmax probability
    latency_ms: float | None       # end to end, from the window's last frame (None: no timestamp)
    host_us: float                 # host work for this window: packet checks + decoder
    bytes: int                     # readout packet size on the link (header included)
    logits: tuple[float, ...]

    def __post_init__(self) -> None:
        """Refuse NaN and infinities: the camera script prints strict JSON (a NaN score is not JSON,
        and it would be a silent wrong answer)."""
        numbers = {"score": self.score, "host_us": self.host_us,
                   **({"latency_ms": self.latency_ms} if self.latency_ms is not None else {})}
        for name, value in numbers.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise InputError(f"decision of window {self.window}: {name} must be a finite number, got {value!r} "
                                 "(the decoder produced NaN or infinite logits: re-export the bundle)")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.logits):
            raise InputError(f"decision of window {self.window}: the logits hold NaN or infinite values "
                             "(the decoder's weights are damaged: re-export the bundle)")

    @classmethod
    def from_dict(cls, data: dict) -> "Decision":
        """A host stage's decision dict (JSON keys) -> Decision."""
        missing = [key for key in JSON_KEYS.values() if key not in data]
        if missing:
            raise InputError(f"a decision needs the keys {', '.join(missing)}")
        values = {name: data[key] for name, key in JSON_KEYS.items()}
        values["logits"] = tuple(float(v) for v in values["logits"])
        return cls(**values)

    def to_dict(self) -> dict:
        """The JSON object of this decision, as the camera script prints it (logits as a list)."""
        out = {key: getattr(self, name) for name, key in JSON_KEYS.items()}
        out["logits"] = list(self.logits)
        return out
