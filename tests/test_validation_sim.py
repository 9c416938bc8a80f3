"""Validation runs the sensor stage in firmware_sim (``train_loop.predict_simulated``): it must give
what the PyTorch forward gives (``train_loop.predict``) for any readout layout and decoder head, on
real clips, noise off.

Tolerance: the predictions and the binary path are exact (the simulator is bit-exact with PyTorch);
the logits come from the same decoder on the same readout levels, so they may differ only by float32
summation order between batch sizes: 1e-5 relative to the largest logit."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import DATA, need

torch = pytest.importorskip("torch")

from pixelrnn.model import ModelConfig, PixelRNN  # noqa: E402
from pixelrnn.train_loop import predict, predict_simulated  # noqa: E402

CONFIGS = {
    "authors": {},
    "f4-2bit": {"readout_every": 4, "readout_bits": 2},
    "f2-1bit-pool2": {"readout_every": 2, "readout_bits": 1, "readout_pool": 2},
    "k2-4bit-mlp": {"readout_every": 8, "out_channels": 2, "readout_bits": 4, "decoder": "mlp",
                    "decoder_hidden": 32},
    "cnn-theta0": {"readout_every": 4, "readout_bits": 1, "decoder": "cnn", "learn_theta0": True},
}


@pytest.fixture(scope="module")
def clips():
    with np.load(need(DATA / "grid_s1_digits.npz"), allow_pickle=False) as d:
        return d["frames"][:48]


def _random_model(name: str, seed: int) -> PixelRNN:
    """A model of configuration ``name`` with random binary weights, thresholds in the range where
    every decision varies, and random decoder statistics."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PixelRNN(ModelConfig(num_classes=10, input_mean=0.45, input_std=0.25, **CONFIGS[name]))
    with torch.no_grad():
        for p in (model.conv1, model.w_fi, model.w_fh, model.w_oi, model.w_oh):
            p.uniform_(-1, 1)
        model.thresh1.fill_(float(rng.uniform(2, 10)))
        model.rnn_threshold.fill_(float(rng.uniform(-4, 4)))
        model.theta0.fill_(float(rng.uniform(-0.3, 0.3)))
        for name, p in model.named_parameters():
            if name.startswith(("head.", "fc.")):
                p.normal_(0, 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_simulated_validation_equals_the_pytorch_forward(name, clips):
    for seed in (0, 1):
        model = _random_model(name, seed)
        torch_logits, torch_preds = predict(model, clips)
        sim_logits, sim_preds = predict_simulated(model, clips, chunk=20)     # chunks that cut the batch
        assert sim_logits.shape == torch_logits.shape == (len(clips), 10)
        np.testing.assert_array_equal(sim_preds, torch_preds)
        scale = float(np.abs(torch_logits).max())
        np.testing.assert_allclose(sim_logits, torch_logits, rtol=0, atol=1e-5 * max(scale, 1.0))
        # the clips' logits differ: the readouts reach the decoder (else the test would prove little)
        assert np.ptp(torch_logits, axis=0).max() > 1e-2


def test_an_analog_readout_model_is_validated_by_the_pytorch_forward(clips):
    """readout_8bit off: the decoder reads the analog o, which no sensor sends; the PyTorch forward runs."""
    model = _random_model("authors", 3)
    model.config.readout_8bit = False
    np.testing.assert_array_equal(predict_simulated(model, clips)[0], predict(model, clips)[0])
