"""The host runtime registry (core.runtimes): a runtime added with one call runs end to end through
the host decoder and the camera loop; unknown and missing runtimes are one-line input errors; the
one TFLite (de)quantisation round-trips and is the only one left in edge, export and calib."""
from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from core import runtimes
from core.errors import InputError
from core.runtimes import Alias, Runtime, registered, tflite_dequantizer, tflite_quantizer

pytestmark = pytest.mark.device   # base install only: no torch, no TensorFlow

REPO = Path(__file__).resolve().parents[1]
TOY_FILE = "host_toy.npz"


# -- a toy runtime: the host decoder's math in numpy, from a small .npz in the bundle -------------------
def load_toy(path, *, threads: int):
    """readout (N, 64, 64) uint8 -> logits (N, classes), the float math of host.onnx."""
    with np.load(path, allow_pickle=False) as d:
        w = {k: d[k].astype(np.float64) for k in d.files}

    def run(x: np.ndarray) -> np.ndarray:
        o = (x.astype(np.float64) - w["host_zero_level"]) / w["host_iw"] * w["fin_sign"]
        y = (o - w["bn_mean"]) / np.sqrt(w["bn_var"] + w["bn_eps"]) * w["bn_weight"] + w["bn_bias"]
        feats = (np.tanh(y) - w["thresh3"]).reshape(len(x), -1)
        return (feats @ w["fc_weight_t"] + w["fc_bias"]).astype(np.float32)
    return run


TOY = Runtime(name="numpy-toy", module="numpy", distribution="numpy", file=TOY_FILE, load=load_toy,
              note="test only: the host decoder in numpy")
MISSING = Runtime(name="toy-missing", module="pixelrnn_no_such_module", distribution="pixelrnn-no-such-package",
                  file=TOY_FILE, load=load_toy)


