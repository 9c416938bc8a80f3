"""Hidden channels in the model, training and exports (issue 12): H binary hidden maps.

The PyTorch model with H gated chains equals firmware_sim on every binary state and readout level
(property-based over H, K, readout layouts and thresholds; record=True and the fused path), its
gradients reach every chain (and equal the step-by-step graph's), a few optimizer steps on real
GRID clips move every chain, ``pixelrnn train --hidden-channels 2`` runs end to end with the
simulator agreeing, checkpoints keep H (old ones load as H = 1), ONNX (and TFLite/LCE for other
readout layouts) export H > 1 bit-exactly, SCAMP-5 text and the Keras/Larq twin refuse it in one
line, and the camera loop runs an H > 1 bundle. The simulator-only checks are in
tests/test_hidden_channels_sim.py (base install).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from conftest import DATA, REPO, decode_video, need  # noqa: E402
from core.errors import InputError  # noqa: E402
from firmware_sim import fast, packed  # noqa: E402
from firmware_sim.encoding import encode_binary  # noqa: E402
from firmware_sim.noise import NoiseModel  # noqa: E402
from firmware_sim.program import max_hidden, run_clips_instruction  # noqa: E402
from pixelrnn.model import ModelConfig, PixelRNN, draw_noise  # noqa: E402

BINARY = packed.PACKED_STAGES
CLASSES = ["a", "b", "c"]
NOISE = NoiseModel(conv_sigma=0.6, gate_sigma=0.6, out_sigma=1.0)


def make_model(seed: int, *, hidden: int, t: int = 6, every: int = 0, k: int = 1, bits: int = 8, pool: int = 1,
               decoder: str = "authors", **kw) -> PixelRNN:
    """A random PixelRNN (eval mode) whose thresholds let both signs of every decision occur."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ModelConfig(num_classes=len(CLASSES), classes=list(CLASSES), timesteps=t, readout_every=every,
                         out_channels=k, readout_bits=bits, readout_pool=pool, decoder=decoder, decoder_hidden=32,
                         hidden_channels=hidden, **kw)
    model = PixelRNN(config)
    with torch.no_grad():
        model.thresh1.fill_(float(rng.uniform(0, 3)))
        if config.gate_threshold:
            model.rnn_threshold.copy_(torch.from_numpy(rng.uniform(-4, 4, hidden)).float())
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model.eval()


def binary_clips(rng, n: int, t: int) -> torch.Tensor:
    """+-1 clips: random pixels, and 8x8 blocks (big sums: the upper levels and |o| > 25.6 occur)."""
    a = np.where(rng.random((n, t, 64, 64)) < 0.5, -1.0, 1.0)
    low = np.where(rng.random((n, t, 8, 8)) < 0.5, -1.0, 1.0)
    b = np.repeat(np.repeat(low, 8, axis=2), 8, axis=3)
    return torch.from_numpy(np.concatenate([a, b]).astype(np.float32))


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text.strip(), text
    return text


# -- configuration ----------------------------------------------------------------------------------
def test_config_validates_hidden_channels_in_one_line():
    for bad, message in ((0, "positive integer"), (True, "positive integer"), (2.0, "positive integer")):
        with pytest.raises(ValueError, match=message) as info:
            ModelConfig(hidden_channels=bad)
        one_line(info)
    top = max_hidden(ModelConfig().layout)
    ModelConfig(hidden_channels=top)
    with pytest.raises(ValueError, match="digital registers, a SCAMP-5 element has 14") as info:
        ModelConfig(hidden_channels=top + 1)
    assert f"at most {top} hidden channels" in one_line(info)
    from pixelrnn.train_config import TrainConfig

    assert TrainConfig(hidden_channels=3).hidden_channels == 3
    for bad in (0, top + 1, "2"):
        with pytest.raises(InputError, match="hidden_channels") as info:
            TrainConfig.from_dict({"hidden_channels": bad})
        one_line(info)
    # the command line: --hidden-channels next to --out-channels
    import argparse

    from pixelrnn.train import add_train_args, config_from_args

    parser = add_train_args(argparse.ArgumentParser())
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings]
    assert flags.index("--hidden-channels") == flags.index("--out-channels") + 1
    assert config_from_args(parser.parse_args(["--hidden-channels", "2"])).hidden_channels == 2


