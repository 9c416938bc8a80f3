"""``pixelrnn sweep`` (Optuna, SQLite storage): a grid of configurations x seeds runs once, a resumed
sweep does not redo finished points, the summary reads them back, and bad specs are one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import DATA, REPO, need

pytest.importorskip("optuna")
pytestmark = pytest.mark.slow

SPEC = """study: tiny
base: {{dataset: grid, data_dir: "{data}", epochs: 1, limit: 24, batch_size: 8, threads: 1,
        noise_conv: 0.0, noise_gate: 0.0, noise_out: 0.0, augment: false}}
configs:
  authors: {{}}
  f4-1bit-pool2: {{readout_every: 4, readout_bits: 1, readout_pool: 2}}
seeds: [0]
"""


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", "sweep", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def test_sweep_runs_each_point_once_and_resumes(tmp_path):
    need(DATA / "grid_s1_digits.npz")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(data=DATA))
    out = tmp_path / "runs"
    first = _sweep("--spec", str(spec), "--out-dir", str(out), "--no-progress")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "ran 2 point(s)" in first.stdout
    for name in ("authors", "f4-1bit-pool2"):
        assert (out / name / "seed0" / "report.json").is_file()
    again = _sweep("--spec", str(spec), "--out-dir", str(out), "--no-progress")
    assert again.returncode == 0 and "ran 0 point(s)" in again.stdout, again.stdout + again.stderr
    summary = _sweep("--spec", str(spec), "--out-dir", str(out), "--summary", "--json-out", str(tmp_path / "s.json"))
    assert summary.returncode == 0, summary.stderr
    assert "| authors | 4096 | 1 |" in summary.stdout
    assert "| f4-1bit-pool2 | 512 | 1 |" in summary.stdout      # 4 maps x 32 x 32 x 1 bit
    # a lost storage (or runs made with `pixelrnn train` into the sweep's folders): the finished
    # folders are adopted, not trained again
    (out / "sweep.db").unlink()
    adopted = _sweep("--spec", str(spec), "--out-dir", str(out), "--no-progress")
    assert adopted.returncode == 0 and "ran 0 point(s)" in adopted.stdout, adopted.stdout + adopted.stderr
    # a lost storage and one lost run: the other is adopted, the lost one trains again, in one call
    # (the grid sampler may hand out the adopted point first: that trial must not use up the call)
    (out / "sweep.db").unlink()
    shutil.rmtree(out / "authors")
    again = _sweep("--spec", str(spec), "--out-dir", str(out), "--no-progress")
    assert again.returncode == 0 and "ran 1 point(s)" in again.stdout, again.stdout + again.stderr
    assert (out / "authors" / "seed0" / "report.json").is_file()


CV_SPEC = """study: tiny-cv
base: {{dataset: cambridge, data_dir: "{data}", epochs: 1, batch_size: 16, threads: 1,
        noise_conv: 0.0, noise_gate: 0.0, noise_out: 0.0, augment: false}}
configs:
  authors: {{}}
seeds: [0]
folds: [0, 3]
"""


def test_sweep_with_folds_runs_every_fold_and_reports_the_cv_mean(tmp_path):
    need(DATA / "pixelrnn_ref" / "cambridge_test90.npz")
    spec = tmp_path / "spec.yaml"
    spec.write_text(CV_SPEC.format(data=DATA))
    out = tmp_path / "runs"
    first = _sweep("--spec", str(spec), "--out-dir", str(out), "--no-progress")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "ran 2 point(s)" in first.stdout
    reports = [json.loads((out / "authors" / "seed0" / f"fold{f}" / "report.json").read_text()) for f in (0, 3)]
    assert [r["config"]["fold"] for r in reports] == [0, 3]
    assert set(reports[0]["test_names"]).isdisjoint(reports[1]["test_names"])     # different test folds
    again = _sweep("--spec", str(spec), "--out-dir", str(out), "--no-progress")
    assert again.returncode == 0 and "ran 0 point(s)" in again.stdout, again.stdout + again.stderr
    summary = _sweep("--spec", str(spec), "--out-dir", str(out), "--summary", "--json-out", str(tmp_path / "s.json"))
    assert summary.returncode == 0, summary.stderr
    row = json.loads((tmp_path / "s.json").read_text())["rows"][0]
    assert row["seeds"] == 1 and row["folds"] == 2
    cv = 100 * sum(r["test"]["accuracy"] for r in reports) / 2
    assert row["test_mean"] == pytest.approx(cv) and row["test_std"] == 0.0


@pytest.mark.parametrize("text, message", [
    ("study: x\nconfigs: {a: {}}\nseeds: []\n", "seeds must be a list"),
    ("study: x\nconfigs: {a: {readout_bits: 3}}\nseeds: [0]\n", "readout bits must be one of"),
    ("study: x\nconfigs: {a: {seed: 3}}\nseeds: [0]\n", "seed is set by the sweep"),
    ("study: x\nconfigs: {a: {}}\nseeds: [0]\nextra: 1\n", "unknown sweep keys"),
    ("study: x\nconfigs: {a: {}}\nseeds: [0]\nfolds: [0, 1]\n", "folds are for the cross-validated data sets"),
    ("study: x\nbase: {dataset: cambridge}\nconfigs: {a: {}}\nseeds: [0]\nfolds: [5]\n", "folds must be a list"),
    ("study: x\nbase: {dataset: cambridge, fold: 1}\nconfigs: {a: {}}\nseeds: [0]\nfolds: [0]\n",
     "fold is set by the sweep"),
])
def test_bad_specs_are_one_line_errors(tmp_path, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = _sweep("--spec", str(spec), "--out-dir", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
