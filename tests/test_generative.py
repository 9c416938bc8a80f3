"""Generative PixelRNN family: causality, exact normalisation, sampling consistency, conditioning.

All models are tiny and run in float64 so "exactly zero" and "sums to one" can be checked tightly
(float64 CPU convolutions use im2col + GEMM, so masked taps contribute exact zeros).
"""
from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from pixelrnn.generative import DiagonalBiLSTM, GatedPixelCNN, PixelCNN, RowLSTM
from pixelrnn.generative.common import raster_mask
from pixelrnn.generative.diagbilstm import skew, unskew

torch.set_num_threads(2)


def make(name: str, *, num_classes: int = 2, **kw):
    torch.manual_seed(0)
    if name == "pixelcnn":
        m = PixelCNN(num_classes=num_classes, hidden=8, num_layers=2, first_kernel=3, **kw)
    elif name == "rowlstm":
        m = RowLSTM(num_classes=num_classes, hidden=4, num_layers=2, first_kernel=3, **kw)
    elif name == "diagbilstm":
        m = DiagonalBiLSTM(num_classes=num_classes, hidden=4, num_layers=1, first_kernel=3, **kw)
    elif name == "gated":
        m = GatedPixelCNN(num_classes=num_classes, hidden=8, num_layers=4, **kw)
    elif name == "gated_label":
        m = GatedPixelCNN(num_classes=num_classes, hidden=8, num_layers=4, num_labels=3, **kw)
    else:
        raise KeyError(name)
    return m.double().eval()


MODELS = ["pixelcnn", "rowlstm", "diagbilstm", "gated", "gated_label"]


def labels_for(name: str, batch: int, value: int | None = None):
    if name != "gated_label":
        return None
    if value is not None:
        return torch.full((batch,), value, dtype=torch.long)
    return torch.arange(batch) % 3


def dependency(model, *, height: int, width: int, cond=None, batch: int = 4) -> torch.Tensor:
    """dep[r, c, r2, c2]: do the logits at (r, c) have nonzero gradient w.r.t. the input at (r2, c2)?

    Gradients of a random projection of the K logits, summed in absolute value over a batch of
    random inputs (so a dead ReLU on one input cannot hide a dependency).
    """
    g = torch.Generator().manual_seed(1)
    inp = torch.randn(batch, 1, height, width, generator=g, dtype=torch.float64, requires_grad=True)
    logits = model(inp, model.check_cond(cond, batch))
    proj = torch.randn(logits.shape[1], generator=g, dtype=torch.float64)
    dep = torch.zeros(height, width, height, width, dtype=torch.bool)
    for r, c in itertools.product(range(height), range(width)):
        (grad,) = torch.autograd.grad((logits[:, :, r, c] * proj[None]).sum(), inp, retain_graph=True)
        dep[r, c] = grad.abs().sum(0)[0] != 0
    return dep


def past(height: int, width: int) -> torch.Tensor:
    """past[r, c, r2, c2]: (r2, c2) strictly precedes (r, c) in raster order."""
    idx = torch.arange(height * width).view(height, width)
    return idx[None, None] < idx[:, :, None, None]


@pytest.mark.parametrize("name", MODELS)
def test_causal_gradients(name):
    """Zero gradient w.r.t. the pixel itself and all later ones; some dependency on the past."""
    model = make(name)
    h, w = 5, 5
    dep = dependency(model, height=h, width=w, cond=labels_for(name, 4))
    before = past(h, w)
    assert not (dep & ~before).any(), "logits depend on the pixel itself or a future pixel"
    for r, c in itertools.product(range(h), range(w)):
        if (r, c) != (0, 0):
            assert dep[r, c].any(), f"logits at {(r, c)} depend on no earlier pixel"


@pytest.mark.parametrize("name", ["gated", "gated_label", "diagbilstm", "diagbilstm2"])
def test_full_context_no_blind_spot(name):
    """Gated PixelCNN (4 layers, k=3: field reaches 4 rows up, +-4 columns, 4 left) and the
    Diagonal BiLSTM (1 or 2 layers, first kernel 3) see *every* earlier pixel of a 5x5 image --
    for every pixel, the set of inputs with nonzero gradient is exactly the raster-order past."""
    if name == "diagbilstm2":
        torch.manual_seed(0)
        model = DiagonalBiLSTM(num_classes=2, hidden=4, num_layers=2, first_kernel=3).double()
    else:
        model = make(name)
    dep = dependency(model, height=5, width=5, cond=labels_for(name, 4))
    assert torch.equal(dep, past(5, 5))


