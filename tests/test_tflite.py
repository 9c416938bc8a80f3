"""TFLite / LCE export: all 100 reference test clips give PyTorch's answers in every interpreter."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # Larq needs Keras 2; set before TensorFlow loads
try:  # tflite-runtime must be loaded before TensorFlow to work in-process (see export.tflite)
    import tflite_runtime.interpreter  # noqa: F401
except ImportError:
    pass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("larq")

pytestmark = [pytest.mark.larq, pytest.mark.slow]    # the module's export takes ~30 s

from conftest import need  # noqa: E402
from core.errors import InputError  # noqa: E402
from export.tflite import export_tflite, run_tflite  # noqa: E402
from firmware_sim.simulate import simulate  # noqa: E402

CLIPS = {"gesture": "cambridge_test90.npz", "lips": "tulips_test10.npz"}
RUNTIMES = ("ai-edge-litert", "tflite-runtime")
# Host logits: the same readout goes through the same float32 decoder, but TFLite folds BatchNorm
# into one multiply-add, may turn "/ 10" into "* 0.1" and sums the 4096-term Linear layer in its own
# order: about 16 float32 ulps of logits up to |11|. Measured max 2.1e-5 on these clips (4.1e-5 on the
# real SCAMP-5 readouts with the fine-tuned decoder), so 1e-4 absolute.
ATOL = 1e-4


@pytest.fixture(scope="module")
def cases(ref_dir, authors_models, tmp_path_factory):
    """Per task: model, clips, labels, simulator readouts and the exported files (converted once)."""
    out = {}
    for task, model in authors_models.items():
        with np.load(need(ref_dir / CLIPS[task]), allow_pickle=False) as d:
            frames, labels = d["frames"], d["labels"]
        readout = simulate(weights=model.sensor_weights(), frames=frames, stages=()).readout
        files = export_tflite(model=model, out_dir=tmp_path_factory.mktemp(task), formats={"tflite", "lce"})
        with torch.no_grad():
            host = model.decode(torch.from_numpy(readout)).numpy()
            full = model(torch.from_numpy(frames)).numpy()
        out[task] = {"model": model, "frames": frames, "labels": labels, "readout": readout,
                     "files": files, "host": host, "full": full}
    assert sum(len(c["frames"]) for c in out.values()) == 100
    return out


def test_export_writes_the_files(cases):
    for case in cases.values():
        assert sorted(case["files"]) == ["host", "pixelrnn", "pixelrnn_lce"]
        assert all(p.is_file() and p.stat().st_size > 1000 for p in case["files"].values())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_host_logits_equal_pytorch_on_simulator_readouts(cases, runtime):
    for task, case in cases.items():
        got = run_tflite(case["files"]["host"], case["readout"], runtime=runtime)
        np.testing.assert_allclose(got, case["host"], rtol=0, atol=ATOL, err_msg=f"{task} {runtime}")
        assert np.array_equal(got.argmax(1), case["host"].argmax(1))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_full_model_predictions_equal_pytorch(cases, runtime):
    for task, case in cases.items():
        got = run_tflite(case["files"]["pixelrnn"], case["frames"], runtime=runtime)
        assert np.array_equal(got.argmax(1), case["full"].argmax(1)), f"{task} {runtime}"
        # every binary state and the readout are exact, so the logits agree as closely as the host's
        np.testing.assert_allclose(got, case["full"], rtol=0, atol=ATOL, err_msg=f"{task} {runtime}")


def test_tflite_runtime_in_a_subprocess_gives_the_same_logits(cases):
    # the path run_tflite takes when TensorFlow was imported before tflite-runtime (native clash)
    from export.tflite import _run_subprocess

    case = cases["lips"]
    inproc = run_tflite(case["files"]["host"], case["readout"], runtime="tflite-runtime")
    np.testing.assert_array_equal(_run_subprocess(case["files"]["host"], case["readout"], "tflite-runtime", 1),
                                  inproc)


def test_lce_model_predictions_equal_pytorch(cases):
    for task, case in cases.items():
        got = run_tflite(case["files"]["pixelrnn_lce"], case["frames"], runtime="lce")
        assert np.array_equal(got.argmax(1), case["full"].argmax(1)), task
        np.testing.assert_allclose(got, case["full"], rtol=0, atol=ATOL, err_msg=task)


def test_simulator_predictions_match_the_known_accuracy(cases):
    # cross-check against docs/MODEL.md: 62/90 gestures, 9/10 lips (8-bit readout, noise off)
    correct = {t: int((c["host"].argmax(1) == c["labels"]).sum()) for t, c in cases.items()}
    assert correct == {"gesture": 62, "lips": 9}


def test_int8_host_on_real_sensor_readouts(ref_dir, tmp_path):
    """int8 decoder calibrated on 63 real SCAMP-5 readouts, scored on all 810 (float: 96.8%)."""
    from pixelrnn.checkpoint import load_model

    model = load_model(need(ref_dir / "pretrained" / "cam_noise_finetuned.pt"))
    with np.load(need(ref_dir / "scamp5_readouts_cambridge810.npz"), allow_pickle=False) as d:
        readout = np.ascontiguousarray(d["readouts"][:, 128:192, 128:192])   # o_16 of the 256x256 array
        labels = d["labels"]
    with torch.no_grad():
        float_acc = float((model.decode(torch.from_numpy(readout)).argmax(1).numpy() == labels).mean())
    files = export_tflite(model=model, out_dir=tmp_path / "real", formats={"tflite"}, int8=True,
                          representative=readout[::13])
    default = export_tflite(model=model, out_dir=tmp_path / "default", formats={"tflite"}, int8=True)
    for path, margin in ((files["host_int8"], 0.01), (default["host_int8"], 0.02)):
        assert path.is_file()
        for runtime in RUNTIMES:
            preds = run_tflite(path, readout, runtime=runtime).argmax(1)
            int8_acc = float((preds == labels).mean())
            assert abs(int8_acc - float_acc) <= margin, (path.parent.name, runtime, int8_acc, float_acc)


def test_bad_arguments_are_input_errors(authors_models, tmp_path):
    model = authors_models["lips"]
    for formats in ({"onnx"}, {"tflite", "tf"}, set(), "tflite"):
        with pytest.raises(InputError, match="format"):
            export_tflite(model=model, out_dir=tmp_path, formats=formats)
    for rep, what in ((np.zeros((4, 256, 256), np.uint8), "shape"), (np.zeros((64, 64), np.uint8), "shape"),
                      (np.zeros((0, 64, 64), np.uint8), "shape"), (np.zeros((4, 64, 64), np.float32), "uint8"),
                      ([[0] * 64] * 64, "numpy")):
        with pytest.raises(InputError, match=what):
            export_tflite(model=model, out_dir=tmp_path, formats={"tflite"}, int8=True, representative=rep)
    with pytest.raises(InputError, match="only with int8"):
        export_tflite(model=model, out_dir=tmp_path, formats={"tflite"},
                      representative=np.zeros((4, 64, 64), np.uint8))
    with pytest.raises(InputError, match="PixelRNN"):
        export_tflite(model=None, out_dir=tmp_path, formats={"tflite"})
    with pytest.raises(InputError, match="int8"):
        export_tflite(model=model, out_dir=tmp_path, formats={"tflite"}, int8="yes")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        export_tflite(model=model, out_dir=tmp_path / "file", formats={"tflite"})
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]     # nothing was written


def test_run_tflite_rejects_bad_arguments(cases, tmp_path):
    host = cases["lips"]["files"]["host"]
    readout = cases["lips"]["readout"]
    with pytest.raises(InputError, match="runtime"):
        run_tflite(host, readout, runtime="onnxruntime")
    with pytest.raises(InputError, match="threads"):
        run_tflite(host, readout, threads=0)
    with pytest.raises(InputError, match="not found"):
        run_tflite(tmp_path / "missing.tflite", readout)
    with pytest.raises(InputError, match="shape"):
        run_tflite(host, readout[:, :32])
