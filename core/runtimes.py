"""The host runtimes: one registry entry per runtime that can run a bundle's host decoder.

An entry (:class:`Runtime`) says which package it needs (import module, pip distribution), which
bundle file it runs (``host.onnx``, ``host.tflite``), how to load that file into a function
``run(x) -> outputs`` and how real values are (de)quantised for its tensors. An :class:`Alias`
(``tflite``) names the first installed of several runtimes. Adding a runtime is one
:func:`register_runtime` call; the host decoder, the benchmark, the TFLite runner of ``export`` and
``calib int8`` all look runtimes up here instead of keeping their own tables.

The TFLite (de)quantisation (:func:`tflite_quantizer`, :func:`tflite_dequantizer`) lives here once.
Runtime packages are imported only inside a loader, when that runtime is used: Larq Compute Engine
imports TensorFlow, so it is never imported at module level (docs/DESIGN.md, "Rooms and arrows").
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError

Run = Callable[[np.ndarray], np.ndarray]            # (N, ...) real values -> (N, outputs) float32
Loader = Callable[..., Run]                         # load(path, *, threads) -> run
Codec = Callable[[dict], Callable[[np.ndarray], np.ndarray]]   # tensor detail -> (de)quantise


# -- the one TFLite (de)quantisation ------------------------------------------------------------------
def _scale_zero(detail: dict) -> tuple[float, int]:
    scale, zero = detail.get("quantization", (0.0, 0)) or (0.0, 0)
    return float(scale or 0.0), int(zero or 0)


def tflite_quantizer(detail: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Real input values -> the tensor's dtype, quantised with its scale and zero point if it has one.

    ``detail``: a TFLite tensor detail (``dtype``, ``quantization`` = (scale, zero point); scale 0
    means not quantised). An identity scale on a tensor of the input's own dtype passes it through
    unchanged (no copy): the uint8 readout of a float host decoder.
    """
    dtype = np.dtype(detail["dtype"])
    scale, zero = _scale_zero(detail)
    if not (scale and dtype.kind in "iu"):
        return lambda x: np.asarray(x).astype(dtype, copy=False)
    info = np.iinfo(dtype)
    identity = scale == 1.0 and zero == 0

    def quantize(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if identity and x.dtype == dtype:
            return x
        q = np.round(x.astype(np.float64) / scale + zero)
        return np.clip(q, info.min, info.max).astype(dtype)
    return quantize


def tflite_dequantizer(detail: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The tensor's values -> float32 real values (``(q - zero point) * scale`` if quantised)."""
    scale, zero = _scale_zero(detail)
    if not (scale and np.dtype(detail["dtype"]).kind in "iu"):
        return lambda y: np.asarray(y, dtype=np.float32)
    s, z = np.float32(scale), np.float32(zero)
    return lambda y: (np.asarray(y, dtype=np.float32) - z) * s


def passthrough(detail: dict) -> Callable[[np.ndarray], np.ndarray]:
    """No (de)quantisation: the runtime takes and returns the values as they are (ONNX Runtime)."""
    return lambda x: x


# -- entries --------------------------------------------------------------------------------------------
def _no_conflict() -> str | None:
    return None


@dataclass(frozen=True)
class Runtime:
    """One host runtime. ``load(path, *, threads)`` returns ``run``: (N, ...) real values of the
    file's input -> (N, outputs) float32; the host decoder calls it with N = 1 readout (1, H, W) uint8.
    ``conflict()`` says why this process cannot load the runtime (None: it can)."""

    name: str
    module: str                       # import name, checked for "installed" without importing it
    distribution: str                 # pip package that provides it
    file: str                         # the bundle file it runs
    load: Loader
    export_format: str = ""           # the bundle export format that writes ``file``
    quantizer: Codec = passthrough    # tensor detail -> real values to the tensor's dtype
    dequantizer: Codec = passthrough  # tensor detail -> the tensor's values to float32
    conflict: Callable[[], str | None] = _no_conflict
    note: str = ""

    def __post_init__(self) -> None:
        for key in ("name", "module", "distribution", "file"):
            value = getattr(self, key)
            if not (isinstance(value, str) and value.strip()):
                raise InputError(f"runtime {key} must be a non-empty string, got {value!r}")
        for key in ("load", "quantizer", "dequantizer", "conflict"):
            if not callable(getattr(self, key)):
                raise InputError(f"runtime {self.name}: {key} must be callable, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class Alias:
    """A runtime name that means the first installed of ``candidates``."""

    name: str
    candidates: tuple[str, ...]
    note: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.strip()):
            raise InputError(f"alias name must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.candidates, tuple) and self.candidates
                and all(isinstance(c, str) and c for c in self.candidates)):
            raise InputError(f"alias {self.name}: candidates must be a non-empty tuple of runtime names, "
                             f"got {self.candidates!r}")


_REGISTRY: dict[str, Runtime | Alias] = {}


def register_runtime(runtime: Runtime | Alias, *, replace: bool = False) -> None:
    """Add a runtime (or an alias) to the registry; an existing name needs ``replace=True``."""
    if not isinstance(runtime, (Runtime, Alias)):
        raise InputError(f"runtime must be a core.runtimes.Runtime or Alias, got {type(runtime).__name__}")
    if runtime.name in _REGISTRY and not replace:
        raise InputError(f"runtime {runtime.name!r} is already registered; unregister it first or pass replace=True")
    if isinstance(runtime, Alias):
        missing = [c for c in runtime.candidates if not isinstance(_REGISTRY.get(c), Runtime)]
        if missing:
            raise InputError(f"alias {runtime.name}: {', '.join(missing)} is not a registered runtime")
    _REGISTRY[runtime.name] = runtime


def unregister_runtime(name: str) -> Runtime | Alias:
    """Remove a runtime or alias from the registry and return it."""
    entry = get_runtime(name)
    del _REGISTRY[name]
    return entry


@contextmanager
def registered(runtime: Runtime | Alias, *, replace: bool = False) -> Iterator[Runtime | Alias]:
    """Register ``runtime`` for the ``with`` block, then remove it (restoring the entry it replaced)."""
    before = _REGISTRY.get(runtime.name) if isinstance(runtime, (Runtime, Alias)) else None
    register_runtime(runtime, replace=replace)
    try:
        yield runtime
    finally:
        if before is None:
            _REGISTRY.pop(runtime.name, None)
        else:
            _REGISTRY[runtime.name] = before


def runtime_names(*, aliases: bool = True) -> tuple[str, ...]:
    """Registered names in registration order (runtimes only with ``aliases=False``)."""
    return tuple(n for n, e in _REGISTRY.items() if aliases or isinstance(e, Runtime))


def get_runtime(name: str) -> Runtime | Alias:
    """The entry called ``name``, or a one-line InputError listing the choices."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise InputError(f"unknown runtime {name!r}; choose from {', '.join(runtime_names())}")
    return entry


def installed(name: str) -> bool:
    """Whether the runtime's package can be imported (checked without importing it); for an alias,
    whether any of its candidates can. Unknown names are not installed."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if isinstance(entry, Alias):
        return any(installed(c) for c in entry.candidates)
    if entry is None:
        return False
    try:
        return importlib.util.find_spec(entry.module) is not None
    except (ValueError, ModuleNotFoundError):
        return False


def resolve(name: str) -> Runtime:
    """A runtime or alias name -> the installed :class:`Runtime`, or a one-line InputError (unknown
    name: the choices; not installed: the pip package)."""
    entry = get_runtime(name)
    if isinstance(entry, Alias):
        for candidate in entry.candidates:
            if installed(candidate):
                return _REGISTRY[candidate]
        needs = " or ".join(f"{c} (pip install {_pip(c)})" for c in entry.candidates)
        raise InputError(f"runtime {name} needs {needs}")
    if not installed(name):
        raise InputError(f"runtime {name} is not installed (pip install {entry.distribution})")
    return entry


class ModelLoadError(InputError):
    """A model file a runtime could not load (truncated, corrupt, not a model): a one-line reason."""


def load_file(entry: Runtime, path, *, threads: int) -> Run:
    """``entry.load(path, threads=threads)``, with a runtime's own failure to load a corrupt file
    (ONNX Runtime's InvalidProtobuf, TFLite's ValueError, ...) turned into a one-line
    :class:`ModelLoadError` naming the file; a missing file and InputErrors pass as they are."""
    if not isinstance(entry, Runtime):
        raise InputError(f"entry must be a core.runtimes.Runtime, got {type(entry).__name__}")
    try:
        return entry.load(path, threads=threads)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise ModelLoadError(f"model file not found: {exc.filename or path}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - runtimes raise their own types for a corrupt file
        text = " ".join(str(exc).split())
        raise ModelLoadError(f"{path}: {entry.name} cannot load it ({type(exc).__name__}: {text[:160]}); "
                             "the file is truncated or corrupt: re-export the bundle") from None


def version(name: str) -> str:
    """The installed version of the runtime's distribution (of the chosen one for an alias), or
    ``unknown``."""
    entry = get_runtime(name)
    if isinstance(entry, Alias):
        chosen = next((c for c in entry.candidates if installed(c)), None)
        return version(chosen) if chosen else "unknown"
    try:
        return importlib.metadata.version(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _pip(name: str) -> str:
    entry = _REGISTRY.get(name)
    return entry.distribution if isinstance(entry, Runtime) else name


# -- loaders of the built-in runtimes -----------------------------------------------------------------
def _load_onnxruntime(path, *, threads: int) -> Run:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return lambda x: sess.run([out], {inp: x})[0]


def _shape_error(path, sample: tuple[int, ...], got: tuple[int, ...]) -> InputError:
    return InputError(f"{Path(path).name} takes inputs of shape (N, {', '.join(map(str, sample))}), got {got}")


def _tflite_api_loader(interpreter: Callable[[], type], *, quantizer: Codec, dequantizer: Codec,
                       conflict: Callable[[], str | None]) -> Loader:
    """A loader for runtimes with the tf.lite ``Interpreter`` API (ai-edge-litert, tflite-runtime).

    A file with a dynamic batch is resized when the batch changes; a fixed batch-1 file runs the
    samples one by one.
    """
    def load(path, *, threads: int) -> Run:
        reason = conflict()
        if reason:
            raise InputError(reason)
        interp = interpreter()(model_path=str(path), num_threads=threads)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        sample = tuple(int(s) for s in inp["shape"][1:])
        dynamic = int(inp["shape_signature"][0]) == -1
        batch = [int(inp["shape"][0])]
        if dynamic and batch[0] != 1:
            interp.resize_tensor_input(inp["index"], (1,) + sample)
            batch[0] = 1
        interp.allocate_tensors()
        quantize, dequantize = quantizer(inp), dequantizer(out)
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
        i_in, i_out = inp["index"], out["index"]

        def run(x: np.ndarray) -> np.ndarray:
            if x.shape[1:] != sample:
                raise _shape_error(path, sample, x.shape)
            if len(x) != batch[0]:
                if not dynamic:
                    if batch[0] != 1:
                        raise InputError(f"{Path(path).name} takes batches of exactly {batch[0]}, got {len(x)}")
                    return np.concatenate([run(x[i:i + 1]) for i in range(len(x))])
                interp.resize_tensor_input(i_in, (len(x),) + sample)
                interp.allocate_tensors()
                batch[0] = len(x)
            set_tensor(i_in, quantize(x))
            invoke()
            return dequantize(get_tensor(i_out))
        return run
    return load


def _litert_interpreter() -> type:
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter


def _tflite_runtime_interpreter() -> type:
    from tflite_runtime.interpreter import Interpreter
    return Interpreter


_CLASHING = ("tensorflow", "larq_compute_engine")


def tflite_runtime_conflict() -> str | None:
    """tflite-runtime 2.14 cannot load a model in a process that loaded TensorFlow (or LCE, which
    imports it) before it: its Interpreter then fails with ``ValueError: vector::reserve`` (a
    native-library clash, measured); imported first, it works. The reason, or None."""
    order = {name: i for i, name in enumerate(sys.modules)}    # sys.modules keeps import order
    first_clash = min((order[n] for n in _CLASHING if n in order), default=None)
    if first_clash is None:
        return None
    own = order.get("tflite_runtime.interpreter")
    if own is not None and own < first_clash:
        return None
    return ("tflite-runtime cannot load a model in a process that imported TensorFlow or LCE first; "
            "choose another runtime (ai-edge-litert), or run it in a fresh process")


def _lce_interpreter() -> type:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")     # LCE imports TensorFlow: quiet its logs
    from larq_compute_engine import testing

    return testing.Interpreter


def _lce_detail(interp, side: str) -> dict:
    """LCE's interpreter keeps its tensor facts in lists: -> a TFLite-style detail of tensor 0."""
    scale, zero = getattr(interp, f"{side}_scales")[0], getattr(interp, f"{side}_zero_points")[0]
    return {"dtype": getattr(interp, f"{side}_types")[0], "quantization": (scale or 0.0, zero or 0)}


def _load_lce(path, *, threads: int) -> Run:
    """Larq Compute Engine's interpreter (it runs builtin ops and its own bit-packed ones)."""
    interp = _lce_interpreter()(Path(path).read_bytes(), num_threads=threads)
    sample = tuple(int(s) for s in interp.input_shapes[0][1:])
    quantize = tflite_quantizer(_lce_detail(interp, "input"))
    dequantize = tflite_dequantizer(_lce_detail(interp, "output"))

    def run(x: np.ndarray) -> np.ndarray:
        if x.shape[1:] != sample:
            raise _shape_error(path, sample, x.shape)
        return dequantize(interp.predict(quantize(x)))       # predict runs the batch one sample at a time
    return run


def _tflite_api_runtime(*, name: str, module: str, distribution: str, interpreter: Callable[[], type],
                        conflict: Callable[[], str | None] = _no_conflict, note: str = "") -> Runtime:
    """A runtime with the tf.lite Interpreter API running ``host.tflite`` with the TFLite codec."""
    return Runtime(name=name, module=module, distribution=distribution, file="host.tflite",
                   export_format="tflite", quantizer=tflite_quantizer, dequantizer=tflite_dequantizer,
                   conflict=conflict, note=note,
                   load=_tflite_api_loader(interpreter, quantizer=tflite_quantizer,
                                           dequantizer=tflite_dequantizer, conflict=conflict))


def _register_builtins() -> None:
    register_runtime(Runtime(name="onnxruntime", module="onnxruntime", distribution="onnxruntime",
                             file="host.onnx", export_format="onnx", load=_load_onnxruntime,
                             note="host.onnx on ONNX Runtime's CPU provider"))
    register_runtime(_tflite_api_runtime(name="ai-edge-litert", module="ai_edge_litert",
                                         distribution="ai-edge-litert", interpreter=_litert_interpreter,
                                         note="host.tflite on Google's LiteRT interpreter"))
    register_runtime(_tflite_api_runtime(name="tflite-runtime", module="tflite_runtime",
                                         distribution="tflite-runtime", interpreter=_tflite_runtime_interpreter,
                                         conflict=tflite_runtime_conflict,
                                         note="host.tflite on tflite-runtime (not after TensorFlow)"))
    register_runtime(Runtime(name="lce", module="larq_compute_engine", distribution="larq-compute-engine",
                             file="host.tflite", export_format="tflite", load=_load_lce,
                             quantizer=tflite_quantizer, dequantizer=tflite_dequantizer,
                             note="Larq Compute Engine's interpreter; imports TensorFlow (desktop only)"))
    register_runtime(Alias(name="tflite", candidates=("ai-edge-litert", "tflite-runtime"),
                           note="ai-edge-litert if installed, else tflite-runtime"))


_register_builtins()