def test_gated_receptive_field_bounded():
    """On a 7x7 image a 2-layer gated model (k=3) sees at least the rectangle rows r-2..r-1,
    columns c-2..c+2 and (r, c-2..c-1) -- including up-right, PixelCNN's blind spot -- and
    nothing in the future."""
    model = GatedPixelCNN(num_classes=2, hidden=8, num_layers=2).double()
    dep = dependency(model, height=7, width=7)
    r, c = 3, 3
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[r - 2:r, c - 2:c + 3] = True
    expected[r, c - 2:c] = True
    assert (dep[r, c] | ~expected).all(), "a pixel of the expected field has zero gradient"
    assert not (dep[r, c] & ~past(7, 7)[r, c]).any()
    assert not dep[r, c, :r - 2].any(), "field reaches further up than 2 layers allow"


def test_pixelcnn_has_blind_spot():
    """Documented contrast: plain PixelCNN (3x3 kernels) at (4, 1) sees (1, 4) far up-right but
    not the nearer (3, 3), (3, 4), (2, 4): the blind spot the gated model removes."""
    model = make("pixelcnn")
    dep = dependency(model, height=5, width=5)[4, 1]
    assert dep[1, 4] and dep[3, 2]
    assert not (dep[3, 3] or dep[3, 4] or dep[2, 4])


