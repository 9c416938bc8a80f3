"""Caching steppers of PixelCNN, Row LSTM and Diagonal BiLSTM against the naive reference.

The naive stepper re-runs the whole network on the image with pixels >= (r, c) zeroed; the cached
ones (``model.stepper(cached=True)``) evaluate every layer at the new pixel only. Tiny float64
models, so "equal" means equal up to float rounding (1e-10), on square and non-square images and
with several first kernels / depths.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pixelrnn.generative import DiagonalBiLSTM, NaiveStepper, PixelCNN, RowLSTM
from pixelrnn.generative.diagbilstm import CachedDiagonalBiLSTMStepper
from pixelrnn.generative.pixelcnn import CachedPixelCNNStepper
from pixelrnn.generative.rowlstm import CachedRowLSTMStepper


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is fastest, and on a busy 2-core machine two threads can be
    many times slower. Restored afterwards so other test modules keep their own setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CLASSES = {"pixelcnn": PixelCNN, "rowlstm": RowLSTM, "diagbilstm": DiagonalBiLSTM}
STEPPERS = {PixelCNN: CachedPixelCNNStepper, RowLSTM: CachedRowLSTMStepper,
            DiagonalBiLSTM: CachedDiagonalBiLSTMStepper}

# (model, constructor arguments, image shape)
CONFIGS = [
    ("pixelcnn", dict(hidden=8, num_layers=2, first_kernel=3), (5, 5)),
    ("pixelcnn", dict(hidden=8, num_layers=2, first_kernel=3), (5, 7)),
    ("pixelcnn", dict(hidden=6, num_layers=3, first_kernel=5, kernel_size=5), (7, 5)),
    ("pixelcnn", dict(hidden=4, num_layers=0, first_kernel=7), (4, 6)),
    ("rowlstm", dict(hidden=4, num_layers=2, first_kernel=3), (5, 7)),
    ("rowlstm", dict(hidden=3, num_layers=3, first_kernel=5), (6, 4)),
    ("rowlstm", dict(hidden=4, num_layers=1, first_kernel=7), (3, 3)),
    ("diagbilstm", dict(hidden=4, num_layers=1, first_kernel=3), (5, 5)),
    ("diagbilstm", dict(hidden=4, num_layers=2, first_kernel=3), (5, 7)),
    ("diagbilstm", dict(hidden=3, num_layers=3, first_kernel=5), (6, 4)),
    ("diagbilstm", dict(hidden=4, num_layers=1, first_kernel=7), (1, 5)),
]
IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in kw.items())}-{h}x{w}" for name, kw, (h, w) in CONFIGS]


def build(name: str, *, num_classes: int = 5, **kw):
    torch.manual_seed(0)
    return CLASSES[name](num_classes=num_classes, **kw).double().eval()


@pytest.mark.parametrize("name,kw,shape", CONFIGS, ids=IDS)
def test_cached_equals_naive_and_ignores_future(name, kw, shape):
    """At every pixel of random images: cached logits == naive logits (1e-10), and a second
    cached stepper fed fresh junk at and after (r, c) on every call returns bit-identical logits."""
    model = build(name, **kw)
    height, width = shape
    batch = 3
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (batch, height, width), generator=g)
    cached = model.stepper(batch=batch, image_shape=shape)
    junk_fed = model.stepper(batch=batch, image_shape=shape)
    naive = model.stepper(batch=batch, image_shape=shape, cached=False)
    assert type(cached) is STEPPERS[type(model)] and type(naive) is NaiveStepper
    order = torch.arange(height * width).view(height, width)
    worst = 0.0
    for r in range(height):
        for c in range(width):
            a = cached.logits(x, r, c)
            ref = naive.logits(x, r, c)
            assert a.shape == (batch, 5)
            worst = max(worst, (a - ref).abs().max().item())
            y = x.clone()
            future = order >= r * width + c
            y[:, future] = torch.randint(0, 5, (batch, int(future.sum())), generator=g)
            assert torch.equal(junk_fed.logits(y, r, c), a), f"future pixels changed the logits at {(r, c)}"
    assert worst < 1e-10, worst


@pytest.mark.parametrize("name,kw,shape", [CONFIGS[1], CONFIGS[4], CONFIGS[8]], ids=[IDS[1], IDS[4], IDS[8]])
def test_sample_cached_equals_naive(name, kw, shape):
    model = build(name, num_classes=17, **kw)
    a, lp_a = model.sample(3, generator=torch.Generator().manual_seed(5), image_shape=shape, cached=True)
    b, lp_b = model.sample(3, generator=torch.Generator().manual_seed(5), image_shape=shape, cached=False)
    assert torch.equal(a, b)
    assert torch.allclose(lp_a, lp_b, rtol=0, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(lp_a, model.log_prob(a), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(CLASSES))
def test_raster_order_enforced(name):
    model = build(name, hidden=4, num_layers=1, first_kernel=3)
    x = torch.zeros(2, 3, 4, dtype=torch.long)
    stepper = model.stepper(batch=2, image_shape=(3, 4))
    with pytest.raises(ValueError):
        stepper.logits(x, 0, 1)                 # skips (0, 0)
    stepper.logits(x, 0, 0)
    with pytest.raises(ValueError):
        stepper.logits(x, 0, 0)                 # repeats (0, 0)
    with pytest.raises(ValueError):
        stepper.logits(x, 1, 0)                 # skips the rest of row 0
    with pytest.raises(ValueError):
        stepper.logits(x[:1], 0, 1)             # wrong batch
    stepper.logits(x, 0, 1)                     # the right next pixel still works


@pytest.mark.parametrize("name", list(CLASSES))
def test_default_sizes_float32(name):
    """Default constructor sizes in float32: cached and naive agree to float32 rounding."""
    torch.manual_seed(0)
    model = CLASSES[name](num_classes=17).eval()
    x = torch.randint(0, 17, (2, 4, 5), generator=torch.Generator().manual_seed(2))
    cached = model.stepper(batch=2, image_shape=(4, 5))
    naive = model.stepper(batch=2, image_shape=(4, 5), cached=False)
    for r in range(4):
        for c in range(5):
            assert torch.allclose(cached.logits(x, r, c), naive.logits(x, r, c), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(CLASSES))
def test_subclass_with_own_forward_falls_back_to_naive(name):
    base = CLASSES[name]

    class Changed(base):
        def forward(self, inp, cond=None):
            return base.forward(self, inp, cond) * 2

    torch.manual_seed(0)
    model = Changed(num_classes=3, hidden=4, num_layers=1, first_kernel=3).double()
    assert type(model.stepper(batch=1, image_shape=(2, 2))) is NaiveStepper
