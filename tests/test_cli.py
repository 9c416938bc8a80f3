"""The ``pixelrnn simulate`` / ``evaluate`` contract, run as a real subprocess, and its bad-input errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from firmware_sim.fast import STAGES


def run(*args, cwd=None):
    pytest.importorskip("torch")                      # simulate/evaluate load .pt weights
    proc = subprocess.run([sys.executable, "-m", "pixelrnn.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def lip_clips(ref_dir, tmp_path_factory):
    """The lip intermediates' binary input as a clip file for --binarized-input."""
    path = tmp_path_factory.mktemp("clips") / "lip10_bin.npz"
    with np.load(ref_dir / "lip10_intermediates_subset.npz", allow_pickle=False) as d:
        np.savez(path, frames=d["0_binarized_x"], labels=d["labels"])
    return path


@pytest.mark.slow
def test_simulate_writes_reference_names_shapes_and_encodings(ref_dir, lip_clips, tmp_path):
    out = tmp_path / "sim.npz"
    code, stdout, stderr = run("simulate", "--weights", ref_dir / "pretrained" / "lips_no_noise.pt",
                               "--clips", lip_clips, "--out", out, "--binarized-input")
    assert code == 0, stderr
    assert "simulated 4 clips x 16 frames" in stdout
    with np.load(out, allow_pickle=False) as sim, \
            np.load(ref_dir / "lip10_intermediates_subset.npz", allow_pickle=False) as ref:
        for stage in STAGES:
            assert sim[stage].shape == ref[stage].shape and sim[stage].dtype == np.uint8, stage
        assert np.array_equal(sim["3_thresholded_quantized"], ref["3_thresholded_quantized"])
        assert np.array_equal(sim["readout"], ref["6_ft_ot"][:, 15, 64:])
        assert sim["logits"].shape == (4, 4) and sim["logits"].dtype == np.float32
        assert sim["pred"].dtype == np.int64 and np.array_equal(sim["pred"], sim["logits"].argmax(1))


@pytest.mark.slow
def test_instruction_path_cli_equals_fast_path(ref_dir, lip_clips, tmp_path):
    pytest.importorskip("firmware_sim.program")
    outs = {}
    for path in ("fast", "instruction"):
        outs[path] = tmp_path / f"{path}.npz"
        code, _, stderr = run("simulate", "--weights", ref_dir / "pretrained" / "lips_no_noise.pt",
                              "--clips", lip_clips, "--out", outs[path], "--binarized-input", "--path", path)
        assert code == 0, stderr
    with np.load(outs["fast"]) as a, np.load(outs["instruction"]) as b:
        for key in (*STAGES, "readout", "pred"):
            assert np.array_equal(a[key], b[key]), key


@pytest.mark.slow
def test_evaluate_authors_lip_model_and_json(ref_dir, tmp_path):
    out = tmp_path / "report.json"
    code, stdout, stderr = run("evaluate", "--weights", ref_dir / "pretrained" / "lips_no_noise.pt",
                               "--clips", ref_dir / "tulips_test10.npz", "--json", out)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert report["n"] == 10 and 0 <= report["correct"] <= 10
    assert np.array(report["confusion"]).sum() == 10
    assert f"accuracy {report['accuracy']:.4f}" in stdout
    assert report["correct"] == sum(np.diag(report["confusion"]))


@pytest.mark.slow
def test_noise_seed_is_reproducible_and_noise_changes_states(ref_dir, lip_clips, tmp_path):
    paths = [tmp_path / f"n{i}.npz" for i in range(3)]
    w = ref_dir / "pretrained" / "cam_noise.pt"
    for p, seed in zip(paths, (5, 5, 6)):
        code, _, stderr = run("simulate", "--weights", w, "--clips", lip_clips, "--out", p,
                              "--binarized-input", "--noise", "authors", "--seed", seed)
        assert code == 0, stderr
    with np.load(paths[0]) as a, np.load(paths[1]) as b, np.load(paths[2]) as c:
        assert np.array_equal(a["readout"], b["readout"])
        assert not np.array_equal(a["readout"], c["readout"])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "not_npz", "wrong_shape", "wrong_dtype", "no_frames",
                                  "other_state_dict", "nonbinary_input", "bad_noise", "bad_out_dir"])
def test_bad_input_one_line_error_exit_2(case, ref_dir, tmp_path):
    torch = pytest.importorskip("torch")
    weights = ref_dir / "pretrained" / "lips_no_noise.pt"
    clips = tmp_path / "clips.npz"
    np.savez(clips, frames=np.zeros((1, 16, 64, 64), np.uint8))
    out = tmp_path / "out.npz"
    args = ["simulate", "--weights", weights, "--clips", clips, "--out", out]
    if case == "missing":
        args[4] = tmp_path / "nope.npz"
    elif case == "not_npz":
        clips.write_text("hello")
    elif case == "wrong_shape":
        np.savez(clips, frames=np.zeros((1, 16, 32, 32), np.uint8))
    elif case == "wrong_dtype":
        np.savez(clips, frames=np.zeros((1, 16, 64, 64), np.float32))
    elif case == "no_frames":
        np.savez(clips, images=np.zeros((1, 16, 64, 64), np.uint8))
    elif case == "other_state_dict":
        other = tmp_path / "other.pt"
        torch.save({"layer.weight": torch.zeros(2)}, other)
        args[2] = other
    elif case == "nonbinary_input":
        np.savez(clips, frames=np.full((1, 16, 64, 64), 7, np.uint8))
        args.append("--binarized-input")
    elif case == "bad_noise":
        args += ["--noise", "loud"]
    elif case == "bad_out_dir":
        args[6] = tmp_path / "no" / "such" / "dir" / "out.npz"
    code, stdout, stderr = run(*args)
    assert code == 2, (case, stderr)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if case != "bad_noise":  # argparse prints usage + one error line
        assert len(lines) == 1, (case, stderr)
    assert "Traceback" not in stderr and "error" in lines[-1]
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.device
def test_subcommand_without_its_extra_explains_what_to_install():
    """On a device with only the base install (no torch), `pixelrnn train` says what to install."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pixelrnn.cli import main\n"
            "sys.exit(main(['train', '--dataset', 'grid']))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs packages that are not installed" in lines[0]
    assert "pip install -c constraints.txt -e '.[train]'" in lines[0]
