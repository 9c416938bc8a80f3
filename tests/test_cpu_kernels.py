"""The numba CPU training kernels (pixelrnn.cpu_kernels) against PyTorch's own operators.

Stated tolerance: forward values (pooled maxima, first argmax phases, hidden states, gate
pre-activations) are bit-identical: they are exact integer sums, then the same float32 operations
in the same order. Gradients differ only by float32 summation order: within 1e-4 of the largest
gradient of each tensor (float32 sums over up to ~10^5 terms, here ~10^3-10^4).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba", reason="the CPU kernels need numba (the [train] extra)")
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pixelrnn import cpu_kernels  # noqa: E402
from pixelrnn.model import ModelConfig, PixelRNN, _Recurrence, to_mosaic  # noqa: E402
from pixelrnn.quantizers import get_surrogate  # noqa: E402

TOL = 1e-4


def _pm1(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def _close(new, ref, what):
    scale = float(np.abs(ref).max())
    assert scale > 0, f"{what}: the reference gradient is zero (the test checks nothing)"
    assert float(np.abs(np.asarray(new) - ref).max()) <= TOL * scale, what


def _first_argmax_phase(conv: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) -> (N, H/4, W/4, K): the first phase r*4 + c of each 4x4 window holding its max."""
    n, k, h, w = conv.shape
    win = conv.reshape(n, k, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(n, h // 4, w // 4, k, 16)
    return win.argmax(-1)         # torch's argmax returns the first of equal maxima


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), frames=st.integers(1, 5), hb=st.integers(1, 5), wb=st.integers(1, 5),
       kernels=st.integers(1, 17), threads=st.integers(1, 3))
def test_conv_relu_pool_equals_conv2d_relu_maxpool(seed, frames, hb, wb, kernels, threads):
    rng = np.random.default_rng(seed)
    x, w = _pm1(rng, frames, 4 * hb, 4 * wb), _pm1(rng, kernels, 5, 5)
    pooled, arg = cpu_kernels.conv_relu_pool(x=x, w=w, threads=threads)
    conv = F.conv2d(torch.from_numpy(x)[:, None], torch.from_numpy(w)[:, None], padding=2)
    ref = F.max_pool2d(F.relu(conv), 4)
    assert torch.equal(torch.from_numpy(pooled).permute(0, 3, 1, 2), ref)
    assert torch.equal(torch.from_numpy(arg).long(), _first_argmax_phase(conv))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("with_s", [True, False])
def test_conv_relu_pool_backward_matches_autograd(threads, with_s):
    rng = np.random.default_rng(threads)
    x, w = _pm1(rng, 7, 24, 20), _pm1(rng, 16, 5, 5)
    s = rng.random((7, 24, 20)).astype(np.float32)
    pooled, arg = cpu_kernels.conv_relu_pool(x=x, w=w, threads=threads)
    grad = rng.standard_normal((7, 16, 6, 5)).astype(np.float32)
    dw, dshift = cpu_kernels.conv_relu_pool_backward(x=x, w=w, grad=grad, pooled=pooled, arg=arg,
                                                     s=s if with_s else None, threads=threads)
    xt = torch.from_numpy(x)[:, None].requires_grad_()
    wt = torch.from_numpy(w)[:, None].requires_grad_()
    out = F.max_pool2d(F.relu(F.conv2d(xt, wt, padding=2)), 4)
    out.backward(torch.from_numpy(grad))
    _close(dw, wt.grad[:, 0].double().numpy(), "dw")
    if with_s:      # x = sign(v) with dx/dv = s: d/d(shift of v) = sum(dL/dx * s)
        _close(np.array([dshift]), np.array([float((xt.grad[:, 0].double() * torch.from_numpy(s)).sum())]), "shift")
    else:
        assert dshift == 0.0


def test_non_contiguous_gradient_is_read_with_its_strides():
    rng = np.random.default_rng(5)
    x, w = _pm1(rng, 3, 16, 16), _pm1(rng, 4, 5, 5)
    pooled, arg = cpu_kernels.conv_relu_pool(x=x, w=w)
    g = rng.standard_normal((3, 4, 4, 4)).astype(np.float32)
    strided = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not strided.flags.c_contiguous
    a, _ = cpu_kernels.conv_relu_pool_backward(x=x, w=w, grad=g, pooled=pooled, arg=arg)
    b, _ = cpu_kernels.conv_relu_pool_backward(x=x, w=w, grad=strided, pooled=pooled, arg=arg)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("keep,noise,threads", [((15,), True, 2), ((4, 8, 12, 16), True, 1),
                                                ((3, 6), False, 3)])
