"""The package's default models: verified bundles, small, consistent with their checkpoints and cards."""
from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import DATA, REPO, need

MODELS = REPO / "pixelrnn" / "models"


@pytest.mark.parametrize("task", ["lips", "gesture"])
def test_bundle_verifies_is_small_and_matches_checkpoint(task):
    from export.bundle import verify_bundle
    from pixelrnn.checkpoint import load_model
    manifest = verify_bundle(MODELS / task)
    paths = [MODELS / f"{task}.pt", *(MODELS / task).iterdir()]
    assert sum(p.stat().st_size for p in paths) < 1000 * 1024   # issue 12: checkpoint + bundle under 1 MB
    model = load_model(MODELS / f"{task}.pt")
    assert model.config.task == task
    assert manifest["classes"] == model.config.class_names
    assert model.sensor_weights().program_hash() in str(manifest)
    assert (MODELS / f"{task}.md").read_text().startswith(f"# Default {task} model")


def test_lips_model_reproduces_its_card_on_the_grid_test_split():
    from firmware_sim.simulate import simulate
    from pixelrnn.checkpoint import load_model
    from pixelrnn.data import load_dataset, split
    need(DATA / "grid_s1_digits.npz")
    ds = load_dataset("grid", data_dir=DATA)
    test = ds.subset(split(ds)["test"])
    model = load_model(MODELS / "lips.pt")
    readout = simulate(weights=model.sensor_weights(), frames=test.frames, stages=()).readout
    with torch.no_grad():
        acc = float((model.decode(torch.from_numpy(readout)).argmax(1).numpy() == test.labels).mean())
    card = (MODELS / "lips.md").read_text()
    stated = float(re.search(r"\*\*([0-9.]+)%\*\*", card).group(1)) / 100
    assert acc == pytest.approx(stated, abs=1e-9)
    assert np.isfinite(acc) and acc > 0.5      # far above chance (0.1)


def test_gesture_model_reproduces_its_card_on_all_cambridge_clips():
    """The default gesture model is trained on every Cambridge clip (fold -1, no test split): its card states
    its fit of those clips through firmware_sim, which must reproduce, and the readout it was trained for."""
    from firmware_sim.simulate import simulate
    from pixelrnn.checkpoint import load_model
    from pixelrnn.data import load_dataset, split
    need(DATA / "pixelrnn_ref" / "cambridge_test90.npz")
    ds = load_dataset("cambridge", data_dir=DATA)
    every = split(ds, fold=-1)
    assert len(every["train"]) == len(ds.labels) == 90 and not len(every["val"]) and not len(every["test"])
    model = load_model(MODELS / "gesture.pt")
    readout = simulate(weights=model.sensor_weights(), frames=ds.frames, stages=()).readout
    with torch.no_grad():
        correct = int((model.decode(torch.from_numpy(readout)).argmax(1).numpy() == ds.labels).sum())
    card = (MODELS / "gesture.md").read_text()
    fit = re.search(r"fit of its own training clips[^:]*: ([0-9.]+)% \((\d+)/(\d+)\)", card)
    assert fit and (int(fit.group(2)), int(fit.group(3))) == (correct, len(ds.labels))
    assert float(fit.group(1)) == pytest.approx(100 * correct / len(ds.labels), abs=0.05)
    assert model.config.layout.describe() in card                       # the readout it was trained for


def test_gesture_card_states_the_cross_validated_accuracy_of_its_settings():
    """The card's headline figure is the CV accuracy of the sweep folder it names, recomputed from its
    reports (the sweep's runs are not in the repository: skipped where they are absent)."""
    import json
    import sys

    card = (MODELS / "gesture.md").read_text()
    found = re.search(r"Cross-validated accuracy of these settings \(`([^`]+)`.*?\*\*([0-9.]+)%\*\* ± ([0-9.]+)", card)
    assert found, "the gesture card states no cross-validated accuracy"
    cv_dir = REPO / found.group(1)
    if not any(cv_dir.glob("seed*/fold*/report.json")):
        pytest.skip(f"the sweep's reports are not here ({cv_dir})")
    sys.path.insert(0, str(REPO))
    from benchmarks.default_models import cv_figures
    figures = cv_figures(cv_dir)
    assert (float(found.group(2)), float(found.group(3))) == (round(figures["acc"][0], 1), round(figures["acc"][1], 1))
    # the settings on the card are the sweep's: the model was trained with that folder's configuration
    run = json.loads(next(cv_dir.glob("seed*/fold*/report.json")).read_text())["config"]
    extra = torch.load(MODELS / "gesture.pt", map_location="cpu", weights_only=True)["extra"]
    trained = extra["train_config"]
    assert trained["fold"] == -1 and trained["dataset"] == run["dataset"] == "cambridge"
    for key in ("readout_every", "readout_bits", "readout_pool", "out_channels", "decoder", "lr", "lr_binary",
                "init_from", "batch_size", "schedule", "noise_conv", "noise_gate", "noise_out", "augment",
                "max_shift", "max_time_shift", "decoder_hidden"):
        assert trained[key] == run[key], key


def test_an_export_without_the_full_graph_keeps_what_computes_the_same(tmp_path):
    """``full_graph=False`` (``--no-full-graph``): pixelrnn.onnx is left out and recorded as skipped;
    sensor.onnx then host.onnx give pixelrnn.onnx's logits; asked for without onnx, a one-line error."""
    import subprocess
    import sys

    import onnxruntime as ort

    from core.errors import InputError
    from export.api import export_model
    from export.bundle import verify_bundle

    weights = MODELS / "lips.pt"
    full = export_model(weights=weights, out=tmp_path / "full")
    lean = export_model(weights=weights, out=tmp_path / "lean", full_graph=False)
    assert "pixelrnn.onnx" in full.files and "pixelrnn.onnx" not in lean.files
    assert set(full.files) - set(lean.files) == {"pixelrnn.onnx"}
    assert "pixelrnn.onnx" in verify_bundle(tmp_path / "lean")["skipped"]
    frames = np.random.default_rng(0).integers(0, 256, (1, 16, 64, 64), dtype=np.uint8)

    def run(path, x):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})

    whole = run(tmp_path / "full" / "pixelrnn.onnx", frames)[0]
    readout = run(tmp_path / "lean" / "sensor.onnx", frames)[0]
    np.testing.assert_array_equal(run(tmp_path / "lean" / "host.onnx", readout)[0], whole)
    with pytest.raises(InputError, match="applies only to the onnx format"):
        export_model(weights=weights, out=tmp_path / "t", formats="scamp5", full_graph=False)
    res = subprocess.run([sys.executable, "-m", "pixelrnn.cli", "export", "--weights", str(weights), "--format",
                          "scamp5", "--no-full-graph", "--out", str(tmp_path / "cli")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_card_names_the_augmentation_a_run_used():
    """The card's augmentation line follows the run's settings, the mirror included (a config saved
    before ``hflip`` existed has no such key and reads as unmirrored)."""
    import sys

    sys.path.insert(0, str(REPO))
    from benchmarks.default_models import _augmentation
    cfg = {"augment": True, "max_shift": 6, "max_time_shift": 2}
    assert _augmentation(cfg) == "augmentation: shifts up to 6 pixels, time jitter up to 2 frame(s)"
    assert _augmentation({**cfg, "hflip": False}) == _augmentation(cfg)
    assert _augmentation({**cfg, "hflip": True}).endswith("2 frame(s), mirrored left-right half of the time")
    assert _augmentation({**cfg, "augment": False, "hflip": True}) == "no augmentation"