def test_parameter_shapes_and_names():
    one = PixelRNN(ModelConfig(out_channels=3))
    shapes = {n: tuple(p.shape) for n, p in one.state_dict().items()}
    assert shapes["w_fi"] == shapes["w_fh"] == (1, 1, 5, 5) and shapes["rnn_threshold"] == (1,)
    assert shapes["w_oi"] == shapes["w_oh"] == (3, 1, 5, 5)
    three = PixelRNN(ModelConfig(out_channels=3, hidden_channels=3))
    assert set(three.state_dict()) == set(one.state_dict())
    shapes3 = {n: tuple(p.shape) for n, p in three.state_dict().items()}
    assert shapes3["w_fi"] == shapes3["w_fh"] == (3, 1, 5, 5) and shapes3["rnn_threshold"] == (3,)
    assert shapes3["w_oi"] == (3, 1, 5, 5) and shapes3["w_oh"] == (3, 3, 5, 5)
    # the same seed draws the same H = 1 model whether hidden_channels is said or not
    torch.manual_seed(4)
    a = PixelRNN(ModelConfig())
    torch.manual_seed(4)
    b = PixelRNN(ModelConfig(hidden_channels=1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.sensor_weights().to_npz_dict().keys() == b.sensor_weights().to_npz_dict().keys()


# -- parity with firmware_sim --------------------------------------------------------------------------
@st.composite
def model_configs(draw):
    t = draw(st.sampled_from([4, 6]))
    every = draw(st.sampled_from([e for e in (0, 2, 3) if t % max(e, 1) == 0]))    # 0: the last frame only
    return dict(hidden=draw(st.integers(1, 3)), t=t, every=every,
                k=draw(st.integers(1, 2)), bits=draw(st.sampled_from([1, 2, 4, 8])),
                pool=draw(st.sampled_from([1, 2, 4])), gate_threshold=draw(st.booleans()))


@settings(max_examples=14, deadline=None)
@given(spec=model_configs(), seed=st.integers(0, 2**31 - 1))
def test_model_equals_firmware_sim_on_states_and_readouts(spec, seed):
    model = make_model(seed % 1000, **spec)
    hidden, t = spec["hidden"], spec["t"]
    x = binary_clips(np.random.default_rng(seed), 1, t)
    with torch.no_grad():
        out, rec = model.sensor(x, record=True)
        fused, _ = model.sensor(x)
    assert torch.equal(out, fused)                         # the fused recurrence, once per chain
    levels = model.readout_levels(out)
    weights = model.sensor_weights()
    assert weights.hidden == hidden and weights.layout == model.config.layout
    xi = x.numpy().astype(np.int8)
    want = fast.run_clips(xi, weights, stages=BINARY)
    assert np.array_equal(levels, want.readout)
    states = (len(x), t, 64, 64) if hidden == 1 else (len(x), t, hidden, 64, 64)
    for name, stage in (("hidden", "4_hidden"), ("gate", "7_forget_gate_x")):
        assert tuple(rec[name].shape) == states
        assert np.array_equal(encode_binary(rec[name].numpy().astype(np.int8)), want.stages[stage]), name
    assert np.array_equal(encode_binary(rec["x"].numpy().astype(np.int8)), want.stages["3_thresholded_quantized"])
    for got in (packed.run_clips(xi, weights, stages=BINARY), run_clips_instruction(xi, weights, stages=BINARY)):
        assert np.array_equal(got.readout, want.readout)
        for stage in BINARY:
            assert np.array_equal(got.stages[stage], want.stages[stage]), stage
    stream = packed.PackedStream(weights)
    for clip, expected in zip(xi, want.readout):
        for frame in clip:
            got = stream.push(frame)
        assert np.array_equal(got, expected)


def test_noise_draws_put_chain_zero_first_and_the_fused_path_equals_the_record_path():
    gens = lambda: [torch.Generator().manual_seed(70 + i) for i in range(2)]  # noqa: E731
    one = draw_noise(NOISE, 2, 6, gens(), 64, 1)
    three = draw_noise(NOISE, 2, 6, gens(), 64, 1, hidden=3)
    assert three["gate"].shape == (2, 3 * 6 * 64 * 64)
    assert torch.equal(three["conv"], one["conv"])
    assert torch.equal(three["gate"][:, :6 * 64 * 64], one["gate"])         # chain 0's T frames first
    model = make_model(3, hidden=3, t=6, every=3, k=2, noise_conv=0.6, noise_gate=0.6, noise_out=1.0).train()
    x = binary_clips(np.random.default_rng(3), 1, 6)
    with torch.no_grad():
        a, _ = model.sensor(x, generators=gens())
        b, rec = model.sensor(x, generators=gens(), record=True)
        quiet, _ = model.sensor(x, noise=NoiseModel.off())
    assert torch.equal(a, b) and not torch.equal(a, quiet)
    with pytest.raises(ValueError, match="hidden=3") as info:
        model.sensor(x, draws=draw_noise(NOISE, 2, 6, gens(), 64, 4))
    one_line(info)


def test_gradients_reach_every_chain_and_equal_the_step_by_step_graph():
    model = make_model(5, hidden=3, t=6, every=2, k=2, noise_conv=0.6, noise_gate=0.6, noise_out=1.0).train()
    with torch.no_grad():
        model.thresh1.fill_(1.5)
        model.rnn_threshold.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    x = binary_clips(np.random.default_rng(5), 2, 6)
    labels = torch.arange(len(x)) % len(CLASSES)
    gens = lambda: [torch.Generator().manual_seed(90 + i) for i in range(len(x))]  # noqa: E731
    grads = []
    for record in (False, True):
        model.zero_grad()
        out, _ = model.sensor(x, generators=gens(), record=record)
        F.cross_entropy(model.decode(model.readout(out)), labels).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    fused, step = grads
    for name in ("w_fi", "w_fh", "rnn_threshold", "w_oh", "w_oi", "conv1", "thresh1"):
        assert torch.isfinite(fused[name]).all(), name
        scale = float(step[name].abs().max())
        assert float((fused[name] - step[name]).abs().max()) <= 1e-4 * max(scale, 1e-12), name
    for j in range(3):          # every chain's kernels and threshold get a gradient
        for name, g in (("w_fi", fused["w_fi"][j]), ("w_fh", fused["w_fh"][j]),
                        ("rnn_threshold", fused["rnn_threshold"][j]), ("w_oh", fused["w_oh"][:, j])):
            assert float(g.abs().max()) > 0, (name, j)


def test_a_warm_start_from_one_map_starts_the_chains_apart():
    """init_from a one-map checkpoint: chain 0 is the checkpoint's gate, the other chains flip ~30% of
    its latent signs (identical chains would get identical gradients and never part); the output
    kernels' chain columns differ the same way; H = 1 is an exact copy with no random draws."""
    from pixelrnn.train_loop import init_sensor_from

    src = make_model(11, hidden=1, t=6)
    one = make_model(12, hidden=1, t=6)
    torch.manual_seed(3)
    init_sensor_from(one, src)
    after_one = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after_one, torch.rand(1))          # H = 1 drew nothing
    for name in ("conv1", "thresh1", "w_fi", "w_fh", "w_oi", "w_oh", "rnn_threshold", "theta0"):
        assert torch.equal(getattr(one, name), getattr(src, name)), name
    three = make_model(13, hidden=3, t=6, k=2)
    torch.manual_seed(3)
    init_sensor_from(three, src)
    sign = lambda w: torch.sign(w.detach())  # noqa: E731
    for name in ("w_fi", "w_fh"):
        w = getattr(three, name).detach()
        assert torch.equal(w[0], src.state_dict()[name][0]), name
        for j in (1, 2):
            assert torch.equal(w[j].abs(), w[0].abs()), (name, j)          # the same magnitudes
            flipped = float((sign(w[j]) != sign(w[0])).float().mean())
            assert 0.08 <= flipped <= 0.6, (name, j, flipped)              # 30% of 25 signs, drawn
        assert not torch.equal(w[1], w[2]), name
    assert torch.equal(three.rnn_threshold.detach(), src.rnn_threshold.detach().expand(3))
    w_oh = three.w_oh.detach()
    assert torch.equal(w_oh[0, 0], src.w_oh.detach()[0, 0])
    assert not torch.equal(w_oh[0, 1], w_oh[0, 0]) and not torch.equal(w_oh[1, 0], w_oh[0, 0])
    # apart in what they compute: the chains' hidden states differ on the same clips
    x = binary_clips(np.random.default_rng(1), 1, 6)
    with torch.no_grad():
        three.thresh1.fill_(1.5)
        _, rec = three.sensor(x, record=True)
    hid = rec["hidden"][0]                                                 # (T, H, 64, 64)
    assert not torch.equal(hid[:, 1], hid[:, 0]) and not torch.equal(hid[:, 2], hid[:, 0])
    # from a checkpoint with two maps: both are copied as they are, and only a third one is spread
    two = make_model(14, hidden=2, t=6)
    again = make_model(15, hidden=2, t=6)
    torch.manual_seed(3)
    init_sensor_from(again, two)
    assert torch.equal(torch.rand(1), after_one)                            # no draws
    for name in ("w_fi", "w_fh", "w_oh", "rnn_threshold"):
        assert torch.equal(getattr(again, name), getattr(two, name)), name
    more = make_model(16, hidden=3, t=6)
    init_sensor_from(more, two)
    for name in ("w_fi", "w_fh"):
        assert torch.equal(getattr(more, name).detach()[:2], getattr(two, name).detach()), name
        assert torch.equal(getattr(more, name).detach()[2].abs(), getattr(two, name).detach()[0].abs()), name
    assert torch.equal(more.w_oh.detach()[:, :2], two.w_oh.detach())
    assert more.rnn_threshold.tolist() == two.rnn_threshold.tolist() + two.rnn_threshold.tolist()[:1]


@pytest.fixture(scope="module")
def grid_clips():
    with np.load(need(DATA / "grid_s1_digits.npz"), allow_pickle=False) as data:
        return data["frames"][:48], data["labels"][:48]


@pytest.mark.slow
def test_a_few_steps_on_real_grid_clips_train_every_chain(grid_clips):
    frames, labels = grid_clips
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=10, hidden_channels=2, noise_conv=0.6, noise_gate=0.6,
                                 noise_out=1.0, learn_theta0=True)).train()
    with torch.no_grad():
        model.thresh1.fill_(1.5)
    latent = {n: p.detach().clone() for n, p in model.named_parameters() if n in model.LATENT}
    thr0 = model.rnn_threshold.detach().clone()
    binary_names = set(model.LATENT)
    opt = torch.optim.Adam([{"params": [p for n, p in model.named_parameters() if n in binary_names], "lr": 0.05},
                            {"params": [p for n, p in model.named_parameters() if n not in binary_names],
                             "lr": 2e-3}])
    x, y = torch.from_numpy(frames[:16]), torch.from_numpy(labels[:16]).long()
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(x))]  # noqa: E731
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(model(x, generators=gens()), y)
        loss.backward()
        for p in model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        opt.step()
        model.clip_latent_()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]           # the same clips and noise: the loss goes down
    for j in range(2):                      # and every chain moved
        assert not torch.equal(model.w_fi.detach()[j], latent["w_fi"][j]), j
        assert not torch.equal(model.w_fh.detach()[j], latent["w_fh"][j]), j
        assert not torch.equal(model.w_oh.detach()[:, j], latent["w_oh"][:, j]), j
        assert float(model.rnn_threshold.detach()[j]) != float(thr0[j]), j