def test_recurrence_equals_the_pytorch_recurrence(keep, noise, threads):
    rng = np.random.default_rng(len(keep))
    g = max(keep)
    x = torch.from_numpy(_pm1(rng, 5, g, 20, 28))
    w_fi = torch.from_numpy(_pm1(rng, 1, 1, 5, 5)).requires_grad_()
    w_fh = torch.from_numpy(_pm1(rng, 1, 1, 5, 5)).requires_grad_()
    thr = torch.tensor([0.75], requires_grad=True)
    nz = torch.from_numpy(rng.standard_normal((5, g, 20, 28)).astype(np.float32) * 0.6) if noise else None
    sur = get_surrogate("tanh_mx", m=2.0)
    xr = x.clone().requires_grad_()
    ref = _Recurrence.apply(xr, w_fi, w_fh, thr, nz, sur, keep)
    grad = torch.from_numpy(rng.standard_normal(ref.shape).astype(np.float32))
    ref.backward(grad)
    hs, zs = cpu_kernels.recurrence(x=x.numpy(), w_fi=w_fi.detach()[0, 0].numpy(), w_fh=w_fh.detach()[0, 0].numpy(),
                                    thr=0.75, noise=nz.numpy() if noise else None, threads=threads)
    assert np.array_equal(hs[:, list(keep)], ref.detach().numpy())       # every gate decided the same
    assert np.all(np.abs(hs) == 1) and np.all(hs[:, 0] == 1)
    gx, dfi, dfh, dthr = cpu_kernels.recurrence_backward(
        x=x.numpy(), hs=hs, zs=zs, sur=sur(torch.from_numpy(zs)).numpy(), grad=grad.numpy(), keep=keep,
        w_fi=w_fi.detach()[0, 0].numpy(), w_fh=w_fh.detach()[0, 0].numpy(), threads=threads)
    _close(gx, xr.grad.numpy(), "x")
    _close(dfi, w_fi.grad[0, 0].numpy(), "w_fi")
    _close(dfh, w_fh.grad[0, 0].numpy(), "w_fh")
    _close(np.array([dthr]), thr.grad.numpy(), "thr")


@pytest.mark.parametrize("noise", [True, False])
def test_threshold_mosaic_equals_the_pytorch_epilogue(noise):
    """z = pooled (+ n . sigma) - thr, x = sign(z) tiled: the model's PyTorch operations, bit for bit;
    the backward: the mosaic's gradient un-tiled times the surrogate, and its sum."""
    rng = np.random.default_rng(7)
    pooled = rng.integers(0, 9, (6, 5, 7, 16)).astype(np.float32)          # (F, hb, wb, 16): integer maxima
    normals = rng.standard_normal((6, 16, 5, 7)).astype(np.float32)
    thr = np.float32(1.37)
    z, xm = cpu_kernels.threshold_mosaic(pooled=pooled, thr=float(thr), noise=normals if noise else None,
                                         sigma=0.6, threads=2)
    p = torch.from_numpy(pooled).permute(0, 3, 1, 2)
    pre = p + torch.from_numpy(normals) * 0.6 if noise else p
    ref_z = pre - torch.from_numpy(np.array([thr]))
    assert torch.equal(torch.from_numpy(z), ref_z)
    ref_x = to_mosaic(torch.copysign(torch.ones(()), ref_z + 0.0))[:, 0]
    assert torch.equal(torch.from_numpy(xm), ref_x)
    grad = rng.standard_normal(xm.shape).astype(np.float32)
    sur = rng.random(z.shape).astype(np.float32)
    zt = ref_z.clone().requires_grad_()
    (to_mosaic(zt * torch.from_numpy(sur))[:, 0] * torch.from_numpy(grad)).sum().backward()
    g, total = cpu_kernels.threshold_mosaic_backward(grad=grad, sur=sur, threads=3)
    assert np.array_equal(g, zt.grad.numpy())                         # one product per element: exact
    assert abs(total - float(zt.grad.double().sum())) <= 1e-9 * float(np.abs(g).sum())


def test_lookup_is_a_per_pixel_table():
    rng = np.random.default_rng(8)
    levels = rng.integers(0, 256, (3, 4, 8, 8), dtype=np.uint8)
    a, b = rng.standard_normal(256).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    out_a, out_b = cpu_kernels.lookup(levels=levels, tables=(a, b), threads=2)
    assert np.array_equal(out_a, a[levels]) and np.array_equal(out_b, b[levels])
    (only,) = cpu_kernels.lookup(levels=levels, tables=(a,))
    assert np.array_equal(only, a[levels])
    with pytest.raises(ValueError, match="uint8"):
        cpu_kernels.lookup(levels=levels.astype(np.int16), tables=(a,))
    with pytest.raises(ValueError, match="256 values"):
        cpu_kernels.lookup(levels=levels, tables=(a[:255],))


