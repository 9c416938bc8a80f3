"""The generalised readout in the PyTorch model (core.readout_layout): shapes, the fused recurrence's
gradient for several readout frames against the step-by-step autograd graph, the quantizer's
straight-through gradient, and the authors' layout unchanged."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.readout_layout import ReadoutLayout  # noqa: E402
from pixelrnn.model import ModelConfig, PixelRNN  # noqa: E402

LAYOUTS = [dict(readout_every=4, out_channels=2, readout_bits=8, readout_pool=1),
           dict(readout_every=2, out_channels=1, readout_bits=1, readout_pool=2),
           dict(readout_every=8, out_channels=3, readout_bits=2, readout_pool=4, decoder="mlp"),
           dict(readout_every=1, out_channels=1, readout_bits=4, readout_pool=1),
           dict(readout_every=2, out_channels=1, readout_bits=1, readout_pool=2, decoder="cnn")]


def _model(seed: int, **kw) -> PixelRNN:
    torch.manual_seed(seed)
    return PixelRNN(ModelConfig(num_classes=5, timesteps=8, **kw))


@pytest.mark.parametrize("kw", LAYOUTS)
def test_shapes_follow_the_layout(kw):
    model = _model(0, **kw)
    layout = model.config.layout
    binary = torch.where(torch.rand(3, 8, 64, 64) < 0.5, -1.0, 1.0)
    out, _ = model.sensor(binary)
    assert tuple(out.shape) == (3,) + layout.shape
    levels = model.readout(out)
    assert levels.min() >= 0 and levels.max() <= layout.max_level
    assert torch.equal(levels, torch.floor(levels))
    # the torch quantizer equals the numpy definition the sensor and the host use
    assert np.array_equal(levels.detach().numpy().astype(np.uint8), layout.quantize(out.detach().double().numpy()))
    logits = model.decode(levels.detach().to(torch.uint8))
    assert logits.shape == (3, 5)
    with pytest.raises(ValueError, match="layout"):
        model.decode(torch.zeros(3, layout.maps + 1, layout.side, layout.side))


@pytest.mark.parametrize("kw", LAYOUTS[:2] + LAYOUTS[3:])
def test_fused_recurrence_gradient_equals_the_step_by_step_graph(kw):
    """record=True runs the recurrence as plain autograd; the fused path must give the same
    readout and the same gradients (to 1e-5 relative: float sums in another order)."""
    model = _model(1, **kw)
    model.eval()
    binary = torch.where(torch.rand(2, 8, 64, 64) < 0.5, -1.0, 1.0)
    weights = torch.randn(2, *model.config.layout.shape)
    grads = []
    for record in (False, True):
        model.zero_grad()
        out, _ = model.sensor(binary, record=record)
        (out * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["out"] = out.detach()
    fused, graph = grads
    assert torch.equal(fused["out"], graph["out"])
    for name in ("w_fh", "w_fi", "rnn_threshold", "w_oi", "w_oh", "conv1"):
        assert name in fused and name in graph, name
        torch.testing.assert_close(fused[name], graph[name], rtol=1e-5, atol=1e-4, msg=name)
    assert float(fused["w_fh"].abs().sum()) > 0          # the gate kernel learns from every readout


def test_low_bit_quantizer_is_straight_through_inside_its_range():
    model = _model(2, readout_bits=2, readout_every=8)
    step = model.config.layout.step
    o = torch.tensor([-3 * step, -0.5 * step, 0.0, 0.5 * step, 1.5 * step, 3 * step], requires_grad=True)
    levels = model.readout(o)
    assert levels.tolist() == [0.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    levels.sum().backward()
    assert o.grad.tolist() == [0.0, 1 / step, 1 / step, 1 / step, 1 / step, 0.0]


def test_the_authors_layout_is_the_default():
    config = ModelConfig(num_classes=3)
    assert config.layout == ReadoutLayout() and config.layout.is_authors
    model = PixelRNN(config)
    assert tuple(model.w_oi.shape) == (1, 1, 5, 5) and tuple(model.fc.weight.shape) == (3, 4096)
    assert tuple(model.fin_conv.shape) == (1, 1, 1, 1)


@pytest.mark.parametrize("bad, message", [
    (dict(readout_every=3), "must divide timesteps"),
    (dict(out_channels=9), "channels"),
    (dict(readout_bits=3), "bits"),
    (dict(readout_pool=3), "pool"),
    (dict(decoder="rnn"), "decoder"),
])
def test_bad_readout_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(num_classes=3, **bad)


def test_pytorch_equals_firmware_sim_on_random_layouts():
    """Property check over random readout layouts and random weights (seeded): the PyTorch model's
    readout levels equal firmware_sim's, on both whole-clip paths (fast: float64 numpy; packed: table
    look-ups) and on the frame-by-frame SensorStream, noise off. Exact: integer sums of +-1 products
    and every level is a floor of an exact value (pooling divides by a power of two)."""
    from firmware_sim import fast, packed

    rng = np.random.default_rng(12)
    for case in range(8):
        t = int(rng.choice([4, 8, 16]))
        every = int(rng.choice([d for d in (0, 1, 2, 4) if d == 0 or t % d == 0]))
        kw = dict(readout_every=every, out_channels=int(rng.integers(1, 4)), readout_bits=int(rng.choice([1, 2, 4, 8])),
                  readout_pool=int(rng.choice([1, 2, 4])), timesteps=t, gate_threshold=bool(rng.integers(0, 2)))
        torch.manual_seed(case)
        model = PixelRNN(ModelConfig(num_classes=4, **kw))
        with torch.no_grad():
            model.thresh1.fill_(float(rng.uniform(0, 3)))
            model.rnn_threshold.fill_(float(rng.uniform(-3, 3)) if kw["gate_threshold"] else 0.0)
        model.eval()
        weights = model.sensor_weights()
        frames = rng.integers(0, 256, (3, t, 64, 64), dtype=np.uint8)
        with torch.no_grad():
            binary = model.binarize_input(torch.from_numpy(frames))
            want = model.readout_levels(model.sensor(binary)[0])
        bits = binary.numpy().astype(np.int8)
        for path in (fast, packed):
            got = path.run_clips(bits, weights).readout
            assert np.array_equal(got, want), (case, kw, path.__name__)
        for stream in (fast.SensorStream(weights), packed.PackedStream(weights)):
            for clip in range(2):                 # the second window: the stream was reset in between
                out = [stream.push(bits[clip, i]) for i in range(t)]
                assert all(o is None for o in out[:-1]), (case, kw, type(stream).__name__)
                assert np.array_equal(out[-1], want[clip]), (case, kw, type(stream).__name__)