@pytest.mark.slow
def test_train_command_with_two_hidden_channels_agrees_with_the_simulator(tmp_path):
    need(DATA / "grid_s1_digits.npz")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pixelrnn.cli", "train", "--dataset", "grid", "--data-dir", str(DATA),
                           "--hidden-channels", "2", "--epochs", "1", "--limit", "32", "--batch-size", "16",
                           "--threads", "1", "--no-progress", "--out-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "simulator agrees: True" in proc.stdout.strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    assert report["simulator_agrees"] and report["readout_bytes_equal"]
    assert report["config"]["hidden_channels"] == 2
    from pixelrnn.checkpoint import load_model

    model = load_model(out / "model.pt")
    assert model.config.hidden_channels == 2 and tuple(model.w_oh.shape) == (1, 2, 5, 5)


# -- checkpoints -----------------------------------------------------------------------------------------
def test_checkpoints_keep_hidden_channels_and_old_ones_load_as_one(tmp_path):
    from pixelrnn.checkpoint import load_model, save_checkpoint

    model = make_model(1, hidden=2)
    loaded = load_model(save_checkpoint(model, tmp_path / "h2.pt"))
    assert loaded.config.hidden_channels == 2
    assert loaded.sensor_weights().program_hash() == model.sensor_weights().program_hash()
    old = make_model(2, hidden=1)
    path = save_checkpoint(old, tmp_path / "old.pt")
    data = torch.load(path, weights_only=True)
    del data["config"]["hidden_channels"]          # a checkpoint from before hidden channels
    torch.save(data, path)
    again = load_model(path)
    assert again.config.hidden_channels == 1
    assert again.sensor_weights().program_hash() == old.sensor_weights().program_hash()