@pytest.mark.parametrize("name", MODELS)
def test_future_perturbation(name):
    """Changing pixels >= i (raster order) leaves the logits at all pixels <= i unchanged."""
    model = make(name, num_classes=5)
    h, w = 4, 5
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 5, (3, h, w), generator=g)
    cond = labels_for(name, 3)
    base = model.logits(x, cond=cond)
    order = torch.arange(h * w).view(h, w)
    for i in (0, 3, 7, 12, 19):
        y = x.clone()
        future = order >= i
        y[:, future] = torch.randint(0, 5, (3, int(future.sum())), generator=g)
        out = model.logits(y, cond=cond)
        keep = order <= i
        assert torch.allclose(out[:, :, keep], base[:, :, keep], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_exact_normalisation(name):
    """All 2^9 binary 3x3 images: sum of exp(log_prob) is 1 (per label for the conditional one)."""
    model = make(name)
    x = torch.tensor(list(itertools.product([0, 1], repeat=9))).view(512, 3, 3)
    for label in (range(3) if name == "gated_label" else [None]):
        cond = labels_for(name, 512, label)
        with torch.no_grad():
            total = model.log_prob(x, cond=cond).exp().sum()
        assert abs(total.item() - 1.0) < 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_sample_logprob_matches_teacher_forcing(name):
    model = make(name, num_classes=17)
    cond = labels_for(name, 4)
    images, lp = model.sample(4, generator=torch.Generator().manual_seed(3), cond=cond, image_shape=(4, 4))
    assert images.shape == (4, 4, 4) and images.dtype == torch.long
    assert int(images.min()) >= 0 and int(images.max()) < 17
    with torch.no_grad():
        ref = model.log_prob(images, cond=cond)
    assert torch.allclose(lp, ref, rtol=0, atol=1e-5)
    again, _ = model.sample(4, generator=torch.Generator().manual_seed(3), cond=cond, image_shape=(4, 4))
    assert torch.equal(images, again), "sampling is not reproducible with a seeded generator"


def test_conditional_logits_depend_on_label():
    model = make("gated_label", num_classes=4)
    x = torch.randint(0, 4, (2, 5, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = model.logits(x, cond=torch.tensor([0, 0]))
        b = model.logits(x, cond=torch.tensor([1, 1]))
    assert (a - b).abs().amax() > 1e-6
    assert (a - b)[:, :, 0, 0].abs().amax() > 1e-6, "even the first pixel should depend on the label"


def test_vector_conditioning_and_validation():
    torch.manual_seed(0)
    model = GatedPixelCNN(num_classes=3, hidden=4, num_layers=2, cond_dim=6).double()
    x = torch.randint(0, 3, (2, 4, 4))
    c1, c2 = torch.randn(2, 6), torch.randn(2, 6)
    assert not torch.allclose(model.log_prob(x, cond=c1), model.log_prob(x, cond=c2))
    with pytest.raises(ValueError):
        model.log_prob(x)                       # missing cond
    with pytest.raises(ValueError):
        model.log_prob(x, cond=torch.randn(2, 5))
    plain = make("pixelcnn", num_classes=3)
    with pytest.raises(ValueError):
        plain.log_prob(x, cond=c1)              # unconditional model
    with pytest.raises(ValueError):
        plain.log_prob(x.double())              # float pixels
    with pytest.raises(ValueError):
        plain.log_prob(x + 3)                   # out of range
    with pytest.raises(ValueError):
        plain.sample(2, generator=torch.Generator())   # no image_shape
    with pytest.raises(ValueError):
        PixelCNN(num_classes=1)


def test_nll_units():
    model = make("rowlstm", num_classes=17)
    x = torch.randint(0, 17, (3, 4, 4))
    out = model.nll(x)
    lp = model.log_prob(x)
    assert torch.allclose(out.nats, -lp.mean())
    assert torch.allclose(out.bits_per_dim, -lp.mean() / (16 * torch.log(torch.tensor(2.0, dtype=torch.float64))))


def test_default_sizes_and_stored_shape():
    """Default (paper-like) sizes build, run on 8x8 digits with K=17, and sample at image_shape."""
    for cls in (PixelCNN, RowLSTM, DiagonalBiLSTM, GatedPixelCNN):
        model = cls(num_classes=17, image_shape=(8, 8))
        x = torch.randint(0, 17, (2, 8, 8))
        assert model.logits(x).shape == (2, 17, 8, 8)
        assert torch.isfinite(model.nll(x).bits_per_dim)
    images, lp = PixelCNN(num_classes=17, hidden=8, num_layers=1, image_shape=(2, 3)).sample(
        2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 2, 3) and lp.shape == (2,)


def test_masks_and_skew():
    a = raster_mask(kernel_size=(3, 3), mask_type="A", in_channels=3, out_channels=3, n_colors=3)
    b = raster_mask(kernel_size=(3, 3), mask_type="B", in_channels=3, out_channels=3, n_colors=3)
    assert torch.equal(a[:, :, 1, 1], torch.tril(torch.ones(3, 3), -1))   # R<-nothing, G<-R, B<-R,G
    assert torch.equal(b[:, :, 1, 1], torch.tril(torch.ones(3, 3)))
    assert a[:, :, 2].sum() == 0 and a[:, :, 1, 2].sum() == 0 and a[:, :, 0].all()
    x = torch.randn(2, 3, 4, 5)
    s = skew(x)
    assert s.shape == (2, 3, 4, 8) and torch.equal(s[:, :, 2, 2:7], x[:, :, 2])
    assert torch.equal(unskew(s, width=5), x)


def test_spatial_map_conditioning():
    """cond_channels: a (B, C, H, W) map conditions every position; causality in x is unchanged;
    sampling falls back to the naive stepper; wrong maps are refused."""
    torch.manual_seed(0)
    model = GatedPixelCNN(num_classes=3, hidden=4, num_layers=2, cond_channels=2).double().eval()
    x = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    m1 = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    m2 = m1.clone()
    m2[:, :, 3, 4] += 1.0                       # change the map at the last pixel only
    with torch.no_grad():
        a, b = model.logits(x, cond=m1), model.logits(x, cond=m2)
    assert torch.equal(a[:, :, :3], b[:, :, :3]) and (a[:, :, 3, 4] - b[:, :, 3, 4]).abs().amax() > 0
    assert model.cached_stepper(batch=2, image_shape=(4, 5), cond=m1) is None
    dep = dependency(model, height=4, width=5, cond=m1, batch=2)
    assert not (dep & ~past(4, 5)).any()
    with pytest.raises(ValueError, match="float map"):
        model.logits(x, cond=torch.randn(2, 3, 4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="conditioning map"):
        model.logits(x, cond=torch.randn(2, 2, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="at most one"):
        GatedPixelCNN(num_classes=2, cond_dim=3, cond_channels=2)
