"""Static int8 quantization of a bundle's host decoder, calibrated on real sensor readouts.

``host.onnx`` -> ``host_int8.onnx`` with ONNX Runtime's ``quantize_static`` (QDQ format, int8
weights, uint8 activations, per-tensor scales, float logits out; the graph is pre-processed first
as ONNX Runtime recommends) and a :class:`~onnxruntime.quantization.CalibrationDataReader` over real readouts; and
``host_int8.tflite`` with TensorFlow's converter and those readouts as its representative dataset
(``export.tflite``). The readouts are split with the same stratified folds as ``calib decoder``:
the quantizers see the training folds only, and accuracy (float and int8) is measured on the
held-out fold. Sizes and the median latency per inference (1 thread, float and int8 timed
round-robin in one run) are reported, and the bundle's manifest is rewritten to list the new files.
The graphs run on the registered host runtimes (:mod:`core.runtimes`: onnxruntime, ai-edge-litert).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.layout import require_authors_readout
from core import runtimes
from core.atomic import atomic_open
from core.errors import InputError
from core.readouts import load_readouts, stratified_folds

ONNX_FLOAT, ONNX_INT8 = "host.onnx", "host_int8.onnx"
TFLITE_FLOAT, TFLITE_INT8 = "host.tflite", "host_int8.tflite"
SENSOR_FILE = "sensor_weights.npz"
LARQ_HINT = "pip install -c constraints.txt -e '.[larq]'"


@dataclass(frozen=True)
class Int8Options:
    """Split, runtimes and timing of ``calib int8``."""

    folds: int = 5                  # the same stratified folds as calib decoder
    holdout_fold: int = 0           # evaluated on this fold; quantizers calibrated on the others
    seed: int = 0
    tflite: bool = True             # also quantize for TFLite (needs TensorFlow: the [larq] extra)
    runs: int = 300                 # timed inferences per graph
    warmup: int = 20

    def __post_init__(self) -> None:
        for name, lo in (("folds", 2), ("holdout_fold", 0), ("runs", 1), ("warmup", 0)):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.holdout_fold >= self.folds:
            raise InputError(f"holdout_fold must lie in 0..{self.folds - 1}, got {self.holdout_fold}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.tflite, bool):
            raise InputError(f"tflite must be True or False, got {self.tflite!r}")


# -- the bundle's model ------------------------------------------------------------------------------
def _load_sensor(bundle: Path):
    from core.bundle import BundleError, check_sensor_scalars
    from firmware_sim.weights import SensorWeights

    try:
        data = np.load(bundle / SENSOR_FILE, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with data:
            if "scalars" not in data.files:
                raise ValueError("no scalars array")
            check_sensor_scalars(data["scalars"], where=str(bundle / SENSOR_FILE))
            return SensorWeights.from_npz_dict(data)
    except BundleError:
        raise
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{bundle / SENSOR_FILE} is unreadable ({first[:120]}); re-export the bundle") from None


def model_from_bundle(bundle: Path, manifest: dict):
    """Rebuild the PixelRNN of a bundle from ``sensor_weights.npz`` and ``host.onnx`` (the TFLite
    converter needs the model); checked against host.onnx and the manifest's program hash."""
    import onnx
    import torch
    from onnx import numpy_helper

    from pixelrnn.model import ModelConfig, PixelRNN

    sensor = _load_sensor(bundle)
    if sensor.program_hash() != manifest.get("sensor_program_hash"):
        raise InputError(f"{bundle}: sensor_weights.npz does not match the manifest's sensor program hash")
    graph = onnx.load(str(bundle / ONNX_FLOAT)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    bn = next((n for n in graph.node if n.op_type == "BatchNormalization"), None)
    needed = ("fin_sign", "bn_weight", "bn_bias", "bn_mean", "bn_var", "thresh3", "fc_weight_t", "fc_bias")
    if bn is None or any(k not in inits for k in needed):
        raise InputError(f"{bundle / ONNX_FLOAT} is not a pixelrnn-edge host decoder (re-export the bundle)")
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    classes = [str(c) for c in manifest.get("classes", [])]
    fe = sensor.frontend
    config = ModelConfig(num_classes=int(inits["fc_bias"].shape[0]), classes=classes,
                         task=str(manifest.get("task", "gesture")), timesteps=sensor.timesteps,
                         input_mean=fe.mean, input_std=fe.std)
    model = PixelRNN(config)
    model.bn.eps = float(eps)
    t = lambda a: torch.tensor(np.array(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        model.conv1.copy_(t(sensor.conv1[:, None]))
        for name in ("w_fi", "w_fh", "w_oi", "w_oh"):
            getattr(model, name).copy_(t(np.reshape(getattr(sensor, name), (1, 1) + getattr(sensor, name).shape[-2:])))
        model.thresh1.fill_(sensor.thresh1)
        model.rnn_threshold.fill_(sensor.rnn_threshold)
        model.theta0.fill_(fe.theta0)
        model.fin_conv.fill_(float(inits["fin_sign"]))
        model.bn.weight.copy_(t(inits["bn_weight"]).reshape(1))
        model.bn.bias.copy_(t(inits["bn_bias"]).reshape(1))
        model.bn.running_mean.copy_(t(inits["bn_mean"]).reshape(1))
        model.bn.running_var.copy_(t(inits["bn_var"]).reshape(1))
        model.thresh3.fill_(float(inits["thresh3"]))
        model.fc.weight.copy_(t(inits["fc_weight_t"]).T)
        model.fc.bias.copy_(t(inits["fc_bias"]))
    model.eval()
    if model.sensor_weights().program_hash() != sensor.program_hash():
        raise InputError(f"{bundle}: could not rebuild the sensor program from {SENSOR_FILE}")
    return model


# -- runners -----------------------------------------------------------------------------------------
ONNX_RUNTIME, TFLITE_RUNTIME = "onnxruntime", "ai-edge-litert"   # tflite-runtime refuses after TensorFlow


def _runner(runtime: str):
    """A factory ``path -> run(readout (64, 64) uint8) -> logits`` on a registered runtime, 1 thread."""
    entry = runtimes.resolve(runtime)

    def make(path: Path):
        run = runtimes.load_file(entry, path, threads=1)
        return lambda x: run(x[None])[0]
    return make


def _outputs(run, readouts: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(run(x), dtype=np.float32).reshape(-1) for x in readouts])


def _time_round_robin(runners: dict, readouts: np.ndarray, *, runs: int, warmup: int) -> dict[str, float]:
    """Median microseconds per single-readout inference, runners interleaved so load hits all alike."""
    times = {k: [] for k in runners}
    for i in range(warmup + runs):
        x = readouts[i % len(readouts)]
        for key, run in runners.items():
            t0 = time.perf_counter_ns()
            run(x)
            dt = time.perf_counter_ns() - t0
            if i >= warmup:
                times[key].append(dt / 1000.0)
    return {k: float(np.median(v)) for k, v in times.items()}


# -- quantizers --------------------------------------------------------------------------------------
def _calibration_reader(readouts: np.ndarray, name: str):
    """An onnxruntime CalibrationDataReader feeding (N, 64, 64) uint8 readouts one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class ReadoutReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(readouts)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {name: np.ascontiguousarray(x[None])}

        def rewind(self) -> None:
            self.items = iter(readouts)

    return ReadoutReader()


def quantize_onnx(*, src: Path, dst: Path, calibration: np.ndarray) -> Path:
    """``src`` float host graph -> ``dst`` static int8 (QDQ, per-tensor, float logits) calibrated on
    ``calibration``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)    # onnxruntime.quantization logs advice at WARNING on the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="pixelrnn_int8_") as tmp:
            pre = Path(tmp) / "host_pre.onnx"
            quant_pre_process(str(src), str(pre))
            reader = _calibration_reader(calibration, "readout")
            # Logits stay float (QGemm with float output): a quantized output clips to the range seen
            # in calibration; measured on a decoder with uncentred logits, one held-out readout below
            # that range came out as all zeros (97% agreement with float, 99.4% with float logits).
            quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=False,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]})
    finally:
        root.setLevel(level)
    return dst