# -- exports ----------------------------------------------------------------------------------------------
def _session(proto):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _gray_clips(seed: int, t: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (t, 8, 8), dtype=np.uint8)
    return np.stack([rng.integers(0, 256, (t, 64, 64), dtype=np.uint8),
                     np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)])


@settings(max_examples=6, deadline=None)
@given(spec=model_configs(), seed=st.integers(0, 2**31 - 1), decoder=st.sampled_from(["authors", "mlp"]))
def test_onnx_reads_out_firmware_sims_levels_for_any_hidden_channels(spec, seed, decoder):
    pytest.importorskip("onnx")
    from export.onnx_export import build_models
    from firmware_sim.simulate import simulate

    model = make_model(seed % 1000, decoder=decoder, **spec)
    frames = _gray_clips(seed, spec["t"])
    models = build_models(model=model)
    want = simulate(weights=model.sensor_weights(), frames=frames, stages=()).readout
    sensor, full = _session(models["sensor.onnx"]), _session(models["pixelrnn.onnx"])
    got = np.stack([sensor.run(None, {"frames": c[None]})[0][0] for c in frames])
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    logits = np.stack([full.run(None, {"frames": c[None]})[0][0] for c in frames])
    with torch.no_grad():
        expected = model(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_one_hidden_map_exports_the_graphs_and_arrays_it_always_did():
    """The authors'-layout bundle made before hidden channels existed (tests/fixtures/authors_bundle):
    its sensor program, read back and exported again, gives its sensor.onnx byte for byte and its
    sensor_weights.npz arrays byte for byte; the hidden maps' metadata appears only for H > 1."""
    pytest.importorskip("onnx")
    import io
    import zipfile

    from export.onnx_export import build_models, model_metadata, sensor_model
    from firmware_sim.weights import SensorWeights

    fixture = REPO / "tests" / "fixtures" / "authors_bundle" / "gesture"
    manifest = json.loads((fixture / "manifest.json").read_text())
    with np.load(fixture / "sensor_weights.npz", allow_pickle=False) as data:
        sensor = SensorWeights.from_npz_dict(data)
    assert sensor.hidden == 1 and sensor.program_hash() == manifest["sensor_program_hash"]
    proto = sensor_model(sensor=sensor, metadata=model_metadata(sensor=sensor, classes=manifest["classes"],
                                                                task=manifest["task"]))
    assert proto.SerializeToString() == (fixture / "sensor.onnx").read_bytes()
    with zipfile.ZipFile(fixture / "sensor_weights.npz") as stored:
        arrays = sensor.to_npz_dict()
        assert sorted(f"{k}.npy" for k in arrays) == sorted(stored.namelist())
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, value)
            assert buf.getvalue() == stored.read(f"{key}.npy"), key
    for hidden in (1, 2):
        meta = {p.key: p.value for p in build_models(model=make_model(7, hidden=hidden))["sensor.onnx"].metadata_props}
        assert meta.get("hidden_channels") == (None if hidden == 1 else "2")


