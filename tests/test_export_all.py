"""``pixelrnn export --format all --int8``: every device file in one verified bundle, end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REF, REPO, need

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # Larq needs Keras 2; set before TensorFlow loads
pytest.importorskip("tflite_runtime")                # must load before TensorFlow: see export.tflite
pytest.importorskip("larq")

pytestmark = pytest.mark.larq

EXPECTED = {"sensor.onnx", "host.onnx", "pixelrnn.onnx", "pixelrnn.tflite", "host.tflite",
            "pixelrnn_lce.tflite", "host_int8.tflite", "weights_scamp5.txt", "sensor_weights.npz",
            "manifest.json"}


@pytest.mark.slow
def test_export_all_with_int8_on_real_readouts(tmp_path):
    weights = need(REF / "pretrained" / "cam_noise_finetuned.pt")
    readouts = need(REF / "scamp5_readouts_cambridge810.npz")
    # calibrate on 90 real readouts, test on the other 720
    with np.load(readouts, allow_pickle=False) as d:
        real, labels = d["readouts"][:, 128:192, 128:192], d["labels"]
    calib = tmp_path / "calib.npz"
    np.savez(calib, readouts=real[::9])
    res = subprocess.run([sys.executable, "-m", "pixelrnn.cli", "export", "--weights", str(weights),
                          "--format", "all", "--int8", "--representative", str(calib),
                          "--out", str(tmp_path / "bundle")], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "KB" in res.stdout and " s" in res.stdout
    bundle = tmp_path / "bundle"
    assert {p.name for p in bundle.iterdir()} == EXPECTED
    from export.bundle import verify_bundle
    from export.tflite import run_tflite
    from pixelrnn.checkpoint import load_model
    manifest = verify_bundle(bundle)
    assert manifest["classes"] == [f"gesture{i}" for i in range(1, 10)]
    held = np.setdiff1d(np.arange(len(real)), np.arange(0, len(real), 9))
    model = load_model(weights)
    with torch.no_grad():
        float_pred = model.decode(torch.from_numpy(real[held])).argmax(1).numpy()
    int8_pred = run_tflite(bundle / "host_int8.tflite", real[held], runtime="ai-edge-litert").argmax(1)
    acc_float = (float_pred == labels[held]).mean()
    acc_int8 = (int8_pred == labels[held]).mean()
    # int8 host: within 1 point of float on real sensor readouts it was not calibrated on
    assert abs(acc_float - acc_int8) <= 0.01, (acc_float, acc_int8)
    assert acc_float > 0.9


def test_bad_representative_is_one_line(tmp_path):
    weights = need(REF / "pretrained" / "cam_noise.pt")
    bad = tmp_path / "bad.npz"
    np.savez(bad, readouts=np.zeros((4, 32, 32), np.uint8))
    res = subprocess.run([sys.executable, "-m", "pixelrnn.cli", "export", "--weights", str(weights),
                          "--format", "tflite", "--int8", "--representative", str(bad),
                          "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and ("readouts must have shape (N, 64, 64) or SCAMP-5 full-array "
                                            "(N, 256, 256), got (4, 32, 32)") in res.stderr
    assert not (tmp_path / "b").exists()
