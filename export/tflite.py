"""TFLite and LCE export of PixelRNN through its Keras/Larq twin, and a runner for the interpreters.

``export_tflite`` writes, into ``out_dir``:

- ``pixelrnn.tflite``: frames (B, 16, 64, 64) uint8 -> logits; builtin ops only, so ai-edge-litert
  and tflite-runtime both run it;
- ``host.tflite``: the host decoder, readout (B, 64, 64) uint8 -> logits; builtin ops only;
- ``pixelrnn_lce.tflite``: frames (1, 16, 64, 64) uint8 -> logits, bit-packed by LCE (custom ops
  LceBconv2d, LceQuantize, ...): only LCE's interpreter runs it;
- ``host_int8.tflite`` (``int8``): the host decoder quantized to int8 after training, float logits out.

A model with another readout layout or decoder head (:mod:`core.readout_layout`) gets the same
files, built by :mod:`export.tflite_layout` instead of the twin: ``pixelrnn.tflite`` (frames
(B, T, 64, 64) uint8 -> logits) and ``host.tflite`` (its readout levels (B, M, S, S) uint8 -> logits;
the authors' 64x64 readout keeps (B, 64, 64)), builtin ops only, ``pixelrnn_lce.tflite`` (batch
1, bit-packed), and with ``int8`` ``host_int8.tflite``: the same levels in, float logits out, int8
inside, calibrated on representative levels of that shape
(:func:`export.tflite_layout.host_int8_tflite`).

The uint8 input of the authors' host_int8.tflite carries the calibrated scale (1.0 when the
representative readouts span 0..255); :func:`run_tflite` quantizes real values with it. A layout's
host_int8.tflite takes the uint8 levels unquantized, as its host.tflite does (a CAST, then int8).
Either way the runtimes of :mod:`core.runtimes` feed both files the readout levels as they are.
TensorFlow and Larq are imported only inside :func:`export_tflite`, so :func:`run_tflite` works on a
device that has only ai-edge-litert (or tflite-runtime) and numpy; it opens the interpreters through
the runtime registry (:mod:`core.runtimes`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from core import runtimes
from core.atomic import atomic_open
from core.errors import InputError

FORMATS = ("tflite", "lce")
FILES = {"pixelrnn": "pixelrnn.tflite", "host": "host.tflite", "pixelrnn_lce": "pixelrnn_lce.tflite",
         "host_int8": "host_int8.tflite"}
SIZE = 64
_DEFAULT_CALIBRATION = 64       # uniform readouts when no representative set is given


# -- export -------------------------------------------------------------------------------------
def _check_formats(formats) -> set[str]:
    if isinstance(formats, str) or not isinstance(formats, (set, frozenset, list, tuple)):
        raise InputError(f"formats must be a set of names from {set(FORMATS)}, got {formats!r}")
    chosen = set(formats)
    bad = sorted(str(f) for f in chosen if f not in FORMATS)
    if bad:
        raise InputError(f"unknown TFLite export format(s) {bad}; choose from {list(FORMATS)}")
    if not chosen:
        raise InputError(f"formats is empty; choose one or more of {list(FORMATS)}")
    return chosen


def check_representative(representative, layout=None) -> np.ndarray:
    """Readouts for int8 calibration: a non-empty (N, 64, 64) uint8 array for the authors' readout
    (``layout`` None or the authors', any head); for another readout layout its levels (N, M, S, S)
    uint8 in 0..2**bits - 1 (:func:`core.readouts.check_layout_readouts`)."""
    if layout is not None and not layout.is_authors:
        from core.readouts import check_layout_readouts

        return check_layout_readouts(representative, layout, what="representative")
    if not isinstance(representative, np.ndarray):
        raise InputError(f"representative must be a numpy array of readouts (N, 64, 64) uint8, "
                         f"got {type(representative).__name__}")
    if representative.ndim != 3 or representative.shape[1:] != (SIZE, SIZE) or representative.shape[0] < 1:
        raise InputError(f"representative must have shape (N, 64, 64) with N >= 1, got {representative.shape}")
    if representative.dtype != np.uint8:
        raise InputError(f"representative must be uint8 readout levels, got dtype {representative.dtype}")
    return representative


def _write(path: Path, data: bytes) -> Path:
    """Write atomically (temp file in the same folder, then rename)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return path


def _plain_tflite(keras_model) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _int8_tflite(keras_model, representative: np.ndarray) -> bytes:
    """Post-training int8 quantization; the uint8 readout goes in as it is, float logits come out."""
    import tensorflow as tf

    def dataset():
        for r in representative:
            yield [r[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    with warnings.catch_warnings():   # the uint8 input's statistics come from the calibration itself
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def export_tflite(*, model, out_dir: Path, formats: set[str], int8: bool = False,
                  representative: np.ndarray | None = None) -> dict[str, Path]:
    """Convert ``model`` (a PixelRNN) to TFLite files in ``out_dir``; returns {stem: path}.

    ``formats``: ``tflite`` (pixelrnn.tflite + host.tflite, builtin ops only) and/or ``lce``
    (pixelrnn_lce.tflite, bit-packed); any readout layout and head.
    ``int8`` also writes host_int8.tflite, calibrated on ``representative`` readouts in the host
    decoder's input shape: (N, 64, 64) uint8 for the authors' readout and head, the levels of another
    readout layout or head (:func:`check_representative`) -- real (or simulated) readouts of this
    model's sensor program are best. Without them the authors' decoder is calibrated on a fixed set of
    uniform random levels (coarser); another layout or head needs them (a one-line InputError):
    uniform random levels calibrate it badly (lips.pt: 41% agreement with the float decoder, against
    99% on real readouts; docs/RESULTS.md).
    """
    from pixelrnn.model import PixelRNN

    if not isinstance(model, PixelRNN):
        raise InputError(f"model must be a pixelrnn.model.PixelRNN, got {type(model).__name__}")
    chosen = _check_formats(formats)
    if not isinstance(int8, bool):
        raise InputError(f"int8 must be True or False, got {int8!r}")
    if representative is not None:
        if not int8:
            raise InputError("representative readouts are used only with int8=True")
        representative = check_representative(representative, model.config.layout)
    # the Keras/Larq twin is the authors' network (readout, head, one hidden map); any other is built
    # from its numpy parameters (export.tflite_layout)
    authors_readout = model.config.layout.is_authors and model.config.decoder == "authors"
    layout_model = not (authors_readout and model.config.hidden_channels == 1)
    if layout_model and int8 and representative is None:
        from export.layouts import layout_what

        what = (f"a model with hidden_channels={model.config.hidden_channels}" if authors_readout
                else layout_what(model.config.layout, model.config.decoder))
        raise InputError(f"int8 of {what} needs representative "
                         "readouts of its sensor program (uniform random levels calibrate it badly): pass "
                         "representative=, e.g. the readout of pixelrnn simulate --readout-only")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise InputError(f"out_dir must be a folder path, got {type(out_dir).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out} ({exc.strerror or exc})") from None
    if layout_model:
        return _export_layout(model, out, chosen, representative)

    from pixelrnn.larq_twin import build_twin

    written: dict[str, Path] = {}
    if "tflite" in chosen:
        written["pixelrnn"] = _write(out / FILES["pixelrnn"], _plain_tflite(build_twin(model=model)))
        written["host"] = _write(out / FILES["host"], _plain_tflite(build_twin(model=model, include_sensor=False)))
    if int8:
        if representative is None:
            rng = np.random.default_rng(0)
            representative = rng.integers(0, 256, size=(_DEFAULT_CALIBRATION, SIZE, SIZE), dtype=np.uint8)
        # float input: the converter then quantizes it to uint8 with the calibrated scale
        host = build_twin(model=model, include_sensor=False, input_dtype="float32")
        written["host_int8"] = _write(out / FILES["host_int8"], _int8_tflite(host, representative))
    if "lce" in chosen:
        import larq_compute_engine as lce

        twin = build_twin(model=model, bitpacked=True)
        written["pixelrnn_lce"] = _write(out / FILES["pixelrnn_lce"], lce.convert_keras_model(twin))
    return written


def _export_layout(model, out: Path, chosen: set[str], representative: np.ndarray | None = None) -> dict[str, Path]:
    """The files of ``chosen`` for a model with another readout layout or head, built from its numpy
    parameters (:mod:`export.tflite_layout`), not through the Keras/Larq twin; with ``representative``
    levels (int8; checked by :func:`export_tflite`) also host_int8.tflite, calibrated on them."""
    from export.onnx_export import layout_decoder_params
    from export.tflite_layout import host_int8_tflite, host_tflite, lce_keras_model, pixelrnn_tflite

    sensor, decoder = model.sensor_weights(), layout_decoder_params(model)
    written: dict[str, Path] = {}
    if "tflite" in chosen:
        written["pixelrnn"] = _write(out / FILES["pixelrnn"], pixelrnn_tflite(sensor, decoder))
        written["host"] = _write(out / FILES["host"], host_tflite(decoder))
    if representative is not None:
        written["host_int8"] = _write(out / FILES["host_int8"], host_int8_tflite(decoder, representative))
    if "lce" in chosen:
        import larq_compute_engine as lce

        written["pixelrnn_lce"] = _write(out / FILES["pixelrnn_lce"],
                                         lce.convert_keras_model(lce_keras_model(sensor, decoder)))
    return written


# -- running ------------------------------------------------------------------------------------
def _tflite_runtimes() -> tuple[str, ...]:
    """Registered runtimes (and aliases) that run .tflite files."""
    def runs_tflite(name: str) -> bool:
        entry = runtimes.get_runtime(name)
        names = entry.candidates if isinstance(entry, runtimes.Alias) else (name,)
        return all(runtimes.get_runtime(n).file.endswith(".tflite") for n in names)
    return tuple(n for n in runtimes.runtime_names() if runs_tflite(n))


def _run_subprocess(path: Path, inputs: np.ndarray, runtime: str, threads: int) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="pixelrnn_tflite_") as tmp:
        src, dst = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
        np.save(src, inputs)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(path), runtime,
                               str(threads), str(src), str(dst)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"{runtime} failed on {path.name} in a subprocess: {last}")
        return np.load(dst)


def run_tflite(path, inputs: np.ndarray, *, runtime: str = "ai-edge-litert", threads: int = 1) -> np.ndarray:
    """Run a .tflite file on a batch ``inputs`` (N, ...) of real values -> float32 outputs (N, classes).

    ``inputs`` are gray levels (full model) or readout levels (host model); quantized inputs are
    quantized with the file's own scale (:func:`core.runtimes.tflite_quantizer`). ``runtime``: a
    registered runtime that runs .tflite files (:mod:`core.runtimes`): ``ai-edge-litert``,
    ``tflite-runtime`` (run in a subprocess when this process cannot load it, see
    :func:`core.runtimes.tflite_runtime_conflict`), ``lce`` (Larq Compute Engine's interpreter, the
    only one that runs ``*_lce.tflite``) or the alias ``tflite``.
    """
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        raise InputError(f"TFLite file not found: {path}")
    path = Path(path)
    choices = _tflite_runtimes()
    if runtime not in choices:
        raise InputError(f"unknown runtime {runtime!r} for .tflite files; choose from {', '.join(choices)}")
    if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
    if not isinstance(inputs, np.ndarray) or inputs.ndim < 2 or len(inputs) < 1:
        raise InputError(f"inputs must be a non-empty numpy batch (N, ...), got "
                         f"{getattr(inputs, 'shape', type(inputs).__name__)}")
    entry = runtimes.resolve(runtime)
    if entry.conflict():
        return _run_subprocess(path, inputs, entry.name, threads)
    run = runtimes.load_file(entry, path, threads=threads)
    chunk = max(1, (1 << 20) // max(1, int(np.prod(inputs.shape[1:]))))     # bounded working set
    return np.concatenate([np.asarray(run(inputs[i:i + chunk]), dtype=np.float32)
                           for i in range(0, len(inputs), chunk)])


def _worker(argv: list[str]) -> int:
    path, runtime, threads, src, dst = argv
    np.save(dst, run_tflite(Path(path), np.load(src), runtime=runtime, threads=int(threads)))
    return 0


if __name__ == "__main__":  # the subprocess of run_tflite; not a user command
    if len(sys.argv) == 7 and sys.argv[1] == "--worker":
        sys.path.pop(0)            # this folder (export/) must not shadow packages
        sys.exit(_worker(sys.argv[2:]))
    sys.exit("export/tflite.py is a library; use `pixelrnn export` to export models")