def _export_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixelrnn.cli", "export", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def h2_checkpoint(tmp_path_factory):
    from pixelrnn.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("h2")
    model = make_model(11, hidden=2, t=16)
    return model, save_checkpoint(model, root / "h2.pt")


def test_export_writes_an_onnx_bundle_and_refuses_scamp5_in_one_line(h2_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    from core.bundle import verify_bundle
    from export.api import export_model
    from firmware_sim.weights import SensorWeights

    model, ckpt = h2_checkpoint
    result = export_model(weights=ckpt, out=tmp_path / "bundle", formats="onnx")
    assert {"sensor.onnx", "host.onnx", "pixelrnn.onnx", "sensor_weights.npz"} <= set(result.files)
    manifest = verify_bundle(tmp_path / "bundle")
    with np.load(tmp_path / "bundle" / "sensor_weights.npz", allow_pickle=False) as data:
        sensor = SensorWeights.from_npz_dict(data)
    assert sensor.hidden == 2 and sensor.program_hash() == manifest["sensor_program_hash"]
    proc = _export_cli("--weights", str(ckpt), "--out", str(tmp_path / "s"), "--format", "scamp5")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "hidden_channels=2" in lines[0] and "--format onnx" in lines[0]
    assert not (tmp_path / "s").exists()


def test_all_formats_skip_scamp5_with_its_reason():
    """--format all on the authors' readout with two hidden maps plans every format that can express
    it and names scamp5 under ``skipped``; named alone, scamp5 is the one-line refusal above."""
    from core.readout_layout import ReadoutLayout
    from export.api import FORMATS, layout_plan

    authors = ReadoutLayout()
    assert layout_plan(authors, FORMATS, asked_all=True, hidden=1) == (FORMATS, {})
    chosen, skipped = layout_plan(authors, FORMATS, asked_all=True, hidden=2)
    assert "scamp5" not in chosen and {"onnx", "tflite", "lce"} <= set(chosen)
    assert set(skipped) == {"scamp5"} and "hidden_channels=2" in skipped["scamp5"]
    with pytest.raises(InputError, match="hidden_channels=2") as info:
        layout_plan(authors, ("onnx", "scamp5"), asked_all=False, hidden=2)
    one_line(info)


@pytest.mark.larq
@pytest.mark.slow
def test_tflite_of_the_authors_readout_with_two_hidden_maps_is_exact(h2_checkpoint, tmp_path):
    """The authors' readout and head with H = 2 cannot go through the Keras/Larq twin (one hidden
    map): it is built from the numpy parameters instead (export.tflite_layout), and matches PyTorch."""
    pytest.importorskip("larq")
    from export.tflite import run_tflite

    model, ckpt = h2_checkpoint
    proc = _export_cli("--weights", str(ckpt), "--out", str(tmp_path / "t"), "--format", "tflite,lce")
    assert proc.returncode == 0, proc.stderr
    frames = _gray_clips(11, 16)
    with torch.no_grad():
        want = model(torch.from_numpy(frames)).numpy()
    for name, runtime in (("pixelrnn.tflite", "ai-edge-litert"), ("pixelrnn_lce.tflite", "lce")):
        got = run_tflite(tmp_path / "t" / name, frames, runtime=runtime)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)       # float32 decoder, summation order
        assert np.array_equal(got.argmax(1), want.argmax(1))