def test_all_pm1_and_the_arguments_are_checked():
    assert cpu_kernels.all_pm1(np.array([[1, -1], [-1, 1]], np.float32))
    assert not cpu_kernels.all_pm1(np.array([1, 0, -1], np.float32))
    assert not cpu_kernels.all_pm1(np.array([1, np.nan], np.float32))
    x, w = np.ones((2, 8, 8), np.float32), np.ones((3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="multiples of 4"):
        cpu_kernels.conv_relu_pool(x=np.ones((2, 8, 6), np.float32), w=w)
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.conv_relu_pool(x=x.astype(np.float64), w=w)
    with pytest.raises(ValueError, match=r"w must be \(kernels, 5, 5\)"):
        cpu_kernels.conv_relu_pool(x=x, w=np.ones((3, 3, 3), np.float32))
    pooled, arg = cpu_kernels.conv_relu_pool(x=x, w=w)
    with pytest.raises(ValueError, match="grad must be"):
        cpu_kernels.conv_relu_pool_backward(x=x, w=w, grad=np.ones((2, 3, 2, 3), np.float32), pooled=pooled, arg=arg)
    with pytest.raises(ValueError, match="keep must index"):
        cpu_kernels.recurrence_backward(x=np.ones((1, 2, 8, 8), np.float32), hs=np.ones((1, 3, 8, 8), np.float32),
                                        zs=np.ones((1, 2, 8, 8), np.float32), sur=np.ones((1, 2, 8, 8), np.float32),
                                        grad=np.ones((1, 1, 8, 8), np.float32), keep=(3,), w_fi=w[0], w_fh=w[0])


def _train_step(model, frames, gens):
    model.zero_grad()
    logits = model(frames, generators=gens)
    F.cross_entropy(logits, torch.arange(len(frames)) % 10).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cfg", [dict(), dict(hidden_channels=2, out_channels=2, readout_every=4),
                                 dict(quantizer="ste_sign", readout_bits=1, readout_every=8)])
def test_model_on_the_kernels_equals_the_model_on_pytorch(cfg, monkeypatch):
    """The whole training step, kernels on against PIXELRNN_KERNELS=torch: identical logits (every
    decision, noise on), gradients within the tolerance, and each path really taken."""
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=10, learn_theta0=True, noise_conv=0.6, noise_gate=0.6, noise_out=1.0,
                                 **cfg)).train()
    with torch.no_grad():
        model.thresh1.fill_(1.5)
        model.theta0.fill_(0.1)
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 16, 64, 64), dtype=np.uint8))
    gens = lambda: [torch.Generator().manual_seed(50 + i) for i in range(4)]  # noqa: E731
    calls = []
    for name in ("lookup", "conv_relu_pool", "threshold_mosaic", "recurrence"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name),
                                                                                        _real(*a, **k))[1])
    fast, g_fast = _train_step(model, frames, gens())
    assert set(calls) == {"lookup", "conv_relu_pool", "threshold_mosaic", "recurrence"}
    calls.clear()
    monkeypatch.setenv(cpu_kernels.ENV, "torch")
    slow, g_slow = _train_step(model, frames, gens())
    assert calls == []
    assert torch.equal(fast, slow)
    assert g_fast.keys() == g_slow.keys()
    for name in g_fast:
        if float(g_slow[name].abs().max()) > 0:
            _close(g_fast[name].numpy(), g_slow[name].numpy(), name)
    for name in ("conv1", "w_fi", "w_fh", "theta0", "rnn_threshold", "thresh1"):
        assert float(g_fast[name].abs().max()) > 0, name       # the kernels' gradients reach them


def test_inputs_the_kernels_do_not_take_use_the_pytorch_path(monkeypatch):
    """A 0 in a "binary" input (a caller's ternary frames) or a float64 input: the GEMM path, exact."""
    from firmware_sim.noise import NoiseModel
    calls = []
    real = cpu_kernels.conv_relu_pool
    monkeypatch.setattr(cpu_kernels, "conv_relu_pool", lambda **k: (calls.append(1), real(**k))[1])
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=10)).eval()
    ternary = torch.randint(-1, 2, (2, 4, 64, 64)).float()
    with torch.no_grad():
        model.sensor(ternary, noise=NoiseModel.off())
        assert calls == []
        model.sensor(ternary.sign() + (ternary == 0), noise=NoiseModel.off())        # +-1: the kernels
    assert calls == [1]


def test_environment_switch_turns_the_kernels_off(monkeypatch):
    assert cpu_kernels.available()
    monkeypatch.setenv(cpu_kernels.ENV, "torch")
    assert not cpu_kernels.available()
    monkeypatch.setenv(cpu_kernels.ENV, "numba")
    assert cpu_kernels.available()
