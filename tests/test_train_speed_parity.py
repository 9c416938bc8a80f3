"""The fast training path (issue 13) gives the results of the former implementation.

The reference below is the pre-issue-13 forward, kept verbatim as a slow function: ``F.conv2d``,
relu, ``F.max_pool2d``, the step-by-step recurrence under autograd, and one ``torch.randn`` per clip
and noise site from the clip's generator. Stated tolerance: every forward value (conv sums, pooled
values, gates, o_T, logits) and so every binary decision is bit-identical, with and without noise;
float gradients differ only by float32 summation order, within 1e-4 of each parameter's largest
gradient; after a short seeded run the binary weights (signs) and the predictions are identical and
the real-valued parameters agree within 1e-3 (Adam divides by the gradient's own size, so
rounding-level differences in tiny gradients grow to a fraction of one step; cf. the DDP test).
Each test runs on both CPU paths: the numba kernels (pixelrnn.cpu_kernels) and the PyTorch GEMMs.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from firmware_sim.encoding import IW, ZERO_LEVEL  # noqa: E402
from firmware_sim.noise import NoiseModel  # noqa: E402
from pixelrnn.model import ModelConfig, PixelRNN, to_mosaic  # noqa: E402

NOISE = NoiseModel(0.6, 0.6, 1.0)


@pytest.fixture(params=["cpu_kernels", "pytorch"])
def path(request, monkeypatch):
    """Both training paths on a CPU: the numba kernels (pixelrnn.cpu_kernels) and the PyTorch GEMMs."""
    if request.param == "pytorch":
        monkeypatch.setenv("PIXELRNN_KERNELS", "torch")
    else:
        pytest.importorskip("numba", reason="the CPU kernels need numba (the [train] extra)")
        monkeypatch.delenv("PIXELRNN_KERNELS", raising=False)
    return request.param


def _randn(like, batch, generators):
    if generators is None:
        return torch.randn_like(like)
    per_clip = like.numel() // batch
    return torch.stack([torch.randn(per_clip, generator=g, dtype=like.dtype) for g in generators]).reshape(like.shape)


def reference_forward(model: PixelRNN, frames: torch.Tensor, *, noise: NoiseModel,
                      generators=None) -> torch.Tensor:
    """The former ``PixelRNN.forward`` (slow, plain autograd), on ``model``'s parameters."""
    q = model.binarize
    binary = q(model.normalize(frames) - model.theta0)
    b, t, h, w = binary.shape
    randn = lambda like: _randn(like, b, generators)  # noqa: E731
    conv = F.conv2d(binary.reshape(b * t, 1, h, w), q(model.conv1), padding=2)
    pooled = F.max_pool2d(F.relu(conv), 4)
    pre = pooled + (randn(pooled) * noise.conv_sigma if noise.conv_sigma else 0.0)
    x = to_mosaic(q(pre - model.thresh1)).reshape(b, t, 1, h, w)
    w_i = torch.cat([q(model.w_fi), q(model.w_oi)])
    w_h = torch.cat([q(model.w_fh), q(model.w_oh)])
    xi = F.conv2d(x.reshape(b * t, 1, h, w), w_i, padding=2).reshape(b, t, 2, h, w)
    hidden = torch.ones(b, 1, h, w)
    out = None
    for step in range(t):
        hh = F.conv2d(hidden, w_h, padding=2)
        ft = xi[:, step, 0:1] + hh[:, 0:1]
        if noise.gate_sigma:
            ft = ft + randn(ft) * noise.gate_sigma
        gate = q(ft - model.rnn_threshold)
        if step == t - 1:
            out = xi[:, step, 1:2] + hh[:, 1:2]
            if noise.out_sigma:
                out = out + randn(out) * noise.out_sigma
        hidden = gate * hidden
    level = ZERO_LEVEL + IW * out
    readout = level + (torch.clamp(torch.floor(level), 0, 255) - level).detach()
    return model.decode(readout)


def _gens(ids):
    return [torch.Generator().manual_seed(1000 + int(i)) for i in ids]


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = PixelRNN(ModelConfig(num_classes=10, learn_theta0=True, noise_conv=0.6, noise_gate=0.6,
                                 noise_out=1.0, **kw))
    with torch.no_grad():
        model.thresh1.fill_(1.5)           # a threshold that lets gradients through both CNN paths
        model.theta0.fill_(0.1)
    return model


def _frames(n, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 16, 64, 64), dtype=np.uint8))


