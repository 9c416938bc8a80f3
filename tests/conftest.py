"""Shared fixtures. Real data is found through PIXELRNN_DATA (default ../shared/data from the repo)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PIXELRNN_DATA", REPO.parent / "shared" / "data"))
REF = DATA / "pixelrnn_ref"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set PIXELRNN_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    return need(REF)


@pytest.fixture(scope="session")
def authors_models(ref_dir):
    from pixelrnn.checkpoint import load_model
    return {"gesture": load_model(need(ref_dir / "pretrained" / "cam_noise.pt")),
            "lips": load_model(need(ref_dir / "pretrained" / "lips_no_noise.pt"))}


@pytest.fixture(scope="session")
def intermediates(ref_dir):
    out = {}
    for task, name in (("gesture", "cam10"), ("lips", "lip10")):
        with np.load(need(ref_dir / f"{name}_intermediates_subset.npz"), allow_pickle=False) as d:
            out[task] = {k: d[k] for k in d.files}
    return out


@pytest.fixture(scope="session")
def edge_models(tmp_path_factory) -> Path:
    """Bundles of the authors' weights in the default-model layout (<root>/<task>/), exported once
    per session for the edge tests."""
    root = tmp_path_factory.getbasetemp() / "edge_models"
    for task, weights in (("lips", "lips_no_noise.pt"), ("gesture", "cam_noise.pt")):
        if not (root / task / "manifest.json").is_file():
            from export.api import export_model

            root.mkdir(exist_ok=True)
            export_model(weights=need(REF / "pretrained" / weights), out=root / task, formats=["onnx", "tflite"])
    return root
