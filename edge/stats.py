"""Latency samples and their summary (percentiles), shared by the camera loop and the benchmark."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)
MAX_SAMPLES = 200_000          # a long camera run keeps the most recent samples (~2 h at 30 fps)


@dataclass
class Latency:
    """Durations in seconds; ``summary()`` reports them in ``unit`` (us or ms)."""

    samples: deque = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    count: int = 0
    total: float = 0.0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1
        self.total += seconds

    def extend(self, seconds) -> None:
        for s in seconds:
            self.add(float(s))

    def summary(self, *, unit: str = "ms") -> dict:
        """count, mean, std, min, p50, p90, p99, max (of the kept samples) in ``unit``."""
        return summarize(np.fromiter(self.samples, dtype=np.float64, count=len(self.samples)),
                         unit=unit, count=self.count)


def summarize(seconds: np.ndarray, *, unit: str = "us", count: int | None = None) -> dict:
    """Summary statistics of durations given in seconds, reported in ``unit`` (``us`` or ``ms``)."""
    scale = {"us": 1e6, "ms": 1e3, "s": 1.0}.get(unit)
    if scale is None:
        raise ValueError(f"unit must be us, ms or s, got {unit!r}")
    values = np.asarray(seconds, dtype=np.float64) * scale
    out = {"unit": unit, "n": int(values.size if count is None else count)}
    if values.size == 0:
        return out
    out.update(mean=float(values.mean()), std=float(values.std()), min=float(values.min()))
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(values, p))
    out["max"] = float(values.max())
    return out