def test_calibration_to_the_real_sensor_refuses_several_hidden_maps():
    """The real SCAMP-5 readouts come from the authors' one-hidden-map program."""
    from calib.layout import require_authors_readout
    from core.readout_layout import ReadoutLayout

    require_authors_readout(ReadoutLayout(), "calib noise", hidden=1)
    with pytest.raises(InputError, match="hidden_channels=2") as info:
        require_authors_readout(ReadoutLayout(), "calib noise", hidden=2)
    one_line(info)


@pytest.mark.larq
@pytest.mark.slow
def test_tflite_and_lce_of_another_layout_are_exact(tmp_path):
    pytest.importorskip("larq")
    from export.api import export_model
    from export.tflite import run_tflite
    from pixelrnn.checkpoint import save_checkpoint

    model = make_model(13, hidden=2, t=8, every=4, k=2, bits=2, pool=2, decoder="mlp")
    ckpt = save_checkpoint(model, tmp_path / "m.pt")
    export_model(weights=ckpt, out=tmp_path / "b", formats=["onnx", "tflite", "lce"])
    frames = _gray_clips(13, 8)
    with torch.no_grad():
        want = model(torch.from_numpy(frames)).numpy()
    for name, runtime in (("pixelrnn.tflite", "ai-edge-litert"), ("pixelrnn_lce.tflite", "lce")):
        got = run_tflite(tmp_path / "b" / name, frames, runtime=runtime)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
        assert np.array_equal(got.argmax(1), want.argmax(1))
    from export.tflite_layout import sensor_tflite
    from firmware_sim.simulate import simulate

    sensor = model.sensor_weights()
    path = tmp_path / "sensor.tflite"
    path.write_bytes(sensor_tflite(sensor))
    from ai_edge_litert.interpreter import Interpreter

    levels = []
    for clip in frames:
        interp = Interpreter(model_path=str(path))
        interp.resize_tensor_input(interp.get_input_details()[0]["index"], (1, *clip.shape))
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], clip[None])
        interp.invoke()
        levels.append(interp.get_tensor(interp.get_output_details()[0]["index"])[0])
    assert np.array_equal(np.stack(levels).astype(np.uint8),
                          simulate(weights=sensor, frames=frames, stages=()).readout)


