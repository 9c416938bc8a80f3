"""Gated PixelCNN cached stepper, the arithmetic coder and the readout coder built on both.

Tiny float64 models (as in test_generative.py); the readout prior is trained for a few dozen Adam
steps on random rectangles, 16x16, which is enough to compress structured readouts well.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.arith import ArithmeticDecoder, ArithmeticEncoder, cumulative, quantize_probs
from pixelrnn.generative import GatedPixelCNN, PixelCNN
from pixelrnn.generative.gated import GatedStepper
from pixelrnn.generative.readout_coder import PriorMismatch, ReadoutCoder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and far faster than 2 threads on a
    busy 2-core machine (OpenMP workers spin against other processes). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- cached stepper ---------------------------------------------------------------------------
def gated(*, kind: str = "none", kernel_size: int = 3, num_classes: int = 3, num_layers: int = 3,
          batch: int = 3, dtype=torch.float64):
    torch.manual_seed(0)
    kw = {"num_labels": 4} if kind == "label" else {"cond_dim": 5} if kind == "vector" else {}
    model = GatedPixelCNN(num_classes=num_classes, hidden=6, num_layers=num_layers,
                          kernel_size=kernel_size, **kw).to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    cond = None
    if kind == "label":
        cond = torch.arange(batch) % 4
    elif kind == "vector":
        cond = torch.randn(batch, 5, generator=g, dtype=dtype)
    return model, cond


def all_logits(stepper, x: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits of a stepper fed the whole image x in raster order."""
    _, h, w = x.shape
    return torch.stack([torch.stack([stepper.logits(x, r, c) for c in range(w)], -1) for r in range(h)], -2)


