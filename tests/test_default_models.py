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
