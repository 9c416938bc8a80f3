"""The PyTorch model equals firmware_sim exactly (inference, no noise), and trains like a BNN should."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from firmware_sim import fast
from firmware_sim.frontend import FrontEnd
from firmware_sim.noise import NoiseModel
from pixelrnn.model import ModelConfig, PixelRNN
from pixelrnn.quantizers import get_quantizer, sign


def _random_model(seed: int, *, integer_thresholds: bool = False, timesteps: int = 4) -> PixelRNN:
    torch.manual_seed(seed)
    model = PixelRNN(ModelConfig(num_classes=3, timesteps=timesteps, learn_theta0=True))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        if integer_thresholds:  # exercise sign(0) = +1 at exact ties
            model.thresh1.fill_(float(torch.randint(0, 3, (1,), generator=gen)))
            model.rnn_threshold.fill_(float(torch.randint(-2, 3, (1,), generator=gen)))
        else:
            model.thresh1.uniform_(-0.5, 3.0, generator=gen)
            model.rnn_threshold.uniform_(-3.0, 3.0, generator=gen)
        model.theta0.uniform_(-0.5, 0.5, generator=gen)
        model.bn.running_mean.normal_(generator=gen)
        model.bn.running_var.uniform_(0.5, 50, generator=gen)
    return model.eval()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_pytorch_model_equals_simulator_on_binary_states_and_readout(seed, ties):
    model = _random_model(seed, integer_thresholds=ties)
    rng = np.random.default_rng(seed)
    # smooth-ish random video so that thresholds and pooling see realistic structure
    frames = rng.integers(0, 256, size=(3, 4, 64, 64), dtype=np.uint8)
    weights = model.sensor_weights()
    binary = weights.frontend.binarize(frames)
    res = fast.run_clips(binary, weights, stages=fast.STAGES)
    with torch.no_grad():
        tb = model.binarize_input(torch.from_numpy(frames))
        out, rec = model.sensor(tb, record=True)
        readout = model.readout(out)[:, 0].numpy().astype(np.uint8)
        logits = model.decode(torch.from_numpy(res.readout)).numpy()
        logits_model = model(torch.from_numpy(frames)).numpy()
    assert np.array_equal(tb.numpy().astype(np.int8), binary)
    enc = lambda t: np.where(t.numpy() > 0, 255, 0).astype(np.uint8)  # noqa: E731
    assert np.array_equal(enc(rec["x"]), res.stages["3_thresholded_quantized"])
    assert np.array_equal(enc(rec["hidden"]), res.stages["4_hidden"])
    assert np.array_equal(enc(rec["gate"]), res.stages["7_forget_gate_x"])
    assert np.array_equal(readout, res.readout)
    assert np.array_equal(out[:, 0].numpy(), res.output)
    # same readout -> same logits up to float32 summation order in the (threaded) Linear layer
    np.testing.assert_allclose(logits, logits_model, rtol=0, atol=1e-5)


def test_frontend_binarization_matches_model_for_every_gray_level():
    gray = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    for mean, std, theta0 in ((0.45883, 0.22559, 0.0), (116.57 / 255, 0.2263, 0.0), (0.4, 0.3, 0.123)):
        fe = FrontEnd(mean=mean, std=std, theta0=theta0)
        model = PixelRNN(ModelConfig(input_mean=mean, input_std=std, learn_theta0=True))
        with torch.no_grad():
            model.theta0.fill_(theta0)
            theirs = model.binarize_input(torch.from_numpy(gray)).numpy().astype(np.int8)
        assert np.array_equal(fe.binarize(gray), theirs)
        # the flip happens at the documented gray level
        flip = int(np.argmax(fe.binarize(gray).ravel() > 0))
        assert flip - 1 < fe.threshold_gray <= flip + 1e-9


def test_streaming_sensor_equals_batch_path():
    model = _random_model(3, timesteps=16)
    weights = model.sensor_weights()
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(2, 16, 64, 64), dtype=np.uint8)
    binary = weights.frontend.binarize(frames)
    batch = fast.run_clips(binary, weights).readout
    from firmware_sim import packed

    for stream in (fast.SensorStream(weights), packed.PackedStream(weights)):
        outs = [r for clip in binary for f in clip if (r := stream.push(f)) is not None]
        assert len(outs) == 2
        assert np.array_equal(np.stack(outs), batch), type(stream).__name__


def test_quantizers_forward_sign_and_documented_gradients():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    for name in ("ste_sign", "tanh_mx"):
        y = get_quantizer(name, m=2.0)(x)
        assert torch.equal(y, torch.tensor([-1.0, -1, -1, 1, 1, 1, 1]))
    x.grad = None
    get_quantizer("ste_sign")(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 1, 1, 0]))
    x.grad = None
    get_quantizer("tanh_mx", m=2.0)(x).sum().backward()
    assert torch.allclose(x.grad, 2.0 * (1 - torch.tanh(2.0 * x.detach()) ** 2))
    with pytest.raises(ValueError, match="unknown quantizer"):
        get_quantizer("binary_connect")
    assert torch.equal(sign(torch.zeros(3)), torch.ones(3))


def test_latent_weights_move_and_stay_clipped():
    """Unlike the authors' code, binary weights can change sign during training (latent reals)."""
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=2, timesteps=2, quantizer="ste_sign"))
    model.train()
    frames = torch.randint(0, 256, (4, 2, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    before = model.sensor_weights()
    opt = torch.optim.Adam(model.parameters(), lr=0.2)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(frames), labels).backward()
        opt.step()
        model.clip_latent_()
    after = model.sensor_weights()
    flipped = int((before.conv1 != after.conv1).sum())
    assert flipped > 0
    for name in PixelRNN.LATENT:
        p = getattr(model, name)
        assert float(p.detach().abs().max()) <= 1.0


def test_training_noise_only_in_train_mode():
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=2, timesteps=2, noise_conv=0.6, noise_gate=0.6, noise_out=1.0))
    frames = torch.randint(0, 256, (2, 2, 64, 64), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(frames), model(frames))
        model.train()
        assert not torch.equal(model(frames), model(frames))
        # explicit noise=off overrides train mode
        off = NoiseModel.off()
        assert torch.equal(model(frames, noise=off), model(frames, noise=off))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="num_classes"):
        ModelConfig(num_classes=1)
    with pytest.raises(ValueError, match="class names"):
        ModelConfig(num_classes=3, classes=["a", "b"])
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"num_classes": 3, "hidden": 4})
    with pytest.raises(ValueError, match="noise"):
        ModelConfig(noise_gate=-1.0)


