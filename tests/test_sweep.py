"""``pixelrnn sweep`` (Optuna, SQLite storage): a grid of configurations x seeds runs once, a resumed
sweep does not redo finished points, the summary reads them back, two processes on one storage never
train the same point, a killed process's point is taken again after its heartbeats stop, and bad
specs are one-line errors."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

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


def _authors_only(spec_text: str) -> str:
    """A formatted spec with its f4-1bit-pool2 configuration left out (one point per seed)."""
    return spec_text.replace("  f4-1bit-pool2: {readout_every: 4, readout_bits: 1, readout_pool: 2}\n", "")


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


SPEC4 = """study: four
base: {{dataset: grid, data_dir: "{data}", epochs: {epochs}, limit: 24, batch_size: 8, threads: 1,
        noise_conv: 0.0, noise_gate: 0.0, noise_out: 0.0, augment: false}}
configs:
  authors: {{}}
  f4-1bit-pool2: {{readout_every: 4, readout_bits: 1, readout_pool: 2}}
seeds: {seeds}
"""
POINT = re.compile(r"^sweep \S+: (\S+) seed (\d+) -> ", re.M)


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.cli", "sweep", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("machines", [1, 2])
def test_two_processes_on_one_storage_train_each_point_once(tmp_path, machines):
    """Two processes started together on a new study (when Optuna's GridSampler handed both the same
    point) split the four points: each trains in exactly one. machines=2: each process has its own
    --out-dir (two machines sharing only the storage: no common lock file, the rival check decides)."""
    need(DATA / "grid_s1_digits.npz")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC4.format(data=DATA, epochs=1, seeds="[0, 1]"))
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    outs = [tmp_path / f"runs{i if machines == 2 else 0}" for i in range(2)]
    procs = [_popen("--spec", str(spec), "--out-dir", str(o), "--storage", storage, "--no-progress") for o in outs]
    results = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    trained = [(m, o) for (stdout, _), o in zip(results, outs) for m in POINT.findall(stdout)]
    points = sorted(m for m, _ in trained)
    assert points == sorted((c, s) for c in ("authors", "f4-1bit-pool2") for s in ("0", "1")), trained
    ran = [int(re.search(r"ran (\d+) point", stdout).group(1)) for stdout, _ in results]
    assert sum(ran) == 4, ran
    assert all((o / c / f"seed{s}" / "report.json").is_file() for (c, s), o in trained)


def test_a_point_taken_elsewhere_is_left_alone_and_a_killed_process_frees_it(tmp_path):
    """While one process trains the only point, a second one stops at once and says so; when the first
    is killed (SIGKILL: no clean-up), its heartbeats stop, and a process started three beats later
    fails the stale trial and trains the point itself."""
    need(DATA / "grid_s1_digits.npz")
    spec = tmp_path / "spec.yaml"
    spec.write_text(_authors_only(SPEC4.format(data=DATA, epochs=20, seeds="[0]")))
    out = tmp_path / "runs"
    args = ("--spec", str(spec), "--out-dir", str(out), "--no-progress", "--heartbeat", "1")
    first = _popen(*args)
    try:
        line = ""
        deadline = time.monotonic() + 300
        while "-> " not in line and time.monotonic() < deadline and first.poll() is None:
            line = first.stdout.readline()
        assert "authors seed 0 -> " in line, line
        second = _sweep(*args)
        assert second.returncode == 0, second.stderr[-2000:]
        assert "the 1 point(s) left are running in other processes" in second.stdout and \
            "ran 0 point(s)" in second.stdout, second.stdout
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    time.sleep(4)                                  # three missed 1-second beats
    third = _sweep(*args)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "authors seed 0 -> " in third.stdout and "ran 1 point(s)" in third.stdout, third.stdout[-2000:]
    assert (out / "authors" / "seed0" / "report.json").is_file()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")     # ask() outside optimize: this test's stand-in
def test_a_point_running_elsewhere_is_not_picked(tmp_path):
    """A point that another process runs (a RUNNING trial with its params) is left to it: the sweep
    trains the other point and says the one left is running elsewhere."""
    optuna = pytest.importorskip("optuna")
    need(DATA / "grid_s1_digits.npz")
    from pixelrnn.sweep import _study, load_spec, run_sweep

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC4.format(data=DATA, epochs=1, seeds="[0]"))
    spec, out = load_spec(spec_path), tmp_path / "runs"
    out.mkdir()
    storage = f"sqlite:///{tmp_path / 'db'}"
    study = _study(spec, storage)
    study.enqueue_trial({"config": "authors", "seed": 0})
    held = study.ask()                                    # "another process" runs authors / 0
    held.suggest_categorical("config", list(spec.configs))
    held.suggest_categorical("seed", spec.seeds)
    assert held.params == {"config": "authors", "seed": 0}
    assert run_sweep(spec=spec, storage=storage, out=out, progress=False) == 1
    trials = study.get_trials(deepcopy=False)
    done = [t.params for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done == [{"config": "f4-1bit-pool2", "seed": 0}]
    assert [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING] == [held.number]
    assert not (out / "authors").exists()


@pytest.mark.parametrize("text, message", [
    ("study: x\nconfigs: {a: {}}\nseeds: []\n", "seeds must be a list"),
    ("study: x\nconfigs: {a: {readout_bits: 3}}\nseeds: [0]\n", "readout bits must be one of"),
    ("study: x\nconfigs: {a: {seed: 3}}\nseeds: [0]\n", "seed is set by the sweep"),
    ("study: x\nconfigs: {a: {}}\nseeds: [0]\nextra: 1\n", "unknown sweep keys"),
    ("study: x\nconfigs: {a: {}}\nseeds: [0]\nout_dir: [runs]\n", "out_dir must be a folder path"),
    ("study: x\nconfigs: {a: {}}\nseeds: [0]\nfolds: [0, 1]\n", "folds are for the cross-validated data sets"),
    ("study: x\nbase: {dataset: cambridge}\nconfigs: {a: {}}\nseeds: [0]\nfolds: [5]\n", "folds must be a list"),
    ("study: x\nbase: {dataset: cambridge, fold: 1}\nconfigs: {a: {}}\nseeds: [0]\nfolds: [0]\n",
     "fold is set by the sweep"),
    ("study: x\nbase: {init_from: 'r/seed{run}/model.pt'}\nconfigs: {a: {}}\nseeds: [0]\n",
     "init_from may name only {seed}, not {run}"),
    ("study: x\nbase: {init_from: 'r/seed{seed/model.pt'}\nconfigs: {a: {}}\nseeds: [0]\n",
     "is not a valid template"),
    ("study: x\nbase: {init_from: '/nonexistent/seed{seed}/model.pt'}\nconfigs: {a: {}}\nseeds: [0]\n",
     "seed 0: init_from '/nonexistent/seed0/model.pt' does not exist; this spec is a second stage"),
])
def test_bad_specs_are_one_line_errors(tmp_path, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = _sweep("--spec", str(spec), "--out-dir", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_heartbeat_is_a_one_line_error(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("study: x\nconfigs: {a: {}}\nseeds: [0]\n")
    result = _sweep("--spec", str(spec), "--out-dir", str(tmp_path / "o"), "--heartbeat", "0")
    assert result.returncode == 2 and "--heartbeat must be" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_second_stage_starts_each_seed_from_its_own_first_stage_run(tmp_path):
    """init_from with {seed}: every point of a fine-tuning sweep starts from the same seed's run of the first
    sweep (its decoder too, with init_decoder), and a seed whose first-stage run is missing is refused up
    front, naming the file, before anything trains."""
    import torch

    from pixelrnn.checkpoint import load_model

    need(DATA / "grid_s1_digits.npz")
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(_authors_only(SPEC.format(data=DATA)).replace("seeds: [0]", "seeds: [0, 1]"))
    out1, out2 = tmp_path / "stage1", tmp_path / "stage2"
    result = _sweep("--spec", str(first), "--out-dir", str(out1), "--no-progress")
    assert result.returncode == 0 and "ran 2 point(s)" in result.stdout, result.stderr[-2000:]
    stage2 = (_authors_only(SPEC.format(data=DATA)).replace("study: tiny", "study: tiny-ft")
              .replace("augment: false}", f"augment: false, lr: 1.0e-9, lr_binary: 1.0e-9, init_decoder: true,\n"
                                          f"        init_from: '{out1}/authors/seed{{seed}}/model.pt'}}"))
    second.write_text(stage2.replace("seeds: [0]", "seeds: [0, 1]"))
    result = _sweep("--spec", str(second), "--out-dir", str(out2), "--no-progress")
    assert result.returncode == 0 and "ran 2 point(s)" in result.stdout, result.stderr[-2000:]

    def weights(stage, seed):
        sd = load_model(stage / "authors" / f"seed{seed}" / "model.pt").state_dict()
        return [sd[k] for k in ("conv1", "w_fi", "w_oh", "fc.weight")]

    for seed in (0, 1):     # lr 1e-9: each second-stage model is its own seed's first-stage model (Adam moves a
        # weight by about lr per step: 1e-6 bounds the 3 steps); the two seeds' first-stage models differ by far more
        assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(weights(out1, seed), weights(out2, seed)))
    assert not torch.allclose(weights(out1, 0)[3], weights(out1, 1)[3], rtol=0, atol=1e-3)
    second.write_text(stage2.replace("seeds: [0]", "seeds: [0, 2]"))
    result = _sweep("--spec", str(second), "--out-dir", str(tmp_path / "stage2b"), "--no-progress")
    assert result.returncode == 2 and f"seed 2: init_from '{out1}/authors/seed2/model.pt' does not exist" \
        in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "stage2b" / "authors").exists()


def test_a_changed_grid_is_refused_and_a_new_study_name_adopts_the_finished_runs(tmp_path):
    """More seeds in a spec whose study already ran: Optuna cannot change a stored grid, so it is a one-line error
    that names the fix; the fix (a new study name, the same out_dir in the spec) adopts the finished run and trains
    only the new seed. The spec's out_dir is where runs go when --out-dir is not given."""
    need(DATA / "grid_s1_digits.npz")
    out = tmp_path / "runs"
    one = _authors_only(SPEC.format(data=DATA)) + f'out_dir: "{out}"\n'
    spec = tmp_path / "spec.yaml"
    spec.write_text(one)
    result = _sweep("--spec", str(spec), "--no-progress")
    assert result.returncode == 0 and "ran 1 point(s)" in result.stdout, result.stderr[-2000:]
    assert (out / "authors" / "seed0" / "report.json").is_file() and (out / "sweep.db").is_file()
    spec.write_text(one.replace("seeds: [0]", "seeds: [0, 1]"))
    result = _sweep("--spec", str(spec), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "was started with seeds [0], this spec has [0, 1]" in result.stderr
    assert f"give the spec a new study name and 'out_dir: {out}'" in result.stderr
    assert not (out / "authors" / "seed1").exists()
    report = out / "authors" / "seed0" / "report.json"      # as if written before val_split existed: a
    recorded = json.loads(report.read_text())               # setting added later counts at its default
    assert recorded["config"].pop("val_split") == "fixed"
    report.write_text(json.dumps(recorded))
    spec.write_text(one.replace("seeds: [0]", "seeds: [0, 1]").replace("study: tiny", "study: tiny-more-seeds"))
    result = _sweep("--spec", str(spec), "--no-progress")
    assert result.returncode == 0 and "ran 1 point(s)" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "not adopted" not in result.stdout
    assert (out / "authors" / "seed1" / "report.json").is_file()
    summary = _sweep("--spec", str(spec), "--summary")
    assert summary.returncode == 0 and "| authors | 4096 | 2 |" in summary.stdout, summary.stdout + summary.stderr