@pytest.mark.parametrize("quantizer", ["tanh_mx", "ste_sign"])
def test_forward_bit_identical_and_gradients_within_tolerance(quantizer, path):
    model = _model(quantizer=quantizer).train()
    frames, labels = _frames(6), torch.arange(6) % 10
    new = model(frames, generators=_gens(range(6)))
    ref = reference_forward(model, frames, noise=NOISE, generators=_gens(range(6)))
    assert torch.equal(new, ref)                   # noise on: same draws, same decisions, same logits
    grads = []
    for logits in (new, ref):
        model.zero_grad()
        F.cross_entropy(logits, labels).backward(retain_graph=False)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g_new in grads[0].items():
        g_ref = grads[1][name]
        scale = float(g_ref.abs().max())
        assert float((g_new - g_ref).abs().max()) <= 1e-4 * max(scale, 1e-12), name
        if name in ("conv1", "w_fi", "w_fh", "thresh1", "rnn_threshold", "theta0"):
            assert scale > 0, name                 # the gradient really reaches it
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(frames), reference_forward(model, frames, noise=NoiseModel.off()))


def test_noise_draws_are_the_former_per_site_streams():
    """One randn per clip = the former conv, 16 gate and out draws of that clip, in order."""
    from pixelrnn.model import draw_noise
    draws = draw_noise(NOISE, 3, 16, _gens(range(3)))
    for i, g in enumerate(_gens(range(3))):
        conv = torch.randn(16 * 16 * 256, generator=g)
        gate = torch.cat([torch.randn(4096, generator=g) for _ in range(16)])
        out = torch.randn(4096, generator=g)
        assert torch.equal(draws["conv"][i], conv) and torch.equal(draws["gate"][i], gate)
        assert torch.equal(draws["out"][i], out)
    threaded = draw_noise(NOISE, 3, 16, _gens(range(3)), threads=2)      # clips drawn on two threads
    assert all(torch.equal(threaded[k], draws[k]) for k in draws)
    with pytest.raises(ValueError, match="threads"):
        draw_noise(NOISE, 3, 16, _gens(range(3)), threads=0)


def test_short_seeded_run_matches_the_former_implementation(path):
    """Four Adam steps (two learning rates, latent clipping, per-clip noise) with each forward."""
    frames, labels = _frames(32, seed=1), torch.from_numpy(np.arange(32) % 10)
    runs = []
    for fast in (True, False):
        model = _model(seed=3).train()
        binary = [getattr(model, n) for n in PixelRNN.LATENT]
        rest = [p for p in model.parameters() if all(p is not q for q in binary)]
        opt = torch.optim.Adam([{"params": rest, "lr": 2e-3}, {"params": binary, "lr": 2e-2}])
        for step in range(4):
            idx = np.arange(step * 8, step * 8 + 8)
            gens = _gens(idx + 100 * step)
            logits = (model(frames[idx], generators=gens) if fast else
                      reference_forward(model, frames[idx], noise=NOISE, generators=gens))
            opt.zero_grad()
            F.cross_entropy(logits, labels[idx]).backward()
            opt.step()
            model.clip_latent_()
        model.eval()
        with torch.no_grad():
            runs.append((model.state_dict(), model(frames).argmax(1)))
    (a, pred_a), (b, pred_b) = runs
    for key in PixelRNN.LATENT:
        assert torch.equal(a[key] >= 0, b[key] >= 0), key        # the binary weights the sensor runs
    for key in a:
        torch.testing.assert_close(a[key].double(), b[key].double(), atol=1e-3, rtol=0, msg=key)
    assert torch.equal(pred_a, pred_b)


def test_input_gradient_of_a_binary_input_still_flows(path):
    """``sensor`` on a +-1 input that requires grad (not the training path) still returns its gradient."""
    model = _model().train()
    binary = (torch.randint(0, 2, (2, 3, 64, 64)) * 2 - 1).float().requires_grad_()
    out, _ = model.sensor(binary, noise=NoiseModel.off())
    (out * torch.linspace(-1, 1, 4096).reshape(1, 1, 64, 64)).sum().backward()
    ref_in = binary.detach().clone().requires_grad_()
    q = model.binarize
    conv = F.conv2d(ref_in.reshape(6, 1, 64, 64), q(model.conv1), padding=2)
    x = to_mosaic(q(F.max_pool2d(F.relu(conv), 4) - model.thresh1)).reshape(2, 3, 1, 64, 64)
    hidden = torch.ones(2, 1, 64, 64)
    for step in range(3):
        hh = F.conv2d(hidden, torch.cat([q(model.w_fh), q(model.w_oh)]), padding=2)
        xi = F.conv2d(x[:, step], torch.cat([q(model.w_fi), q(model.w_oi)]), padding=2)
        if step == 2:
            ref = xi[:, 1:2] + hh[:, 1:2]
        hidden = q(xi[:, 0:1] + hh[:, 0:1] - model.rnn_threshold) * hidden
    assert torch.equal(out, ref)
    (ref * torch.linspace(-1, 1, 4096).reshape(1, 1, 64, 64)).sum().backward()
    scale = float(ref_in.grad.abs().max())
    assert scale > 0 and float((binary.grad - ref_in.grad).abs().max()) <= 1e-4 * scale
