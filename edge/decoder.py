"""The host decoder: a bundle's off-sensor decoder on a chosen runtime, readout -> logits.

Runtimes (``--runtime``):

- ``onnxruntime``: ``host.onnx`` on ONNX Runtime's CPU provider;
- ``tflite``: ``host.tflite`` on ai-edge-litert, or tflite-runtime if ai-edge-litert is missing
  (both can be named directly: ``ai-edge-litert``, ``tflite-runtime``). tflite-runtime cannot
  load a model in a process that imported TensorFlow first (DESIGN.md section 4): refused here;
- ``lce``: Larq Compute Engine's interpreter running ``host.tflite`` (plain builtin ops; LCE's
  interpreter runs them as well as its own bit-packed ops). Importing LCE imports TensorFlow, and
  LCE has no aarch64 wheel: this is a desktop comparison, not a Pi runtime. The bit-packed
  ``pixelrnn_lce.tflite`` is frames -> logits (sensor included), so it cannot decode a readout.

Everything heavy is imported inside :class:`HostDecoder`, only for the runtime that is used.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

from edge.models import Bundle
from core.errors import InputError

BACKENDS = ("onnxruntime", "ai-edge-litert", "tflite-runtime", "lce")
RUNTIMES = ("onnxruntime", "tflite", "lce", "ai-edge-litert", "tflite-runtime")
_MODULES = {"onnxruntime": "onnxruntime", "ai-edge-litert": "ai_edge_litert",
            "tflite-runtime": "tflite_runtime", "lce": "larq_compute_engine"}
_DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "ai-edge-litert": "ai-edge-litert",
                  "tflite-runtime": "tflite-runtime", "lce": "larq-compute-engine"}
_FILES = {"onnxruntime": "host.onnx", "ai-edge-litert": "host.tflite", "tflite-runtime": "host.tflite",
          "lce": "host.tflite"}


def backend_installed(backend: str) -> bool:
    """Whether the runtime's package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(_MODULES[backend]) is not None
    except (ValueError, ModuleNotFoundError):
        return False


def available_backends() -> list[str]:
    return [b for b in BACKENDS if backend_installed(b)]


def backend_version(backend: str) -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[backend])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def resolve_backend(runtime: str) -> str:
    """A ``--runtime`` choice -> an installed backend name, or a one-line InputError."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if runtime == "tflite":
        for backend in ("ai-edge-litert", "tflite-runtime"):
            if backend_installed(backend):
                return backend
        raise InputError("--runtime tflite needs ai-edge-litert (pip install ai-edge-litert) or tflite-runtime")
    if not backend_installed(runtime):
        raise InputError(f"runtime {runtime} is not installed (pip package {_DISTRIBUTIONS[runtime]})")
    return runtime


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
        self.backend = resolve_backend(runtime)
        self.threads = threads
        self.version = backend_version(self.backend)
        self.classes = bundle.classes
        size = bundle.sensor.frontend.size
        self.shape = (size, size)
        path = bundle.file(_FILES[self.backend], hint=f"export the bundle with the "
                           f"{'onnx' if self.backend == 'onnxruntime' else 'tflite'} format, or choose "
                           f"another --runtime")
        self.path = path
        t0 = time.perf_counter()
        loader = {"onnxruntime": self._load_onnx, "lce": self._load_lce}.get(self.backend, self._load_tflite)
        self._run = loader(str(path))
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
            raise InputError(f"{self.path.name} returns {logits.size} logits, the manifest lists "
                             f"{len(self.classes)} classes")
        return logits

    def describe(self) -> dict:
        return {"backend": self.backend, "version": self.version, "threads": self.threads,
                "file": self.path.name, "load_ms": round(self.load_s * 1e3, 3)}

    # loaders: each returns a function (1, H, W) uint8 -> (1, classes)
    def _load_onnx(self, path: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        inp, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        return lambda x: sess.run([out], {inp: x})[0]

    def _load_tflite(self, path: str):
        if self.backend == "tflite-runtime":
            if any(name in sys.modules for name in ("tensorflow", "larq_compute_engine")):
                raise InputError("tflite-runtime cannot load a model in a process that imported "
                                 "TensorFlow or LCE first: use --runtime ai-edge-litert")
            from tflite_runtime.interpreter import Interpreter
        else:
            from ai_edge_litert.interpreter import Interpreter
        interp = Interpreter(model_path=path, num_threads=self.threads)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        quantize = _quantizer(inp)
        dequantize = _dequantizer(out)
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
        i_in, i_out = inp["index"], out["index"]

        def run(x):
            set_tensor(i_in, quantize(x))
            invoke()
            return dequantize(get_tensor(i_out))
        return run

    def _load_lce(self, path: str):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # LCE imports TensorFlow: quiet its logs
        from larq_compute_engine import testing

        interp = testing.Interpreter(Path(path).read_bytes(), num_threads=self.threads)
        scale, zero = (interp.input_scales[0] or 0.0), (interp.input_zero_points[0] or 0)
        quantize = _quantizer({"dtype": interp.input_types[0], "quantization": (scale, zero)})
        oscale, ozero = (interp.output_scales[0] or 0.0), (interp.output_zero_points[0] or 0)
        dequantize = _dequantizer({"dtype": interp.output_types[0], "quantization": (oscale, ozero)})
        return lambda x: dequantize(interp.predict(quantize(x)))


def _quantizer(detail: dict):
    """Readout levels -> the tensor's dtype (quantized with its scale and zero point if any)."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0)) or (0.0, 0)
    if dtype == np.uint8 and (not scale or (scale == 1.0 and zero == 0)):
        return lambda x: x
    if scale and dtype.kind in "iu":
        info = np.iinfo(dtype)
        return lambda x: np.clip(np.round(x.astype(np.float64) / scale + zero), info.min, info.max).astype(dtype)
    return lambda x: x.astype(dtype)


def _dequantizer(detail: dict):
    scale, zero = detail.get("quantization", (0.0, 0)) or (0.0, 0)
    if scale and np.dtype(detail["dtype"]).kind in "iu":
        return lambda y: (np.asarray(y, np.float32) - zero) * np.float32(scale)
    return lambda y: y