def test_fast_convolutions_equal_conv2d_exactly():
    """The GEMM form of the 5x5 convolutions (issue 13) equals F.conv2d bit for bit on +-1 data,
    and the fused conv + relu + max-pool equals the three layers."""
    from pixelrnn.model import _ConvReluPool, bconv, s2d_weight
    gen = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 2, (5, 2, 64, 64), generator=gen) * 2 - 1).float()
    w = (torch.randint(0, 2, (3, 2, 5, 5), generator=gen) * 2 - 1).float()
    assert torch.equal(bconv(x, s2d_weight(w)), torch.nn.functional.conv2d(x, w, padding=2))
    w16 = (torch.randint(0, 2, (16, 1, 5, 5), generator=gen) * 2 - 1).float()
    fused = _ConvReluPool.apply(x[:, :1].contiguous(), s2d_weight(w16), None, None, 2)
    ref = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(x[:, :1], w16, padding=2)), 4)
    assert torch.equal(fused, ref)


def test_row_phase_blocks_hold_every_tap():
    """The first layer's GEMMs run per row phase on 40 of the 64 neighbourhood columns (issue 13):
    every nonzero of s2d_weight lies in its row phase's block, and the blocks tile the phases."""
    from pixelrnn.model import _phase_major, _row_phase_blocks, s2d_weight
    w = torch.arange(1, 16 * 25 + 1, dtype=torch.float32).reshape(16, 1, 5, 5)     # no zero tap
    wp = _phase_major(s2d_weight(w), 16)
    covered = torch.zeros_like(wp, dtype=torch.bool)
    for rows, cols in _row_phase_blocks(16):
        covered[rows, cols] = True
    assert torch.equal(covered.sum(1), torch.full((256,), 40))
    assert bool((wp[~covered] == 0).all()) and int((wp[covered] != 0).sum()) == 256 * 25


@pytest.mark.parametrize("values", ["ternary", "halves"])
def test_fused_conv_pool_takes_the_first_maximum_like_max_pool2d(values):
    """The fused conv + relu + max-pool (issue 13) on inputs with many equal sums: -1/0/+1 inputs go
    through the encoded maximum (16 v + 15 - phase), +-0.5 inputs through the indexed one; both give
    the pooled values of the three layers bit for bit and send the gradient to the first maximum of
    each window, as F.max_pool2d does (float32 sums in another order: within 1e-5 of the largest)."""
    from pixelrnn.model import _ConvReluPool, s2d_weight
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-1, 2, (9, 1, 64, 64), generator=gen).float()           # many zeros: many ties
    if values == "halves":
        x = torch.where(x == 0, 1.0, x) * 0.5
    w = (torch.randint(0, 2, (16, 1, 5, 5), generator=gen) * 2 - 1).float()
    g = torch.randn(9, 16, 16, 16, generator=gen)
    grads = []
    for fused in (True, False):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = (_ConvReluPool.apply(xi, s2d_weight(wi), None, None, 4) if fused
               else F.max_pool2d(F.relu(F.conv2d(xi, wi, padding=2)), 4))
        out.backward(g)
        grads.append((out.detach(), xi.grad, wi.grad))
    (out_f, dx_f, dw_f), (out_r, dx_r, dw_r) = grads
    assert torch.equal(out_f, out_r)
    assert float((dx_f - dx_r).abs().max()) <= 1e-5 * float(dx_r.abs().max())
    assert float((dw_f - dw_r).abs().max()) <= 1e-5 * float(dw_r.abs().max())