def quantize_tflite(*, model, out_dir: Path, calibration: np.ndarray) -> dict[str, Path]:
    """host_int8.tflite (and the float host.tflite) of ``model`` into ``out_dir``."""
    try:
        from export.tflite import export_tflite

        return export_tflite(model=model, out_dir=out_dir, formats={"tflite"}, int8=True,
                             representative=calibration)
    except ImportError as exc:
        raise InputError(f"int8 TFLite needs TensorFlow/Larq: {LARQ_HINT}, or pass --no-tflite ({exc})") from None


# -- the command ---------------------------------------------------------------------------------------
def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_open(dst, "wb", shared=True) as fh:
        fh.write(src.read_bytes())


def quantize_bundle(*, bundle: str | os.PathLike, readouts: str | os.PathLike,
                    options: Int8Options | None = None) -> dict:
    """Quantize the host decoder(s) of ``bundle`` to int8, add them to the bundle, return the report."""
    from export.bundle import build_manifest, verify_bundle, write_manifest

    options = options or Int8Options()
    if not isinstance(options, Int8Options):
        raise InputError(f"options must be Int8Options, got {type(options).__name__}")
    if not isinstance(bundle, (str, os.PathLike)) or not str(bundle):
        raise InputError(f"bundle must be a folder path, got {bundle!r}")
    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    for runtime in (ONNX_RUNTIME,) + ((TFLITE_RUNTIME,) if options.tflite else ()):
        runtimes.resolve(runtime)                    # a missing runtime fails before any work
    if ONNX_FLOAT not in manifest["files"]:
        raise InputError(f"bundle {bundle} has no {ONNX_FLOAT}: export it with --format onnx")
    sensor = _load_sensor(bundle)
    require_authors_readout(sensor.layout, "calib int8", hidden=sensor.hidden)
    float_onnx = _runner(ONNX_RUNTIME)(bundle / ONNX_FLOAT)   # a corrupt host.onnx: one line, before any work
    num_classes = len(manifest.get("classes", [])) or None
    data = load_readouts(readouts, need_labels=True, num_classes=num_classes)
    data.check_program(manifest.get("sensor_program_hash"), what=f"bundle {bundle}")
    if not np.isfinite(np.asarray(float_onnx(data.readouts[0]), dtype=np.float32)).all():
        raise InputError(f"{bundle / ONNX_FLOAT} returns NaN or infinite logits: its weights are damaged; "
                         "re-export the bundle")
    fold_of = stratified_folds(data.labels, k=options.folds, seed=options.seed)
    cal, test = data.subset(fold_of != options.holdout_fold), data.subset(fold_of == options.holdout_fold)

    report = {"bundle": str(bundle), "readouts": str(readouts),
              "split": {"folds": options.folds, "holdout_fold": options.holdout_fold, "seed": options.seed,
                        "n_calibration": len(cal), "n_eval": len(test)},
              "threads": 1, "runs": options.runs}
    written: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pixelrnn_int8_") as tmp:
            tmp = Path(tmp)
            quantize_onnx(src=bundle / ONNX_FLOAT, dst=tmp / ONNX_INT8, calibration=cal.readouts)
            pairs = {"onnx": (bundle / ONNX_FLOAT, tmp / ONNX_INT8, _runner(ONNX_RUNTIME))}
            if options.tflite:
                model = model_from_bundle(bundle, manifest)
                files = quantize_tflite(model=model, out_dir=tmp / "tflite", calibration=cal.readouts)
                float_tfl = bundle / TFLITE_FLOAT if TFLITE_FLOAT in manifest["files"] else files["host"]
                pairs["tflite"] = (float_tfl, files["host_int8"], _runner(TFLITE_RUNTIME))
            runners = {}
            for rt, (fp, qp, make) in pairs.items():
                runners[(rt, "float")], runners[(rt, "int8")] = make(fp), make(qp)
            outputs = {k: _outputs(run, test.readouts) for k, run in runners.items()}
            latency = _time_round_robin(runners, test.readouts, runs=options.runs, warmup=options.warmup)
            for rt, (fp, qp, _) in pairs.items():
                f_out, q_out = outputs[(rt, "float")], outputs[(rt, "int8")]
                acc_f = float((f_out.argmax(1) == test.labels).mean())
                acc_q = float((q_out.argmax(1) == test.labels).mean())
                report[rt] = {
                    "float": {"file": fp.name, "bytes": fp.stat().st_size, "accuracy": acc_f,
                              "median_us": latency[(rt, "float")]},
                    "int8": {"file": qp.name, "bytes": qp.stat().st_size, "accuracy": acc_q,
                             "median_us": latency[(rt, "int8")]},
                    "accuracy_change_points": 100.0 * (acc_q - acc_f),
                    "prediction_agreement": float((f_out.argmax(1) == q_out.argmax(1)).mean()),
                    "max_abs_logit_error": float(np.abs(f_out - q_out).max()),
                    "size_ratio": qp.stat().st_size / fp.stat().st_size,
                    "latency_ratio": latency[(rt, "int8")] / latency[(rt, "float")],
                }
            for src in [tmp / ONNX_INT8] + ([pairs["tflite"][1]] if "tflite" in pairs else []):
                _copy_atomic(src, bundle / src.name)
                written.append(bundle / src.name)
        names = sorted(set(manifest["files"]) | {p.name for p in written})
        new_manifest = build_manifest(directory=bundle, files=names, classes=list(manifest.get("classes", [])),
                                      task=str(manifest.get("task", "")), sensor=sensor,
                                      formats=list(manifest.get("formats", [])),
                                      source=str(manifest.get("source_weights", "")),
                                      skipped=manifest.get("skipped") or None)
        new_manifest["int8"] = {rt: {"file": report[rt]["int8"]["file"], "calibrated_on": "real readouts",
                                     "n_calibration": len(cal), "accuracy_change_points":
                                     report[rt]["accuracy_change_points"]}
                                for rt in pairs}
        write_manifest(bundle, new_manifest)
    except BaseException:
        for path in written:
            if path.name not in manifest["files"]:
                path.unlink(missing_ok=True)
        raise
    verify_bundle(bundle)
    return report


def format_int8_report(report: dict) -> str:
    s = report["split"]
    lines = [f"int8 host decoders: calibrated on {s['n_calibration']} real readouts (folds != {s['holdout_fold']}), "
             f"scored on {s['n_eval']} held-out readouts (fold {s['holdout_fold']}); 1 thread, "
             f"median of {report['runs']} inferences",
             f"  {'runtime':<8s} {'graph':<6s} {'file':<18s} {'KB':>8s} {'accuracy':>9s} {'median us':>10s}"]
    for rt in ("onnx", "tflite"):
        if rt not in report:
            continue
        for kind in ("float", "int8"):
            r = report[rt][kind]
            lines.append(f"  {rt:<8s} {kind:<6s} {r['file']:<18s} {r['bytes'] / 1024:>8.1f} {r['accuracy']:>9.4f} "
                         f"{r['median_us']:>10.1f}")
        r = report[rt]
        lines.append(f"  {rt:<8s} int8 vs float: accuracy {r['accuracy_change_points']:+.2f} points, agreement "
                     f"{r['prediction_agreement']:.4f}, size x{r['size_ratio']:.3f}, latency x{r['latency_ratio']:.3f}")
    return "\n".join(lines)