@pytest.mark.parametrize("kind", ["none", "label", "vector"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_cached_matches_naive(kind, kernel_size):
    model, cond = gated(kind=kind, kernel_size=kernel_size)
    x = torch.randint(0, 3, (3, 5, 7), generator=torch.Generator().manual_seed(2))
    cached = model.stepper(batch=3, image_shape=(5, 7), cond=cond, cached=True)
    assert isinstance(cached, GatedStepper)
    naive = model.stepper(batch=3, image_shape=(5, 7), cond=cond, cached=False)
    got, ref = all_logits(cached, x), all_logits(naive, x)
    assert got.dtype == torch.float64
    assert torch.allclose(got, ref, rtol=0, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(got, model.logits(x, cond=cond), rtol=0, atol=1e-10)


def test_cached_single_layer_and_float32():
    model, _ = gated(num_layers=1, num_classes=4, kernel_size=5)
    x = torch.randint(0, 4, (2, 4, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.logits(x)
    assert torch.allclose(all_logits(model.stepper(batch=2, image_shape=(4, 6)), x), ref, rtol=0, atol=1e-10)
    model32, cond = gated(kind="vector", batch=2, dtype=torch.float32)
    with torch.no_grad():
        ref32 = model32.logits(x.clamp(max=2), cond=cond)
    got32 = all_logits(model32.stepper(batch=2, image_shape=(4, 6), cond=cond), x.clamp(max=2))
    assert got32.dtype == torch.float32
    assert torch.allclose(got32, ref32, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "label"])
def test_sample_cached_equals_naive(kind):
    model, cond = gated(kind=kind, num_classes=5)
    a, lp_a = model.sample(3, generator=torch.Generator().manual_seed(4), cond=cond, image_shape=(4, 5), cached=True)
    b, lp_b = model.sample(3, generator=torch.Generator().manual_seed(4), cond=cond, image_shape=(4, 5), cached=False)
    assert torch.equal(a, b)
    assert torch.allclose(lp_a, lp_b, rtol=0, atol=1e-10)


def test_cached_stepper_ignores_future_pixels():
    """Junk at and after (r, c) -- fresh junk at every step -- gives bit-identical logits."""
    model, cond = gated(kind="label", kernel_size=5)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (3, 5, 7), generator=g)
    clean = model.stepper(batch=3, image_shape=(5, 7), cond=cond)
    noisy = model.stepper(batch=3, image_shape=(5, 7), cond=cond)
    for i in range(35):
        r, c = divmod(i, 7)
        y = x.clone()
        y.view(3, -1)[:, i:] = torch.randint(0, 3, (3, 35 - i), generator=g)
        assert torch.equal(clean.logits(x, r, c), noisy.logits(y, r, c))


def test_stepper_order_and_shape_checks():
    model, _ = gated()
    x = torch.zeros(3, 5, 7, dtype=torch.long)
    s = model.stepper(batch=3, image_shape=(5, 7))
    with pytest.raises(ValueError, match="raster order"):
        s.logits(x, 0, 1)
    s.logits(x, 0, 0)
    with pytest.raises(ValueError, match="raster order"):
        s.logits(x, 0, 0)
    with pytest.raises(ValueError, match="raster order"):
        s.logits(x, 1, 0)
    with pytest.raises(ValueError, match="shape"):
        s.logits(x[:2], 0, 1)
    s.logits(x, 0, 1)                               # failed calls do not advance the stepper


# --- arithmetic coder -------------------------------------------------------------------------
def roundtrip(symbols, tables, precision_bits=16):
    enc = ArithmeticEncoder(precision_bits=precision_bits)
    cums = [cumulative(f, precision_bits=precision_bits) for f in tables]
    for s, cum in zip(symbols, cums):
        enc.encode(s, cum)
    data = enc.finish()
    dec = ArithmeticDecoder(data, precision_bits=precision_bits)
    assert [dec.decode(cum) for cum in cums] == list(symbols)
    ideal = sum(-math.log2(f[s] / (1 << precision_bits)) for s, f in zip(symbols, tables))
    return data, ideal


@pytest.mark.parametrize("k,alpha,n", [(2, 1.0, 2000), (2, 0.02, 2000), (3, 0.3, 1000),
                                       (256, 1.0, 300), (256, 0.05, 300)])
def test_arith_roundtrip_and_length(k, alpha, n):
    rng = np.random.default_rng(k * 1000 + int(alpha * 100))
    probs = rng.dirichlet(np.full(k, alpha), size=n)
    tables = quantize_probs(probs)
    symbols = [int(rng.choice(k, p=p)) for p in probs]
    data, ideal = roundtrip(symbols, tables)
    assert 8 * len(data) <= ideal * 1.001 + 24


def test_arith_very_skewed_fixed_table_and_precision():
    rng = np.random.default_rng(7)
    symbols = (rng.random(5000) < 0.001).astype(int).tolist()
    for bits in (16, 24, 30):
        total = 1 << bits
        table = np.array([total - total // 1000, total // 1000])
        data, ideal = roundtrip(symbols, [table] * len(symbols), precision_bits=bits)
        assert 8 * len(data) <= ideal * 1.001 + 24
    # a symbol of frequency 1 in 2**16 (costs 16 bits) in a stream of near-certain ones
    table = np.array([1, (1 << 16) - 1])
    data, ideal = roundtrip([1] * 3000 + [0] + [1] * 3000, [table] * 6001)
    assert 8 * len(data) <= ideal + 24


def test_arith_empty_stream_and_reuse():
    enc = ArithmeticEncoder()
    data = enc.finish()
    assert isinstance(data, bytes) and len(data) <= 1
    with pytest.raises(ValueError):
        enc.finish()
    with pytest.raises(ValueError):
        enc.encode(0, [0, 1, 1 << 16])
    dec = ArithmeticDecoder(b"")                    # decoding past the end reads zeros: no error
    assert dec.decode([0, 1, 1 << 16]) in (0, 1)


def test_quantize_probs_properties():
    rng = np.random.default_rng(8)
    probs = np.concatenate([rng.dirichlet(np.full(5, 0.1), size=200), np.eye(5), np.full((1, 5), 0.2)])
    for bits in (3, 16, 30):
        f = quantize_probs(probs, precision_bits=bits)
        assert f.dtype == np.int64 and f.shape == probs.shape
        assert (f >= 1).all() and (f.sum(1) == 1 << bits).all()
        for row, fr in zip(probs[:20], f[:20]):
            assert np.array_equal(quantize_probs(row, precision_bits=bits), fr)   # (K,) == rows of (B, K)
        # monotone: a more probable symbol never gets a smaller frequency (ties may differ)
        assert not ((probs[:, :, None] > probs[:, None, :]) & (f[:, :, None] < f[:, None, :])).any()
    assert quantize_probs(np.array([1.0, 0.0, 0.0])).tolist() == [65534, 1, 1]
    assert quantize_probs(np.array([1.0, 1.0, 1.0])).tolist() == [21846, 21845, 21845]   # ties: lower index
    assert quantize_probs(np.array([0.5, 0.5]), precision_bits=1).tolist() == [1, 1]
    # 16 - 2 spare counts: 3.5 and 10.5 -> 4 + 11, the last count to the tie's lower index; float32 ok
    assert quantize_probs(np.array([2.0, 6.0], dtype=np.float32), precision_bits=4).tolist() == [5, 11]


@pytest.mark.parametrize("bad", [np.array([1, 2]), np.array([0.5, -0.1]), np.array([np.nan, 1.0]),
                                 np.array([np.inf, 1.0]), np.zeros(3), np.ones((2, 2, 2)), np.ones((0,))])
def test_quantize_probs_rejects(bad):
    with pytest.raises(ValueError):
        quantize_probs(bad)


def test_arith_validation():
    for bits in (0, 31, True, 16.0):
        with pytest.raises(ValueError, match="precision_bits"):
            ArithmeticEncoder(precision_bits=bits)
    with pytest.raises(ValueError, match="precision_bits"):
        quantize_probs(np.ones(3), precision_bits=1)        # 3 symbols need at least 2 bits
    enc = ArithmeticEncoder()
    with pytest.raises(ValueError, match="symbol"):
        enc.encode(2, [0, 1, 1 << 16])
    with pytest.raises(ValueError, match="symbol"):
        enc.encode(-1, [0, 1, 1 << 16])
    with pytest.raises(ValueError, match="cum"):
        enc.encode(0, [0, 1, 1 << 15])
    with pytest.raises(ValueError, match="empty"):
        enc.encode(0, [0, 0, 1 << 16])
    with pytest.raises(ValueError, match="freqs"):
        cumulative(np.array([0, 1 << 16]))
    with pytest.raises(ValueError, match="freqs"):
        cumulative(np.array([3, 4]))
    with pytest.raises(ValueError, match="bytes"):
        ArithmeticDecoder("abc")
    with pytest.raises(ValueError, match="cum"):
        ArithmeticDecoder(b"\x80").decode([0, 9, 1 << 15])


# --- readout coder ----------------------------------------------------------------------------
def rectangles(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """1-bit readouts: 1-2 filled axis-aligned rectangles on a zero background."""
    out = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            r0, c0 = torch.randint(0, size - 3, (2,), generator=g).tolist()
            h, w = torch.randint(3, size // 2 + 1, (2,), generator=g).tolist()
            out[i, r0:r0 + h, c0:c0 + w] = 1
    return out


def train_prior(seed: int, steps: int = 40) -> GatedPixelCNN:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GatedPixelCNN(num_classes=2, hidden=8, num_layers=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    data = rectangles(128, 16, g)
    for _ in range(steps):
        loss = model.nll(data[torch.randint(0, 128, (16,), generator=g)]).bits_per_dim
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def prior() -> GatedPixelCNN:
    return train_prior(0)


@pytest.fixture(scope="module")
def coder(prior) -> ReadoutCoder:
    return ReadoutCoder(prior)


def test_readout_roundtrip(coder):
    g = torch.Generator().manual_seed(10)
    rng = np.random.default_rng(10)
    images = [img.numpy() for img in rectangles(2, 16, g)]
    images += [np.zeros((16, 16), np.uint8), np.ones((16, 16), bool), rng.integers(0, 2, (16, 16), dtype=np.int32),
               (rng.random((9, 23)) < 0.3).astype(np.int64), np.ones((1, 1), np.uint8)]
    for img in images:
        payload = coder.encode(img)
        assert isinstance(payload, bytes)
        out = coder.decode(payload, shape=img.shape)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(out, img.astype(np.uint8))


def test_readout_compresses_structure_near_ideal(coder):
    images = [img.numpy() for img in rectangles(4, 16, torch.Generator().manual_seed(11))]
    images.append(np.random.default_rng(11).integers(0, 2, (16, 16)))
    for i, img in enumerate(images):
        bits = 8 * (len(coder.encode(img)) - 4)           # minus the 4-byte CRC32 of the symbols
        ideal = coder.ideal_bits(img)
        assert bits <= 1.01 * ideal + 32
        if i < 4:
            assert bits < img.size / 4, "a trained prior should code rectangles in well under 1 bit/pixel"
    with torch.no_grad():
        ref = -coder._model.log_prob(torch.from_numpy(images[0])[None]).item() / math.log(2)
    assert coder.ideal_bits(images[0]) == pytest.approx(ref, rel=1e-12)


def test_prior_hash(prior):
    a, b = ReadoutCoder(prior), ReadoutCoder(prior)
    assert len(a.prior_hash) == 16 and int(a.prior_hash, 16) >= 0
    assert a.prior_hash == b.prior_hash
    assert ReadoutCoder(copy.deepcopy(prior).double()).prior_hash == a.prior_hash   # hashes the float64 copy
    assert ReadoutCoder(prior, precision_bits=12).prior_hash != a.prior_hash
    other = ReadoutCoder(train_prior(1, steps=2))
    assert other.prior_hash != a.prior_hash
    img = rectangles(1, 16, torch.Generator().manual_seed(12))[0].numpy()
    with pytest.raises(PriorMismatch, match="another prior"):    # wrong prior: detected, never garbage
        other.decode(a.encode(img), shape=(16, 16))


def test_readout_coder_validation(prior, coder):
    good = np.zeros((4, 4), np.uint8)
    for bad in (good.astype(np.float64), good + 2, good - 1, good[0], good[None], np.zeros((0, 4), np.uint8),
                good.tolist()):
        with pytest.raises(ValueError, match="symbol"):
            coder.encode(bad)
    with pytest.raises(ValueError, match="symbol"):
        coder.ideal_bits(good + 2)
    payload = coder.encode(good)
    for shape in ((0, 4), (4,), (2, 3, 4), "ab", (4.0, 4), (True, 4)):
        with pytest.raises(ValueError, match="shape"):
            coder.decode(payload, shape=shape)
    with pytest.raises(ValueError, match="payload"):
        coder.decode(payload.hex(), shape=(4, 4))
    with pytest.raises(ValueError, match="unconditional"):
        ReadoutCoder(GatedPixelCNN(num_classes=2, hidden=4, num_layers=1, num_labels=3))
    with pytest.raises(ValueError, match="unconditional"):
        ReadoutCoder(GatedPixelCNN(num_classes=2, hidden=4, num_layers=1, cond_dim=3))
    with pytest.raises(ValueError, match="GatedPixelCNN"):
        ReadoutCoder(PixelCNN(num_classes=2, hidden=4, num_layers=1))
    with pytest.raises(ValueError, match="precision_bits"):
        ReadoutCoder(prior, precision_bits=0)
    with pytest.raises(TypeError):
        ReadoutCoder(prior, 16)                              # keyword-only
