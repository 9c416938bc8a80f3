"""The host decoder: a bundle's off-sensor decoder on a chosen runtime, readout -> logits.

The runtimes are the entries of :mod:`core.runtimes` (which bundle file each runs, its package and
how it loads); the built-in ones:

- ``onnxruntime``: ``host.onnx`` on ONNX Runtime's CPU provider;
- ``tflite``: ``host.tflite`` on ai-edge-litert, or tflite-runtime if ai-edge-litert is missing
  (both can be named directly: ``ai-edge-litert``, ``tflite-runtime``). tflite-runtime cannot
  load a model in a process that imported TensorFlow first (docs/DESIGN.md section 4): refused;
- ``lce``: Larq Compute Engine's interpreter running ``host.tflite`` (plain builtin ops; LCE's
  interpreter runs them as well as its own bit-packed ops). Importing LCE imports TensorFlow, and
  LCE has no aarch64 wheel: this is a desktop comparison, not a Pi runtime. The bit-packed
  ``pixelrnn_lce.tflite`` is frames -> logits (sensor included), so it cannot decode a readout.

The runtimes are entries of :mod:`core.runtimes` (names, installed check, version, aliases are
asked of it directly). Runtime packages are imported only when used.
"""
from __future__ import annotations

import time

import numpy as np

from core import runtimes
from core.bundle import BundleError
from core.errors import InputError
from edge.models import Bundle


def softmax_top(logits: np.ndarray) -> tuple[int, float]:
    """Index and softmax probability of the largest logit."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    k = int(np.argmax(z))
    return k, float(e[k] / e.sum())


class HostDecoder:
    """The off-sensor decoder of a bundle on one runtime: ``decoder(readout) -> logits``.

    ``readout``: (64, 64) uint8 levels; returns (classes,) float32. ``load_s`` is the model load
    time; the first call (``first_s``) includes the runtime's lazy set-up.
    """

    def __init__(self, *, bundle: Bundle, runtime: str = "onnxruntime", threads: int = 1) -> None:
        if not isinstance(bundle, Bundle):
            raise InputError(f"bundle must be an edge.models.Bundle, got {type(bundle).__name__}")
        if not (isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= 256):
            raise InputError(f"threads must be an integer 1..256, got {threads!r}")
        entry = runtimes.resolve(runtime)
        self.backend = entry.name
        self.threads = threads
        self.version = runtimes.version(entry.name)
        self.classes = bundle.classes
        size = bundle.sensor.frontend.size
        self.shape = (size, size)
        how = f"export the bundle with the {entry.export_format} format, or " if entry.export_format else ""
        self.path = bundle.file(entry.file, hint=f"{how}choose another runtime")
        t0 = time.perf_counter()
        self._run = runtimes.load_file(entry, self.path, threads=threads)
        self.load_s = time.perf_counter() - t0
        self.first_s: float | None = None

    def __call__(self, readout: np.ndarray) -> np.ndarray:
        if readout.shape != self.shape or readout.dtype != np.uint8:
            raise InputError(f"readout must be {self.shape} uint8, got {readout.shape} {readout.dtype}")
        if self.first_s is None:
            t0 = time.perf_counter()
            out = self._run(readout[None])
            self.first_s = time.perf_counter() - t0
        else:
            out = self._run(readout[None])
        logits = np.asarray(out, dtype=np.float32).reshape(-1)
        if logits.size != len(self.classes):
            raise BundleError(f"{self.path} returns {logits.size} logits, the manifest lists "
                              f"{len(self.classes)} classes")
        if not np.isfinite(logits).all():
            raise BundleError(f"{self.path} returns NaN or infinite logits: its weights are damaged; "
                              "re-export the bundle")
        return logits

    def describe(self) -> dict:
        return {"backend": self.backend, "version": self.version, "threads": self.threads,
                "file": self.path.name, "load_ms": round(self.load_s * 1e3, 3)}
