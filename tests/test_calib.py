"""Calibration to the real SCAMP-5 readouts (issue 6): folds, decoder, noise model, int8, bad input.

The searches run on small grids here (the full grids are benchmarks/calib_results.py's job); every
test that needs the real readouts skips with a reason when the shared data is absent.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import need
from core.errors import InputError
from core.readouts import check_readouts, load_readouts, stratified_folds, stratified_split
from firmware_sim.noise import NoiseModel

SMALL_DECODER = dict(scales=(0.1,), shrinkages=(0.5,))
SMALL_NOISE = dict(conv_sigmas=(0.6,), gate_sigmas=(0.6,), gains=(0.6, 0.7, 0.8), out_sigmas=(1.0, 2.0))


@pytest.fixture(scope="session")
def real_path(ref_dir):
    return need(ref_dir / "scamp5_readouts_cambridge810.npz")


@pytest.fixture(scope="session")
def real(real_path):
    return load_readouts(real_path, need_labels=True, num_classes=9)


@pytest.fixture(scope="session")
def weights(ref_dir):
    return need(ref_dir / "pretrained" / "cam_noise.pt")


# ----- readouts and folds ----------------------------------------------------------------------------
def test_readouts_are_cropped_from_the_full_array(real_path, real):
    with np.load(real_path, allow_pickle=False) as d:
        full = d["readouts"]
    assert real.readouts.shape == (810, 64, 64) and real.readouts.dtype == np.uint8
    assert np.array_equal(real.readouts, full[:, 128:192, 128:192])
    assert np.array_equal(check_readouts(full[:3, 128:192, 128:192]), real.readouts[:3])


def test_folds_are_disjoint_complete_and_stratified(real):
    folds = stratified_folds(real.labels, k=5, seed=0)
    assert set(np.unique(folds)) == set(range(5))
    held_out = [np.flatnonzero(folds == k) for k in range(5)]
    assert sum(len(h) for h in held_out) == 810 and len(np.unique(np.concatenate(held_out))) == 810
    for h in held_out:     # 90 readouts per class -> exactly 18 of each class per fold
        assert np.array_equal(np.bincount(real.labels[h], minlength=9), np.full(9, 18))
    assert np.array_equal(folds, stratified_folds(real.labels, k=5, seed=0))       # fixed seed
    assert not np.array_equal(folds, stratified_folds(real.labels, k=5, seed=1))
    uneven = np.repeat(np.arange(3), [7, 11, 5])
    f = stratified_folds(uneven, k=5, seed=3)
    for c in range(3):      # every class spread as evenly as possible
        counts = np.bincount(f[uneven == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    a, b = stratified_split(uneven, fraction=0.5, seed=0)
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == uneven.size


# ----- the noise model extension: gain and per-pixel offset map ---------------------------------------
def test_gain_and_offset_map_agree_across_fast_instruction_and_torch():
    from firmware_sim.fast import run_clips
    from firmware_sim.program import run_clips_instruction
    from pixelrnn.model import ModelConfig, PixelRNN

    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=3, timesteps=3)).eval()
    sensor = model.sensor_weights()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 3, 64, 64), dtype=np.uint8)
    offset = rng.uniform(-1, 1, size=(64, 64))
    noise = NoiseModel(out_gain=0.8, out_offset=0.3, offset_map=offset)
    binary = sensor.frontend.binarize(frames)
    fast = run_clips(binary, sensor, noise=noise)
    plain = run_clips(binary, sensor)
    np.testing.assert_allclose(fast.output, 0.8 * plain.output + 0.3 + offset, atol=1e-5)
    instr = run_clips_instruction(binary, sensor, noise=noise)
    assert np.array_equal(instr.readout, fast.readout)       # gain >= 0.5, |offsets| small: see program.py
    with torch.no_grad():
        o, _ = model.sensor(model.binarize_input(torch.from_numpy(frames)), noise=noise)
    np.testing.assert_allclose(o[:, 0].numpy(), fast.output, atol=1e-4)
    with pytest.raises(ValueError, match="offset_map is 32x32"):
        run_clips(binary, sensor, noise=NoiseModel(offset_map=np.zeros((32, 32))))


def test_noise_model_validates_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="out_gain"):
        NoiseModel(out_gain=0.0)
    with pytest.raises(ValueError, match="finite"):
        NoiseModel(offset_map=np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        NoiseModel(offset_map=np.zeros(16))
    n = NoiseModel(conv_sigma=1.0, out_gain=0.7, out_offset=-1.0, offset_map=np.arange(16.0).reshape(4, 4),
                   model_id="abc")
    path = tmp_path / "n.json"
    path.write_text(json.dumps({"model_id": "abc", "noise": {k: v for k, v in n.to_dict().items() if k != "model_id"}}))
    back = NoiseModel.from_spec(str(path))
    assert back == n and back.model_id == "abc" and back.offset_array.shape == (4, 4)
    assert NoiseModel.from_spec("authors") == NoiseModel(0.6, 0.6, 1.0)      # scalar models unchanged
    path.write_text(json.dumps({"noise": {"out_gian": 1.0}}))
    with pytest.raises(ValueError, match="unknown noise parameter"):
        NoiseModel.from_spec(str(path))


# ----- decoder ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def decoder_fold0(weights, real_path, ref_dir, tmp_path_factory):
    """Our decoder, CV-scored, and saved fitted without fold 0 (so fold 0 stays unseen for int8)."""
    from calib.decoder import DecoderOptions, calibrate_decoder

    out = tmp_path_factory.mktemp("decoder") / "calibrated.pt"
    report = calibrate_decoder(weights=weights, readouts=real_path, out=out,
                               reference=need(ref_dir / "pretrained" / "cam_noise_finetuned.pt"),
                               options=DecoderOptions(**SMALL_DECODER), exclude_fold=0)
    return out, report


@pytest.mark.slow
def test_calibrated_decoder_beats_the_simulation_decoder_on_held_out_readouts(decoder_fold0):
    _, report = decoder_fold0
    assert len(report.folds) == 5 and all(r["n_test"] == 162 for r in report.folds)
    # Measured (seed 0): simulation decoder 10.9% (chance 11.1%: the sim-to-real gap), ours 91.5%
    # mean, every fold >= 87%. A 60-point margin leaves room for BLAS/seed differences while still
    # failing if the fit leaked nothing useful or the readouts were mis-cropped (-> near chance).
    assert report.mean["calibrated"] - report.mean["simulation"] >= 0.60
    assert all(r["calibrated"] - r["simulation"] >= 0.5 for r in report.folds)
    assert report.mean["simulation"] < 0.2
    assert report.mean["reference"] > 0.9          # the authors' decoder, fine-tuned on these readouts
    assert report.final["n_readouts"] == 648 and report.final["excluded_fold"] == 0
    assert all(0 < r["choice"]["temperature"] < 1e4 for r in report.folds)


@pytest.mark.slow
def test_calibrated_checkpoint_keeps_the_sensor_weights(decoder_fold0, weights):
    from pixelrnn.checkpoint import load_model

    ckpt, _ = decoder_fold0
    before, after = load_model(weights), load_model(ckpt)
    assert after.sensor_weights().program_hash() == before.sensor_weights().program_hash()
    for name in ("conv1", "w_fi", "w_fh", "w_oi", "w_oh", "thresh1", "rnn_threshold", "theta0"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    assert not torch.equal(before.fc.weight, after.fc.weight)


# ----- noise -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def noise_file(weights, real_path, ref_dir, tmp_path_factory):
    from calib.noise import NoiseFitOptions, calibrate_noise

    out = tmp_path_factory.mktemp("noise") / "noise.json"
    report = calibrate_noise(weights=weights, readouts=real_path,
                             clips=need(ref_dir / "cambridge_test90.npz"), out=out,
                             options=NoiseFitOptions(**SMALL_NOISE))
    return out, report


@pytest.mark.slow
def test_noise_calibration_reduces_the_held_out_distance(noise_file):
    out, report = noise_file
    m = report.metric
    assert m["name"] == "per_pixel_w1" and m["held_out"] is not None
    # Measured: 41 -> 12 levels held out (floor ~9); demand at least a halving.
    assert m["after"] < 0.5 * m["before"]
    assert m["after"] > m["floor"] * 0.8                       # cannot beat real-vs-real by much
    assert m["held_out"]["fitted"]["pooled_w1"] < m["held_out"]["authors"]["pooled_w1"]
    for name in ("histograms", "offsets"):
        png = out.with_name(f"noise_{name}.png")
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_noise_file_round_trips_and_carries_the_model_id(noise_file, weights):
    from pixelrnn.checkpoint import load_model

    out, report = noise_file
    loaded = NoiseModel.from_spec(str(out))
    assert loaded == report.noise
    assert loaded.model_id == load_model(weights).sensor_weights().program_hash()
    assert loaded.offset_array.shape == (64, 64) and 0.5 < loaded.out_gain < 1.0
    data = json.loads(out.read_text())
    assert {"noise", "model_id", "metric"} <= set(data) and data["metric"]["before"] > data["metric"]["after"]


@pytest.mark.slow
def test_simulate_accepts_the_noise_file_and_another_model_refuses_it(noise_file, weights, ref_dir, tmp_path, capsys):
    from pixelrnn.cli import main

    out, _ = noise_file
    clips = tmp_path / "clips.npz"
    with np.load(ref_dir / "cambridge_test90.npz", allow_pickle=False) as d:
        np.savez(clips, frames=d["frames"][:3], labels=d["labels"][:3])
    assert main(["simulate", "--weights", str(weights), "--clips", str(clips), "--out",
                 str(tmp_path / "sim.npz"), "--noise", str(out)]) == 0
    capsys.readouterr()
    code = main(["simulate", "--weights", str(need(ref_dir / "pretrained" / "lips_no_noise.pt")),
                 "--clips", str(clips), "--out", str(tmp_path / "sim2.npz"), "--noise", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "noise calibration is for model" in err and err.count("\n") == 1


# ----- int8 ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_host_within_one_point_of_float_on_held_out_readouts(decoder_fold0, real_path, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    from calib.int8 import Int8Options, quantize_bundle
    from export.api import export_model
    from export.bundle import verify_bundle

    ckpt, _ = decoder_fold0
    bundle = tmp_path / "bundle"
    export_model(weights=ckpt, out=bundle, formats="onnx")
    report = quantize_bundle(bundle=bundle, readouts=real_path,
                             options=Int8Options(holdout_fold=0, tflite=False, runs=20, warmup=2))
    r = report["onnx"]
    assert report["split"]["n_eval"] == 162 and report["split"]["n_calibration"] == 648
    assert r["float"]["accuracy"] > 0.8                 # fold 0 unseen by the decoder and the quantizer
    assert abs(r["accuracy_change_points"]) <= 1.0
    # centred logits, float out of the int8 graph (no clipping to the calibration range): measured
    # 100% agreement on fold 0; allow one flip
    assert r["prediction_agreement"] >= 0.99 and r["max_abs_logit_error"] < 2.0
    assert r["size_ratio"] < 0.4                       # int8 weights: about a quarter of float32
    manifest = verify_bundle(bundle)
    assert "host_int8.onnx" in manifest["files"] and manifest["int8"]["onnx"]["n_calibration"] == 648


# ----- bad input through the CLI: one line, exit 2 --------------------------------------------------------
def _cli(argv, capsys):
    from pixelrnn.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("case, message", [
    ("shape", "must have shape (N, 64, 64)"),
    ("nan", "NaN"),
    ("nolabels", "no 'labels' array"),
    ("range", "must lie in 0..8"),
    ("dtype", "must be uint8"),
])
def test_bad_readouts_give_one_line_errors(case, message, weights, tmp_path, capsys):
    path = tmp_path / f"{case}.npz"
    good = np.full((10, 64, 64), 127, np.uint8)
    labels = np.arange(10) % 9
    arrays = {"shape": dict(readouts=np.zeros((10, 32, 32), np.uint8), labels=labels),
              "nan": dict(readouts=np.where(np.eye(64)[None] > 0, np.nan, 1.0).repeat(10, 0), labels=labels),
              "nolabels": dict(readouts=good),
              "range": dict(readouts=good, labels=labels + 5),
              "dtype": dict(readouts=good.astype(np.int32), labels=labels)}[case]
    np.savez(path, **arrays)
    code, err = _cli(["calib", "decoder", "--weights", weights, "--readouts", path,
                      "--out", tmp_path / "x.pt"], capsys)
    assert code == 2 and err.startswith("pixelrnn calib: error:") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()


def test_other_bad_calib_inputs_give_one_line_errors(weights, real_path, ref_dir, tmp_path, capsys):
    cases = [
        (["calib", "noise", "--weights", weights, "--readouts", real_path, "--clips", tmp_path / "none.npz",
          "--out", tmp_path / "n.json"], "clips file not found"),
        (["calib", "noise", "--weights", weights, "--readouts", real_path,
          "--clips", ref_dir / "cambridge_test90.npz", "--out", tmp_path / "n.txt"], "must end in .json"),
        (["calib", "int8", "--bundle", tmp_path, "--readouts", real_path], "manifest.json is missing"),
        (["calib", "decoder", "--weights", weights, "--readouts", real_path, "--out", tmp_path / "d.pt",
          "--reference", ref_dir / "pretrained" / "lips_no_noise.pt"], "another sensor program"),
        (["calib", "decoder", "--weights", weights, "--readouts", real_path, "--out", tmp_path / "d.pt",
          "--shrinkages", "0,0.5"], "shrinkages must lie in"),
    ]
    for argv, message in cases:
        code, err = _cli(argv, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_check_readouts_rejects_empty_and_non_arrays():
    with pytest.raises(InputError, match="N = 0"):
        check_readouts(np.zeros((0, 64, 64), np.uint8))
    with pytest.raises(InputError, match="numpy array"):
        check_readouts([[1]])