@pytest.fixture
def toy_runtimes():
    """TOY, MISSING and an alias preferring MISSING, registered for one test and removed after it."""
    before = runtimes.runtime_names()
    with registered(TOY), registered(MISSING), registered(Alias(name="toy", candidates=("toy-missing", "numpy-toy"))):
        yield
    assert runtimes.runtime_names() == before


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory, authors_bundle):
    """The fixture bundle with the authors' readout (whose host math load_toy implements), copied, with
    host_toy.npz (host.onnx's weights) added to its manifest."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from edge.models import load_bundle
    from export.bundle import build_manifest, write_manifest

    src = load_bundle(authors_bundle / "gesture")
    dst = tmp_path_factory.mktemp("toy") / "gesture"
    shutil.copytree(src.path, dst)
    graph = onnx.load(str(dst / "host.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    bn = next(n for n in graph.node if n.op_type == "BatchNormalization")
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    np.savez(dst / TOY_FILE, bn_eps=np.float64(eps),
             **{k: v for k, v in weights.items() if not k.startswith("host_shape")})
    manifest = src.manifest
    write_manifest(dst, build_manifest(directory=dst, files=sorted(manifest["files"]) + [TOY_FILE],
                                       classes=manifest["classes"], task=manifest["task"], sensor=src.sensor,
                                       formats=manifest["formats"], source=manifest.get("source_weights", "")))
    return load_bundle(dst)


# -- end to end ------------------------------------------------------------------------------------------
def test_a_registered_runtime_runs_through_the_host_decoder(toy_runtimes, toy_bundle):
    from edge.decoder import HostDecoder

    toy = HostDecoder(bundle=toy_bundle, runtime="numpy-toy")
    ort = HostDecoder(bundle=toy_bundle, runtime="onnxruntime")
    readouts = np.random.default_rng(0).integers(0, 256, (8, 64, 64), dtype=np.uint8)
    got, want = np.stack([toy(r) for r in readouts]), np.stack([ort(r) for r in readouts])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert got.dtype == np.float32 and got.shape == (8, len(toy_bundle.classes))
    assert toy.describe()["backend"] == "numpy-toy" and toy.describe()["file"] == TOY_FILE
    assert toy.describe()["version"] == np.__version__ and toy.first_s is not None
    # the alias skips the runtime that is not installed; the camera loop's options follow the registry
    assert HostDecoder(bundle=toy_bundle, runtime="toy").backend == "numpy-toy"
    assert runtimes.resolve("toy").name == "numpy-toy" and runtimes.installed("numpy-toy")
    assert not runtimes.installed("toy-missing") and "numpy-toy" in runtimes.runtime_names(aliases=False)
    from edge.api import CameraLoopOptions
    assert CameraLoopOptions(runtime="toy").runtime == "toy"      # registered after edge was imported


def test_a_registered_runtime_runs_in_the_camera_loop(toy_runtimes, toy_bundle):
    from edge.capture import TestPattern
    from edge.pipeline import PipelineOptions, run_pipeline

    results = {}
    for runtime in ("numpy-toy", "onnxruntime"):
        decisions = []
        result = run_pipeline(source=TestPattern(frames=48), bundle=toy_bundle,
                              options=PipelineOptions(runtime=runtime), on_decision=decisions.append)
        assert result.end == "eof" and result.summary["runtime"]["backend"] == runtime
        assert result.summary["decisions"] == len(decisions) == 3
        results[runtime] = decisions
    for a, b in zip(results["numpy-toy"], results["onnxruntime"]):
        a, b = (d.to_dict() if hasattr(d, "to_dict") else d for d in (a, b))     # Decision or its JSON dict
        assert a["class"] == b["class"]
        np.testing.assert_allclose(a["logits"], b["logits"], rtol=0, atol=2e-4)


def test_a_bundle_without_the_runtimes_file_says_so(toy_runtimes):
    from core.bundle import BundleError
    from edge.decoder import HostDecoder
    from edge.models import resolve_bundle

    with pytest.raises(BundleError, match=f"no {TOY_FILE}.*choose another runtime") as exc:
        HostDecoder(bundle=resolve_bundle(model=None, task="gesture"), runtime="numpy-toy")
    assert "--" not in str(exc.value) and "\n" not in str(exc.value)


# -- errors ------------------------------------------------------------------------------------------------
def test_unknown_runtime_is_one_line_input_error_with_the_choices(toy_runtimes):
    from edge.decoder import HostDecoder
    from edge.models import resolve_bundle

    for call in (lambda: runtimes.resolve("onnx-gpu"),
                 lambda: HostDecoder(bundle=resolve_bundle(model=None, task="gesture"), runtime="onnx-gpu")):
        with pytest.raises(InputError) as exc:
            call()
        msg = str(exc.value)
        assert "\n" not in msg and "--" not in msg and msg.startswith("unknown runtime 'onnx-gpu'; choose from")
        for name in ("onnxruntime", "tflite", "ai-edge-litert", "tflite-runtime", "lce", "numpy-toy"):
            assert name in msg
    assert not runtimes.installed("onnx-gpu")


def test_a_missing_package_names_its_pip_package(toy_runtimes):
    with pytest.raises(InputError, match=r"^runtime toy-missing is not installed \(pip install "
                                         r"pixelrnn-no-such-package\)$"):
        runtimes.resolve("toy-missing")
    with registered(Alias(name="toy-none", candidates=("toy-missing",))):
        with pytest.raises(InputError, match=r"needs toy-missing \(pip install pixelrnn-no-such-package\)$"):
            runtimes.resolve("toy-none")
    assert runtimes.version("toy-missing") == "unknown"


def test_registry_refuses_duplicates_and_bad_entries(toy_runtimes):
    with pytest.raises(InputError, match="already registered"):
        runtimes.register_runtime(TOY)
    with pytest.raises(InputError, match="not a registered runtime"):
        runtimes.register_runtime(Alias(name="toy2", candidates=("nowhere",)))
    with pytest.raises(InputError, match="load must be callable"):
        Runtime(name="x", module="x", distribution="x", file="x.bin", load=None)
    with pytest.raises(InputError, match="Runtime or Alias"):
        runtimes.register_runtime("numpy-toy")
    # replace for a block, then the original entry is back
    other = Runtime(name="numpy-toy", module="numpy", distribution="numpy", file="other.npz", load=load_toy)
    with registered(other, replace=True):
        assert runtimes.get_runtime("numpy-toy").file == "other.npz"
    assert runtimes.get_runtime("numpy-toy") is TOY
    removed = runtimes.unregister_runtime("toy")
    assert isinstance(removed, Alias) and "toy" not in runtimes.runtime_names()
    runtimes.register_runtime(removed)


def test_builtin_runtimes_and_the_tflite_alias():
    assert runtimes.runtime_names(aliases=False) == ("onnxruntime", "ai-edge-litert", "tflite-runtime", "lce")
    assert {runtimes.get_runtime(n).file for n in runtimes.runtime_names(aliases=False)} == {"host.onnx",
                                                                                             "host.tflite"}
    alias = runtimes.get_runtime("tflite")
    assert isinstance(alias, Alias) and alias.candidates == ("ai-edge-litert", "tflite-runtime")
    if runtimes.installed("ai-edge-litert"):
        assert runtimes.resolve("tflite").name == "ai-edge-litert"
    assert set(runtimes.runtime_names()) == set(runtimes.runtime_names(aliases=False)) | {"tflite"}


def test_tflite_runtime_is_refused_after_tensorflow(monkeypatch, authors_bundle):
    if "tensorflow" in sys.modules or "tflite_runtime.interpreter" in sys.modules:
        pytest.skip("the import order of this process is already fixed")
    if not runtimes.installed("tflite-runtime"):
        pytest.skip("tflite-runtime is not installed")
    from edge.decoder import HostDecoder
    from edge.models import load_bundle

    assert runtimes.tflite_runtime_conflict() is None
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))   # "imported first"
    assert "TensorFlow" in runtimes.tflite_runtime_conflict()
    with pytest.raises(InputError, match="choose another runtime") as exc:
        HostDecoder(bundle=load_bundle(authors_bundle / "gesture"), runtime="tflite-runtime")   # has host.tflite
    assert "--" not in str(exc.value) and "tflite_runtime.interpreter" not in sys.modules


# -- the one TFLite (de)quantisation ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype, scale, zero", [(np.int8, 0.05, -3), (np.uint8, 0.5, 128), (np.int8, 1.0, 0)])
def test_tflite_quantizer_round_trips(dtype, scale, zero):
    detail = {"dtype": dtype, "quantization": (scale, zero)}
    q, dq = tflite_quantizer(detail), tflite_dequantizer(detail)
    info = np.iinfo(dtype)
    lo, hi = (info.min - zero) * scale, (info.max - zero) * scale
    x = np.linspace(lo, hi, 301)
    codes = q(x)
    assert codes.dtype == dtype
    back = dq(codes)
    assert back.dtype == np.float32
    assert np.abs(back - x).max() <= scale / 2 + 1e-6
    np.testing.assert_array_equal(q(dq(codes)), codes)                         # codes survive exactly
    assert q(np.array([hi + 100 * scale]))[0] == info.max and q(np.array([lo - 100 * scale]))[0] == info.min


def test_tflite_quantizer_passes_plain_tensors_through():
    readout = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    # a float host decoder's uint8 input: no scale, or an identity scale -> the same array, no copy
    for quant in ((0.0, 0), (1.0, 0), None):
        assert tflite_quantizer({"dtype": np.uint8, "quantization": quant})(readout) is readout
    as_float = tflite_quantizer({"dtype": np.float32, "quantization": (0.0, 0)})(readout)
    assert as_float.dtype == np.float32 and np.array_equal(as_float, readout)
    # an identity scale still rounds and clips values that are not of the tensor's dtype
    np.testing.assert_array_equal(tflite_quantizer({"dtype": np.uint8, "quantization": (1.0, 0)})(
        np.array([3.6, -2.0, 300.0])), np.array([4, 0, 255], np.uint8))
    logits = np.array([[1.5, -2.0]], np.float32)
    assert tflite_dequantizer({"dtype": np.float32, "quantization": (0.0, 0)})(logits) is logits


def test_edge_export_and_calib_share_the_one_quantisation():
    """No private quantiser, interpreter or session is left in the three former users."""
    import calib.int8
    import edge.decoder
    import export.tflite

    for module in (edge.decoder, export.tflite, calib.int8):
        assert module.runtimes is runtimes, module.__name__
        src = Path(module.__file__).read_text(encoding="utf-8")
        for private in ("iinfo", "Interpreter(", "InferenceSession(", "import ai_edge_litert",
                        "from ai_edge_litert", "tflite_runtime.interpreter import", "larq_compute_engine import"):
            assert private not in src, (module.__name__, private)
    for name in ("_quantizer", "_dequantizer", "_to_input", "_from_output", "_tflite_interpreter", "_ort_session",
                 "_run_interpreter", "_run_lce", "_tflite_runtime_clashes"):
        for module in (edge.decoder, export.tflite, calib.int8):
            assert not hasattr(module, name), (module.__name__, name)
