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
from edge.payloads import get_payload, layout_image_shape, layout_payloads


def softmax_top(logits: np.ndarray) -> tuple[int, float]:
    """Index and softmax probability of the largest logit."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    k = int(np.argmax(z))
    return k, float(e[k] / e.sum())


class HostDecoder:
    """The off-sensor decoder of a bundle on one runtime: ``decoder(readout) -> logits``.

    ``readout``: (64, 64) uint8 levels; for a bundle with another readout layout (its manifest's
    ``readout_layout``) the packet's (M*S, S) image of the M maps (``shape``), or the (M, S, S) maps
    themselves, fed to the runtime as (1, M, S, S). Returns (classes,) float32. ``load_s`` is the
    model load time; the first call (``first_s``) includes the runtime's lazy set-up. ``encodings``:
    the payload wire ids this model reads (None: any; a layout's own payload otherwise).
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
        self.layout = layout = bundle.layout
        if layout.is_authors:
            size = bundle.sensor.frontend.size
            self.shape = (size, size)
            self.input_shape = (1, size, size)
            self.encodings = None
        else:
            self.shape = layout_image_shape(layout)
            self.input_shape = (1,) + layout.shape
            self.encodings = tuple(get_payload(name).wire_id for name in layout_payloads(layout))
        skipped = bundle.manifest.get("skipped")
        why = skipped.get(entry.export_format) if isinstance(skipped, dict) else None
        if isinstance(why, str) and why:
            hint = f"the {entry.export_format} format was skipped at export ({why}); choose another runtime"
        else:
            how = f"export the bundle with the {entry.export_format} format, or " if entry.export_format else ""
            hint = f"{how}choose another runtime"
        self.path = bundle.file(entry.file, hint=hint)
        t0 = time.perf_counter()
        self._run = runtimes.load_file(entry, self.path, threads=threads)
        self.load_s = time.perf_counter() - t0
        self.first_s: float | None = None

    def __call__(self, readout: np.ndarray) -> np.ndarray:
        if readout.dtype != np.uint8 or (readout.shape != self.shape and readout.shape != self.input_shape[1:]):
            also = "" if self.layout.is_authors else f" or {self.input_shape[1:]}"
            raise InputError(f"readout must be {self.shape}{also} uint8, got {readout.shape} {readout.dtype}")
        x = readout.reshape(self.input_shape)
        if self.first_s is None:
            t0 = time.perf_counter()
            out = self._run(x)
            self.first_s = time.perf_counter() - t0
        else:
            out = self._run(x)
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
