"""Training: STE gradients, real sign changes, reproducibility, resume, DDP equivalence, bad configs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import DATA, REPO, need
from pixelrnn.checkpoint import load_model
from pixelrnn.model import ModelConfig, PixelRNN
from pixelrnn.quantizers import get_quantizer

SMALL = dict(dataset="grid", limit=48, batch_size=16, epochs=1, threads=1, lr_binary=0.05)


@pytest.fixture(scope="module")
def grid_data() -> str:
    need(DATA / "grid_s1_digits.npz")
    return str(DATA)


def _cfg(tmp: Path, data: str, **kw):
    from pixelrnn.train import TrainConfig
    return TrainConfig(**{**SMALL, "data_dir": data, "out_dir": str(tmp), **kw})


# -- straight-through estimators ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tanh_mx", "ste_sign"])
def test_ste_gradients_finite_and_where_expected(name):
    q = get_quantizer(name, m=2.0)
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    y = q(x)
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1, -1, 1, 1, 1, 1]))   # sign(0) = +1
    y.sum().backward()
    g = x.grad
    assert torch.isfinite(g).all()
    if name == "ste_sign":   # 1 inside |x| <= 1, 0 outside (larq's SteSign)
        assert torch.equal(g, torch.tensor([0.0, 1, 1, 1, 1, 1, 0]))
    else:                    # m (1 - tanh(m x)^2): peak m at 0, symmetric, decaying
        expected = 2 * (1 - torch.tanh(2 * x.detach()) ** 2)
        torch.testing.assert_close(g, expected)
        assert g[3] == 2.0 and g[0] < 1e-3


def test_model_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=4, learn_theta0=True, noise_conv=0.6, noise_gate=0.6, noise_out=1.0))
    model.train()
    frames = torch.randint(0, 256, (3, 16, 64, 64), dtype=torch.uint8)
    loss = torch.nn.functional.cross_entropy(model(frames), torch.tensor([0, 1, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # the in-sensor binary weights get a learning signal through the STE (not all-zero gradients)
    for name in ("conv1", "w_fi", "w_fh", "w_oi", "w_oh", "thresh1", "rnn_threshold", "theta0"):
        assert getattr(model, name).grad.abs().sum() > 0, name


def test_per_clip_noise_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=3, noise_conv=0.6, noise_gate=0.6, noise_out=1.0)).train()
    frames = torch.randint(0, 256, (4, 16, 64, 64), dtype=torch.uint8)
    gens = lambda ids: [torch.Generator().manual_seed(100 + i) for i in ids]  # noqa: E731
    together = model(frames, generators=gens(range(4)))
    apart = torch.cat([model(frames[:2], generators=gens([0, 1])), model(frames[2:], generators=gens([2, 3]))])
    # BatchNorm uses batch statistics in training: compare the sensor outputs instead
    o_all, _ = model.sensor(model.binarize_input(frames), generators=gens(range(4)))
    o_b, _ = model.sensor(model.binarize_input(frames[2:]), generators=gens([2, 3]))
    assert torch.equal(o_all[2:], o_b)
    assert together.shape == apart.shape
    with pytest.raises(ValueError, match="generators"):
        model.sensor(model.binarize_input(frames), generators=gens([0]))


# -- real training runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_short_real_run_flips_signs_and_simulator_agrees(tmp_path, grid_data):
    from pixelrnn.train import train
    report = train(config=_cfg(tmp_path, grid_data), progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    agreement = metrics["epochs"][-1]["sign_agreement_with_init"]
    assert agreement < 1.0, "no binary weight changed sign: the latent weights are not learning"
    assert report["simulator_agrees"] and report["readout_bytes_equal"]
    assert report["test_accuracy_pytorch"] == report["test"]["accuracy"]
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    # the checkpoint is usable by evaluate (and records its training config and code version)
    data = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert data["extra"]["train_config"]["dataset"] == "grid" and data["extra"]["code_version"]
    assert load_model(tmp_path / "model.pt").config.classes[0] == "zero"


@pytest.mark.slow
def test_frozen_binary_weights_keep_their_signs(tmp_path, grid_data):
    from pixelrnn.train import train
    train(config=_cfg(tmp_path, grid_data, freeze_binary=True), progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"][-1]["sign_agreement_with_init"] == 1.0


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_seeds_reproduce(tmp_path, grid_data):
    from pixelrnn.train import train
    full, part = tmp_path / "full", tmp_path / "part"
    train(config=_cfg(full, grid_data, epochs=2, limit=32), progress=False)
    # "killed" after epoch 1 of 2, then resumed
    assert train(config=_cfg(part, grid_data, epochs=2, limit=32), progress=False, stop_after=1) == {}
    assert not (part / "report.json").exists()
    with pytest.raises(ValueError, match="--resume"):
        train(config=_cfg(part, grid_data, epochs=2, limit=32), progress=False)
    train(config=_cfg(part, grid_data, epochs=2, limit=32), resume=True, progress=False)
    report = lambda run: json.loads((run / "report.json").read_text())["test"]  # noqa: E731
    assert report(part) == report(full)
    a = torch.load(full / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(part / "last.pt", map_location="cpu", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    # resuming with different settings is refused
    with pytest.raises(ValueError, match="different settings"):
        train(config=_cfg(part, grid_data, epochs=2, limit=32, lr=0.5), resume=True, progress=False)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path, grid_data):
    """torchrun --nproc_per_node=2 (gloo) gives the 1-process result for the same global batch.

    Same clips, same per-clip noise, BatchNorm statistics over the global batch. What may differ:
    float32 rounding (the gradient is summed in another order). Adam divides each gradient by its
    own magnitude, so for near-zero gradients that rounding grows to ~1e-3 of a step; we therefore
    require identical binary weights (what the sensor runs), identical test predictions, and the
    other (real) parameters within 5e-3 (a fraction of one update of lr_binary = 2e-2).
    """
    args = ["train", "--dataset", "grid", "--data-dir", grid_data, "--limit", "32", "--batch-size", "16",
            "--epochs", "1", "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pixelrnn.cli", *args, "--out-dir", str(tmp_path / "one")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pixelrnn.cli", *args, "--out-dir", str(tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert set(a) == set(b)
    for key in ("conv1", "w_fi", "w_fh", "w_oi", "w_oh", "fin_conv"):
        assert torch.equal(a[key] >= 0, b[key] >= 0), key
    for key in set(a) - {"conv1", "w_fi", "w_fh", "w_oi", "w_oh", "fin_conv"}:
        torch.testing.assert_close(b[key].double(), a[key].double(), atol=5e-3, rtol=0, msg=key)
    ra = json.loads((tmp_path / "one" / "report.json").read_text())
    rb = json.loads((tmp_path / "two" / "report.json").read_text())
    assert ra["test"]["confusion"] == rb["test"]["confusion"]


# -- bad configuration ----------------------------------------------------------------------------
def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pixelrnn.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("content, message", [
    ("dataset: grid\nlearning_rate: 0.1\n", "unknown setting 'learning_rate'"),
    ("batch_size: 1\n", "batch_size must be >= 2"),
    ("dataset: mnist\n", "dataset must be one of"),
    ("schedule: [cosine\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("lr: fast\n", "lr must be a finite number"),
    ("noise_file: nope.json\n", "not 'off', 'authors' or an existing JSON file"),
    ("init_decoder: true\n", "init_decoder needs init_from"),
    ("dataset: cambridge\nfold: -1\npatience: 5\n", "has no validation clips: set patience 0"),
    ("dataset: grid\nfold: -1\n", "fold -1 (every clip trains) is for the cross-validated data sets"),
    ("dataset: cambridge\nhflip: true\n", "hflip mirrors left and right, which changes cambridge's classes"),
    ("augment: false\nhflip: true\n", "hflip is an augmentation: it needs augment true"),
])
def test_bad_config_gives_one_line_error(tmp_path, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    res = _cli("train", "--config", str(cfg), "--out-dir", str(tmp_path / "out"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "out" / "last.pt").exists()


@pytest.mark.slow
def test_missing_config_file_and_bad_flag(tmp_path):
    res = _cli("train", "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "config file not found" in res.stderr
    res = _cli("train", "--augment", "maybe")
    assert res.returncode == 2 and "expected true or false" in res.stderr


def test_yaml_config_and_flag_override(tmp_path):
    import argparse

    from pixelrnn.train import add_train_parser, config_from_args
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: cambridge\nfold: 3\nlr: 1\nepochs: 7\n")
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(cfg), "--epochs", "9"])
    c = config_from_args(args)
    assert (c.dataset, c.fold, c.lr, c.epochs) == ("cambridge", 3, 1.0, 9)
    assert isinstance(c.lr, float)


# -- data readers and splits ----------------------------------------------------------------------
def test_splits_are_fixed_disjoint_and_honest():
    from pixelrnn.data import load_dataset, split
    need(DATA / "grid_s1_digits.npz")
    grid = load_dataset("grid", data_dir=DATA)
    p = split(grid)
    assert [len(p[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    assert np.bincount(grid.labels[p["test"]]).tolist() == [10] * 10           # stratified
    assert not set(p["train"]) & set(p["test"]) and not set(p["val"]) & set(p["test"])
    assert np.array_equal(split(grid)["test"], p["test"])                       # fixed
    need(DATA / "avletters_lips.npz")
    av = load_dataset("avletters", data_dir=DATA)
    assert av.frames.shape == (780, 16, 64, 64) and av.frames.dtype == np.uint8
    q = split(av)
    assert not set(av.groups[q["train"]]) & set(av.groups[q["test"]])           # unseen speakers
    assert set(av.groups[q["test"]]) == {"Yi", "Anya"}
    need(DATA / "pixelrnn_ref" / "cambridge_test90.npz")
    cam = load_dataset("cambridge", data_dir=DATA)
    tests = np.concatenate([split(cam, fold=f)["test"] for f in range(5)])
    assert sorted(tests.tolist()) == list(range(90))                            # each clip tested once
    with pytest.raises(ValueError, match="fold"):
        split(cam, fold=5)
    every = split(cam, fold=-1)                   # the final model after CV: every clip trains
    assert every["train"].tolist() == list(range(90)) and len(every["val"]) == len(every["test"]) == 0
    with pytest.raises(ValueError, match="fold"):
        split(cam, fold=-2)


def test_even_sampling_and_augmentation():
    from pixelrnn.data import Augment, even_indices
    assert even_indices(31).tolist() == list(range(0, 31, 2))
    assert even_indices(16).tolist() == list(range(16))
    idx = even_indices(12)
    assert idx[0] == 0 and idx[-1] == 11 and np.all(np.diff(idx) >= 0)
    clip = np.random.default_rng(0).integers(0, 256, (16, 64, 64), dtype=np.uint8)
    out = Augment(max_shift=2, max_time_shift=1)(clip, np.random.default_rng(1))
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert np.array_equal(Augment(max_shift=0, max_time_shift=0)(clip, np.random.default_rng(1)), clip)


def test_mirror_augmentation_keeps_the_other_draws():
    """``hflip`` mirrors about half the clips left-right and leaves the shift and jitter draws as
    they are without it (the coin is drawn last), so runs without it are unchanged; both backends
    take the augmentation from the config."""
    from pixelrnn.data import Augment
    from pixelrnn.train import TrainConfig
    clip = np.random.default_rng(0).integers(0, 256, (16, 64, 64), dtype=np.uint8)
    mirrored = 0
    for seed in range(40):
        plain = Augment(max_shift=2, max_time_shift=1)(clip, np.random.default_rng(seed))
        out = Augment(max_shift=2, max_time_shift=1, hflip=True)(clip, np.random.default_rng(seed))
        assert out.flags.c_contiguous and out.dtype == np.uint8
        if np.array_equal(out, plain[:, :, ::-1]):
            mirrored += 1
        else:
            assert np.array_equal(out, plain), seed
    assert 10 <= mirrored <= 30      # a fair coin over 40 draws (P(outside) < 0.2%)
    only_flip = Augment(max_shift=0, max_time_shift=0, hflip=True)
    outs = [only_flip(clip, np.random.default_rng(s)) for s in range(8)]
    assert all(np.array_equal(o, clip) or np.array_equal(o, clip[:, :, ::-1]) for o in outs)
    assert TrainConfig(dataset="avletters_ms", hflip=True).augmentation() == Augment(hflip=True)
    assert TrainConfig().augmentation() == Augment()


def test_shipped_configs_are_valid():
    from pixelrnn.train import TrainConfig, load_config_file
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert files
    specs, studies, second_stages = 0, {}, []
    for f in files:
        data = load_config_file(f)
        if f.name.startswith("sweep_"):          # a `pixelrnn sweep` spec: every point is a valid config
            from pixelrnn.sweep import SweepSpec, load_spec
            template = str((data.get("base") or {}).get("init_from", ""))
            if "{seed}" in template:                # a second stage: it starts from a shipped first stage's runs
                second_stages.append((f, data, template))
                continue
            spec = load_spec(f)
            studies.setdefault(spec.out.as_posix(), []).append(spec)    # by the folder its runs go to
            points = [spec.point_config(pt, REPO / "runs") for pt in spec.points()]
            assert all(p.dataset in ("grid", "avletters", "avletters_ms", "cambridge") for p in points)
            init = {p.init_from for p in points if p.init_from}
            assert all((REPO / i).is_file() for i in init), init      # the warm start ships with the repo
            specs += 1
            continue
        cfg = TrainConfig.from_dict(data, source=str(f))
        assert cfg.dataset in ("grid", "avletters", "cambridge")
    assert specs >= 1
    for f, data, template in second_stages:
        # its init_from is <out_dir>/<config>/seed{seed}/model.pt of a shipped spec that has those seeds
        # (the runs themselves are not shipped); the rest is checked with a shipped model in its place
        m = re.fullmatch(r"(runs/sweep/[^/]+)/([^/]+)/seed\{seed\}/model\.pt", template)
        firsts = [s for s in studies.get(m[1], []) if m[2] in s.configs and set(data["seeds"]) <= set(s.seeds)] \
            if m else []
        assert firsts, (f.name, template)           # a shipped first stage writes every seed this one starts from
        base = {**data["base"], "init_from": str(REPO / "configs" / "init" / "lips_v1.pt")}
        spec = SweepSpec(study=data["study"], configs=data["configs"], seeds=data["seeds"], base=base)
        first = firsts[0].point_config((m[2], data["seeds"][0]), REPO / "runs")
        for pt in spec.points():    # the same data set and readout as the runs it starts from
            cfg = spec.point_config(pt, REPO / "runs")
            keys = ("dataset", "readout_every", "readout_bits", "readout_pool", "out_channels", "hidden_channels",
                    "decoder")
            assert [getattr(cfg, k) for k in keys] == [getattr(first, k) for k in keys], f.name


@pytest.mark.slow
def test_training_with_a_noise_calibration_file(tmp_path, grid_data):
    """A `calib noise` file replaces the three sigmas; gain and offset map reach the training forward."""
    from pixelrnn.train import train
    noise = tmp_path / "noise.json"
    offset = np.zeros((64, 64))
    offset[:, :32] = 1.5
    noise.write_text(json.dumps({"model_id": "measured-on-another-program", "noise": {
        "conv_sigma": 0.5, "gate_sigma": 0.5, "out_sigma": 1.0, "out_gain": 0.6,
        "offset_map": offset.tolist()}}))
    cfg = _cfg(tmp_path / "run", grid_data, limit=16, noise_file=str(noise))
    assert cfg.train_noise.out_gain == 0.6 and cfg.train_noise.has_offset
    report = train(config=cfg, progress=False)
    assert report["config"]["noise_file"] == str(noise)
    assert report["simulator_agrees"]


# -- issue 13: device, early stopping, the 300-epoch config ------------------------------------------
def test_device_setting_resolves_and_refuses_a_missing_gpu(tmp_path):
    from pixelrnn.train import TrainConfig
    assert TrainConfig().device == "auto" and TrainConfig().patience == 0
    auto = TrainConfig(device="auto").resolved_device()
    assert auto == ("cuda" if torch.cuda.is_available() else "cpu")
    assert TrainConfig(device="cpu").resolved_device() == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="patience must be >= 0"):
        TrainConfig(patience=-1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            TrainConfig(device="cuda").resolved_device()
        res = _cli("train", "--device", "cuda", "--out-dir", str(tmp_path / "out"))
        assert res.returncode == 2 and "no CUDA GPU" in res.stderr


def test_early_stopping_ends_the_run_and_reports(tmp_path, grid_data, monkeypatch):
    """Validation that never improves after epoch 1: patience 2 stops after epoch 3 of 6, with a report;
    a resumed stopped run trains no further."""
    from pixelrnn import train_loop
    from pixelrnn.train import train
    monkeypatch.setattr(train_loop, "evaluate_split", lambda *a, **k: (1.0, 0.5))
    cfg = _cfg(tmp_path, grid_data, limit=16, epochs=6, patience=2, schedule="plateau")
    report = train(config=cfg, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2, 3]
    assert metrics["stopped_early"] and metrics["best"]["epoch"] == 1
    assert report and (tmp_path / "report.json").exists()
    assert all(r["val_seconds"] >= 0 for r in metrics["epochs"])
    train(config=cfg, resume=True, progress=False)
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 3


def test_grid_300_config_is_the_authors_budget_with_early_stopping():
    from pixelrnn.train import TrainConfig, load_config_file
    cfg = TrainConfig.from_dict(load_config_file(REPO / "configs" / "grid_300.yaml"))
    assert cfg.dataset == "grid" and cfg.epochs == 300 and cfg.patience > 0


@pytest.mark.slow
def test_init_decoder_fine_tunes_the_whole_model_and_fold_minus_one_trains_on_every_clip(tmp_path):
    """init_decoder copies the source's decoder and input normalisation (a fine-tune); a layout the
    decoder was not trained for is a one-line error; fold -1 trains on all 90 Cambridge clips, keeps
    the last epoch and reports its training-set fit (there are no held-out clips)."""
    from pixelrnn.train_loop import train
    need(DATA / "pixelrnn_ref" / "cambridge_test90.npz")
    src_path = DATA / "pixelrnn_ref" / "pretrained" / "cam_noise.pt"
    need(src_path)
    src = load_model(src_path)
    cfg = _cfg(tmp_path / "all", str(DATA), dataset="cambridge", fold=-1, epochs=2, lr=1e-12, lr_binary=0.0, limit=0,
               init_from=str(src_path), init_decoder=True, noise_conv=0.0, noise_gate=0.0, noise_out=0.0)
    report = train(config=cfg, progress=False)
    assert report["test"] is None and report["train_fit"]["n"] == 90 and report["best_epoch"] == 2
    assert report["simulator_agrees"]
    model = load_model(tmp_path / "all" / "model.pt")
    assert model.config.input_mean == src.config.input_mean and model.config.input_std == src.config.input_std
    for name in ("fc.weight", "fc.bias", "fin_conv", "thresh3", "bn.weight", "bn.bias"):
        torch.testing.assert_close(model.state_dict()[name], src.state_dict()[name], rtol=0, atol=1e-9,
                                   msg=name)    # lr 1e-12: Adam moves nothing visibly
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert [e["val_acc"] for e in metrics["epochs"]] == [None, None]
    res = _cli("train", "--dataset", "cambridge", "--data-dir", str(DATA), "--init-from", str(src_path),
               "--init-decoder", "true", "--readout-every", "2", "--out-dir", str(tmp_path / "bad"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "has another readout layout" in res.stderr and "drop init_decoder" in res.stderr



def test_rotating_validation_is_the_split_training_uses():
    """val_split seed: the run's split (TrainConfig.split, what both training backends call) validates on
    the seed's tenth of takes 1-2 and never trains on it; the default is the fixed tenth."""
    from pixelrnn.data import load_dataset, split
    from pixelrnn.train import TrainConfig
    need(DATA / "avletters_lips.npz")
    ds = load_dataset("avletters_ms", data_dir=DATA)
    for seed, part in ((3, 3), (12, 2)):
        got = TrainConfig(dataset="avletters_ms", val_split="seed", seed=seed).split(ds)
        want = split(ds, val_part=part)
        assert all(np.array_equal(got[k], want[k]) for k in ("train", "val", "test"))
        assert not set(got["train"].tolist()) & set(got["val"].tolist())
    fixed = TrainConfig(dataset="avletters_ms", seed=3).split(ds)
    assert np.array_equal(fixed["val"], split(ds)["val"]) and not np.array_equal(fixed["val"], want["val"])
    src = {m: (REPO / "pixelrnn" / f"{m}.py").read_text() for m in ("train_loop", "larq_train")}
    assert all("cfg.split(ds)" in text and "split(ds, fold" not in text for text in src.values())
