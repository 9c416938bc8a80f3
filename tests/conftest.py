"""Shared fixtures. Real data is found through PIXELRNN_DATA (default ../shared/data from the repo).

Markers (pytest.ini): ``device`` tests run on the base install and use only the torch-free fixtures
(``bundled_models``, ``authors_bundle``, ``need``); ``authors_models`` and ``edge_models`` need torch
(and TensorFlow/Larq for ``edge_models``' TFLite export) and skip cleanly without them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

# Under pytest-xdist (the README's `-n auto`) each worker gets its share of the cores for its math threads
# (torch's OpenMP, OpenBLAS), set before numpy and torch read them: workers x threads stay within the
# machine, so no worker's threads (nor a nice-19 detector thread) wait on oversubscribed cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _share)

import numpy as np  # noqa: E402
import pytest

# Larq needs the legacy Keras 2: set before anything imports TensorFlow (as pixelrnn.larq_twin does)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PIXELRNN_DATA", REPO.parent / "shared" / "data"))
REF = DATA / "pixelrnn_ref"
BUNDLED = REPO / "pixelrnn" / "models"          # the package's default models, <task>/ bundles
# a bundle with the authors' readout (o_16, one 64x64 map, 8 bit): the gesture default until issue 12 replaced it,
# kept for what only that layout has (1bit / prior / table payloads of 8-bit levels, TFLite files in the bundle)
AUTHORS_BUNDLES = REPO / "tests" / "fixtures" / "authors_bundle"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set PIXELRNN_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    return need(REF)


@pytest.fixture(scope="session")
def authors_models(ref_dir):
    pytest.importorskip("torch")
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
    per session (needs torch, and TensorFlow/Larq for the TFLite files): tests marked ``device`` use
    ``bundled_models`` instead."""
    pytest.importorskip("torch")
    pytest.importorskip("pixelrnn.larq_twin")   # sets TF_USE_LEGACY_KERAS before larq imports TensorFlow
    root = tmp_path_factory.getbasetemp() / "edge_models"
    for task, weights in (("lips", "lips_no_noise.pt"), ("gesture", "cam_noise.pt")):
        if not (root / task / "manifest.json").is_file():
            from export.api import export_model

            root.mkdir(exist_ok=True)
            export_model(weights=need(REF / "pretrained" / weights), out=root / task, formats=["onnx", "tflite"])
    return root


@pytest.fixture(scope="session")
def bundled_models(tmp_path_factory) -> Path:
    """The package's bundled default models (pixelrnn/models/<task>/: manifest, ONNX, sensor program;
    since issue 12 both read out 8 maps of 32x32 at 1 bit, ``authors_bundle`` has the authors' readout)
    copied to a session folder in the default-model layout: no torch or export needed, so the
    ``device`` tests run on the base install. A copy, so no test can change the package's own files."""
    root = tmp_path_factory.getbasetemp() / "bundled_models"
    for task in ("lips", "gesture"):
        if not (root / task / "manifest.json").is_file():
            assert (BUNDLED / task / "manifest.json").is_file(), f"no bundled {task} model at {BUNDLED / task}"
            shutil.copytree(BUNDLED / task, root / task, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def authors_bundle(tmp_path_factory) -> Path:
    """tests/fixtures/authors_bundle/gesture/ (a trained gesture model with the authors' readout: one 64x64
    8-bit map, ONNX + TFLite + sensor program) copied to a session folder in the default-model layout
    (<root>/gesture/), as ``bundled_models``: torch-free, so ``device`` tests may use it."""
    root = tmp_path_factory.getbasetemp() / "authors_bundle"
    if not (root / "gesture" / "manifest.json").is_file():
        assert (AUTHORS_BUNDLES / "gesture" / "manifest.json").is_file(), f"no fixture bundle at {AUTHORS_BUNDLES}"
        shutil.copytree(AUTHORS_BUNDLES / "gesture", root / "gesture", dirs_exist_ok=True)
    return root


def decode_video(path: Path) -> list[np.ndarray]:
    """Every frame of a video file, as OpenCV decodes it (BGR)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames
