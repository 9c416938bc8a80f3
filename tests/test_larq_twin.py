"""The Keras/Larq twin equals the PyTorch model, weights survive PyTorch -> twin -> PyTorch, Larq trains."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # Larq needs Keras 2; set before TensorFlow loads
try:  # tflite-runtime must be loaded before TensorFlow to work in-process (see export.tflite)
    import tflite_runtime.interpreter  # noqa: F401
except ImportError:
    pass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("larq")

pytestmark = pytest.mark.larq

from conftest import DATA, need  # noqa: E402
from core.errors import InputError  # noqa: E402
from pixelrnn.larq_twin import (  # noqa: E402
    TanhMx,
    build_twin,
    exact_gray_threshold,
    make_keras_model,
    torch_from_twin,
    twin_to_state_dict,
)
from pixelrnn.model import ModelConfig, PixelRNN  # noqa: E402


def _random_model(seed: int, *, timesteps: int = 4, ties: bool = False) -> PixelRNN:
    torch.manual_seed(seed)
    model = PixelRNN(ModelConfig(num_classes=3, timesteps=timesteps, learn_theta0=True))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if ties:  # integer thresholds: pre-activations hit them exactly, sign(0) = +1 decides
            model.thresh1.fill_(1.0)
            model.rnn_threshold.fill_(-1.0)
        else:
            model.thresh1.uniform_(-0.5, 3.0, generator=gen)
            model.rnn_threshold.uniform_(-3.0, 3.0, generator=gen)
        model.theta0.uniform_(-0.5, 0.5, generator=gen)
        model.bn.running_mean.normal_(generator=gen)
        model.bn.running_var.uniform_(0.5, 50, generator=gen)
        model.bn.num_batches_tracked.fill_(1234)
        model.thresh3.uniform_(-0.5, 0.5, generator=gen)
    return model.eval()


def test_larq_ste_sign_maps_zero_to_plus_one():
    import larq as lq
    import tensorflow as tf

    x = tf.constant([-1.0, -0.0, 0.0, 1e-30, -1e-30, 2.0])
    assert lq.quantizers.ste_sign(x).numpy().tolist() == [-1, 1, 1, 1, -1, 1]
    assert TanhMx(2.0)(x).numpy().tolist() == [-1, 1, 1, 1, -1, 1]


def test_tanh_mx_gradient_matches_pytorch():
    import tensorflow as tf

    from pixelrnn.quantizers import get_quantizer

    values = np.linspace(-2, 2, 41, dtype=np.float32)
    x = tf.Variable(values)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(TanhMx(2.0)(x))
    g_tf = tape.gradient(y, x).numpy()
    xt = torch.from_numpy(values).requires_grad_()
    get_quantizer("tanh_mx", m=2.0)(xt).sum().backward()
    # 1 - tanh^2 cancels near |x| = 2: the two libraries' tanh differ by an ulp or two there
    np.testing.assert_allclose(g_tf, xt.grad.numpy(), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_gives_identical_weights(seed):
    model = _random_model(seed)
    back = torch_from_twin(build_twin(model=model), config=model.config)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def test_round_trip_authors_models(authors_models):
    for model in authors_models.values():
        state = twin_to_state_dict(build_twin(model=model), config=model.config)
        back = torch_from_twin(build_twin(model=model), config=model.config)
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
            assert torch.equal(value, back.state_dict()[key]), key


def test_host_twin_holds_decoder_only():
    model = _random_model(3)
    state = twin_to_state_dict(build_twin(model=model, include_sensor=False), config=model.config)
    assert set(state) == {"fin_conv", "thresh3", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                          "bn.num_batches_tracked", "fc.weight", "fc.bias"}
    with pytest.raises(InputError, match="full twin"):
        torch_from_twin(build_twin(model=model, include_sensor=False), config=model.config)


@pytest.mark.parametrize("seed,ties", [(10, False), (11, True), (12, True)])
def test_twin_forward_equals_pytorch(seed, ties):
    model = _random_model(seed, ties=ties)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(3, 4, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        expected = model(torch.from_numpy(frames)).numpy()
        readout = model.readout(model.sensor(model.binarize_input(torch.from_numpy(frames)))[0])[:, 0]
        host_expected = model.decode(readout).numpy()
    for twin in (build_twin(model=model), build_twin(model=model, bitpacked=True)):
        got = twin(frames, training=False).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    host = build_twin(model=model, include_sensor=False)
    np.testing.assert_allclose(host(readout.numpy().astype(np.uint8), training=False).numpy(), host_expected,
                               rtol=0, atol=1e-4)
    # the training twin (normalisation in float32, no gray threshold) agrees too
    train_twin = make_keras_model(model.config)
    train_twin.set_weights(build_twin(model=model).get_weights())
    np.testing.assert_allclose(train_twin(frames, training=False).numpy(), expected, rtol=0, atol=1e-4)


def test_gray_threshold_reproduces_pytorch_binarization_on_every_level():
    for seed in range(5):
        model = _random_model(seed)
        levels = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
        with torch.no_grad():
            expected = (model.binarize_input(levels) > 0).flatten().numpy()
        assert np.array_equal(np.arange(256) >= np.float32(exact_gray_threshold(model)), expected)


def test_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match="PixelRNN"):
        build_twin(model="weights.pt")
    with pytest.raises(InputError, match="input_dtype"):
        build_twin(model=_random_model(0), input_dtype="int16")
    with pytest.raises(InputError, match="ModelConfig"):
        twin_to_state_dict(build_twin(model=_random_model(0)), config={"num_classes": 3})


@pytest.mark.slow
def test_short_larq_training_on_grid_moves_the_loss_down(tmp_path):
    from pixelrnn.checkpoint import load_model
    from pixelrnn.larq_train import train_larq
    from pixelrnn.train import TrainConfig

    need(DATA / "grid_s1_digits.npz")
    cfg = TrainConfig(dataset="grid", data_dir=str(DATA), limit=64, batch_size=16, epochs=3, seed=0,
                      out_dir=str(tmp_path / "run"))
    report = train_larq(config=cfg, progress=False)
    history = report["history"]
    assert len(history) == 3 and all(np.isfinite(history))
    assert history[-1] < history[0], history
    assert 0.0 <= report["test_accuracy"] <= 1.0
    model = load_model(tmp_path / "run" / "model.pt")
    assert isinstance(model, PixelRNN) and model.config.num_classes == 10
    with pytest.raises(InputError, match="already holds"):
        train_larq(config=cfg, progress=False)