def test_the_larq_twin_refuses_several_hidden_maps():
    pytest.importorskip("larq")
    from pixelrnn.larq_twin import make_keras_model

    with pytest.raises(InputError, match="hidden_channels=2") as info:
        make_keras_model(ModelConfig(hidden_channels=2))
    one_line(info)


# -- the camera loop ------------------------------------------------------------------------------------------
def test_camera_loop_runs_a_bundle_of_two_hidden_maps_on_a_real_video(h2_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    from edge import CameraLoop
    from edge.roi import make_roi
    from edge.sensor_stage import Preprocessor
    from export.api import export_model

    frames = decode_video(need(DATA / "videos" / "grid_s1_bbaf2n.mpg"))
    model, ckpt = h2_checkpoint
    export_model(weights=ckpt, out=tmp_path / "bundle", formats="onnx")
    with CameraLoop.create_from_bundle(tmp_path / "bundle", task="gesture") as loop:
        decisions = [d for d in (loop.process_frame(f) for f in frames) if d is not None]
    windows = len(frames) // 16
    assert windows >= 2 and len(decisions) == windows
    pre = Preprocessor(make_roi(loop.roi), size=64)
    images = np.stack([pre(f) for f in frames[:windows * 16]]).reshape(windows, 16, 64, 64)
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.array([d.logits for d in decisions]), want, rtol=0, atol=1e-4)
