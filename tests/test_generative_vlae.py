"""Variational Lossy Autoencoder: restricted causal decoder, exact normalisation given z, KL and
bound orderings (checked against exact quadrature with a 1-d latent), AF prior, training sanity.

Tiny models in float64 so "exactly zero" and "sums to one" can be checked tightly.
"""
from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")

from pixelrnn.generative.vlae import MADE, VLAE, AutoregressiveFlowPrior, ELBOTerms


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest and robust to busy shared cores (two threads
    on two loaded cores made the training test ~10x slower). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(*, num_classes: int = 2, image_shape=(3, 3), latent_dim: int = 3, seed: int = 0, **kw) -> VLAE:
    torch.manual_seed(seed)
    kw = {"decoder_hidden": 8, "encoder_hidden": 4, "flow_hidden": 8, **kw}
    return VLAE(num_classes=num_classes, image_shape=image_shape, latent_dim=latent_dim, **kw).double().eval()


def randomise(module: torch.nn.Module, *, std: float, seed: int) -> None:
    """Overwrite all parameters with N(0, std^2) (the flow starts as the identity otherwise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def all_binary(h: int, w: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0, 1], repeat=h * w))).view(-1, h, w)


def past(height: int, width: int) -> torch.Tensor:
    """past[r, c, r2, c2]: (r2, c2) strictly precedes (r, c) in raster order."""
    idx = torch.arange(height * width).view(height, width)
    return idx[None, None] < idx[:, :, None, None]


def expected_field(model: VLAE, height: int, width: int) -> torch.Tensor:
    """field[r, c, r2, c2] from ``decoder_receptive_field`` (clipped to the image)."""
    up, left, right = model.decoder_receptive_field
    field = torch.zeros(height, width, height, width, dtype=torch.bool)
    for r, c in itertools.product(range(height), range(width)):
        field[r, c, max(0, r - up):r, max(0, c - left):c + right + 1] = True
        field[r, c, r, max(0, c - left):c] = True
    return field


def decoder_dependency(model: VLAE, *, height: int, width: int, batch: int = 4):
    """(dep[r, c, r2, c2], zdep[r, c]): nonzero gradient of the decoder logits at (r, c) w.r.t.
    the decoder input at (r2, c2) / w.r.t. z (random projection, |grad| summed over a batch)."""
    g = torch.Generator().manual_seed(1)
    inp = torch.randn(batch, 1, height, width, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(batch, model.latent_dim, generator=g, dtype=torch.float64, requires_grad=True)
    logits = model.decoder(inp, model.z_to_map(z))
    proj = torch.randn(logits.shape[1], generator=g, dtype=torch.float64)
    dep = torch.zeros(height, width, height, width, dtype=torch.bool)
    zdep = torch.zeros(height, width, dtype=torch.bool)
    for r, c in itertools.product(range(height), range(width)):
        gi, gz = torch.autograd.grad((logits[:, :, r, c] * proj[None]).sum(), (inp, z), retain_graph=True)
        dep[r, c] = gi.abs().sum(0)[0] != 0
        zdep[r, c] = gz.abs().sum() != 0
    return dep, zdep


# --- decoder -------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers,kernel", [(1, 3), (2, 3), (2, 5)])
def test_decoder_causal_and_receptive_field_exact(layers, kernel):
    """Given z, the decoder logits at pixel i have exactly zero gradient w.r.t. the input at pixels
    >= i, and the set of inputs with nonzero gradient is exactly the computed causal window (no
    more, no less) at every pixel of a 7x7 image. Every pixel's logits depend on z."""
    model = make(image_shape=(7, 7), decoder_layers=layers, decoder_kernel_size=kernel)
    reach = layers * (kernel // 2)
    assert model.decoder_receptive_field == (reach, reach, reach)
    dep, zdep = decoder_dependency(model, height=7, width=7)
    assert not (dep & ~past(7, 7)).any(), "decoder logits depend on the pixel itself or a future pixel"
    field = expected_field(model, 7, 7)
    assert not (field & ~past(7, 7)).any()
    assert torch.equal(dep, field)
    assert zdep.all(), "some pixel's logits ignore z"


def test_default_decoder_field_is_restricted():
    """Default: 2 layers, k = 3 -> 2 rows up, 2 columns either side; most of the past is unseen."""
    model = VLAE(num_classes=2, image_shape=(8, 8))
    assert model.decoder_receptive_field == (2, 2, 2)
    assert model.latent_dim == 16 and model.num_classes == 2 and model.image_shape == (8, 8)


def test_normalisation_given_z():
    """3x3 binary images, z fixed: sum over all 512 images of p(x|z) is 1."""
    model = make(latent_dim=2)
    x = all_binary(3, 3)
    for z0 in ([0.0, 0.0], [1.5, -2.0]):
        z = torch.tensor(z0, dtype=torch.float64).expand(512, 2)
        with torch.no_grad():
            total = model.decoder_log_prob(x, z).exp().sum()
        assert abs(total.item() - 1.0) < 1e-6


# --- KL and bounds -------------------------------------------------------------------------------
def test_analytic_kl_matches_monte_carlo():
    """Analytic KL(q || N(0, I)) vs the mean of log q(z|x) - log p(z) over 100k draws: agree
    within 5 Monte Carlo standard errors (< 0.015 nats). KL >= 0; ``kl`` == ``elbo_terms().kl``."""
    model = make(image_shape=(4, 4), latent_dim=3)
    randomise(model.encoder, std=0.3, seed=3)      # a posterior noticeably away from the prior
    x = torch.randint(0, 2, (3, 4, 4), generator=torch.Generator().manual_seed(0))
    kl = model.kl(x)
    assert kl.shape == (3,) and (kl >= 0).all() and (kl > 0.05).all()
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(1))
    assert isinstance(terms, ELBOTerms) and terms.recon.shape == (3,)
    assert torch.allclose(terms.kl, kl, rtol=0, atol=1e-12)
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        n = 100_000
        eps = torch.randn(n, *mu.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        z = mu + torch.exp(0.5 * logvar) * eps
        lq = (-0.5 * (eps ** 2 + logvar + math.log(2 * math.pi))).sum(-1)
        lp = (-0.5 * (z ** 2 + math.log(2 * math.pi))).sum(-1)
        est = (lq - lp).mean(0)
        se = (lq - lp).std(0) / math.sqrt(n)
    assert ((est - kl).abs() < 5 * se).all() and (se < 0.003).all()
    # KL >= 0 on a batch of random images
    xs = torch.randint(0, 2, (32, 4, 4), generator=torch.Generator().manual_seed(4))
    assert (model.kl(xs) >= 0).all()


def test_bounds_against_exact_likelihood_1d_latent():
    """With a 1-d latent log p(x) = log int p(x|z) N(z) dz is computed by quadrature. Then
    true NLL <= -ELBO (exact expectation, also by quadrature); IWAE with 4000 samples lies between
    them (within Monte Carlo tolerance) and closes most of the gap; E[iw_nll] decreases with S."""
    model = make(latent_dim=1)
    randomise(model.encoder, std=0.5, seed=5)
    with torch.no_grad():                   # make p(x|z) depend strongly on z: a real ELBO gap
        for layer in model.decoder.layers:
            layer.cond_v.weight.mul_(6.0)
            layer.cond_h.weight.mul_(6.0)
    x = torch.randint(0, 2, (4, 3, 3), generator=torch.Generator().manual_seed(6))
    zs = torch.linspace(-12, 12, 4801, dtype=torch.float64)
    dz = (zs[1] - zs[0]).item()
    with torch.no_grad():
        # log p(x|z) on the grid, (Z, B)
        lpx = model.decoder_log_prob(x.repeat(len(zs), 1, 1), zs.repeat_interleave(4)[:, None]).view(len(zs), 4)
        log_prior = -0.5 * (zs ** 2 + math.log(2 * math.pi))
        true_nll = -(torch.logsumexp(lpx + log_prior[:, None], 0) + math.log(dz))
        mu, logvar = model.posterior(x)
        q = torch.exp(-0.5 * ((zs[:, None] - mu[:, 0]) ** 2 / logvar[:, 0].exp() + logvar[:, 0]
                              + math.log(2 * math.pi)))
        assert torch.allclose((q * dz).sum(0), torch.ones(4, dtype=torch.float64), atol=1e-8)
        neg_elbo = (q * dz * -lpx).sum(0) + model.kl(x)
    gap = neg_elbo - true_nll
    assert (gap > 0.05).all(), "the ELBO should be strictly below log p(x) here"
    g = torch.Generator().manual_seed(7)
    iw = model.iw_nll(x, samples=4000, generator=g)
    assert iw.shape == (4,)
    assert (iw <= neg_elbo).all()
    assert (iw >= true_nll - 0.02).all()
    assert ((iw - true_nll) < 0.25 * gap).all(), "IWAE should close most of the ELBO gap"
    # E[iw_nll] over independent repeats (x repeated along the batch): S = 1 estimates -ELBO, and
    # the mean decreases with S towards the true NLL (orderings within 3 standard errors)
    stats = []
    for s, reps in ((1, 1000), (10, 400), (100, 40)):
        est = model.iw_nll(x.repeat(reps, 1, 1), samples=s, generator=g).view(reps, 4)
        stats.append((est.mean(0), est.std(0) / math.sqrt(reps)))
    (m1, se1), (m10, se10), (m100, se100) = stats
    assert ((m1 - neg_elbo).abs() < 3 * se1).all()
    assert (m10 > true_nll - 3 * se10).all() and (m100 > true_nll - 3 * se100).all()
    assert (m1 - m10 > 0.3 * gap).all() and (m10 > m100 - 3 * (se10 + se100)).all()


def test_iw_nll_one_sample_is_the_monte_carlo_elbo():
    """With the flow prior the KL is the one-sample estimate log q(z|x) - log p(z); iw_nll with
    S = 1 and the same generator seed draws the same z, so it equals recon + kl exactly."""
    model = make(latent_dim=3, prior="flow")
    randomise(model.flow, std=0.3, seed=8)
    x = torch.randint(0, 2, (5, 3, 3), generator=torch.Generator().manual_seed(9))
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(10))
    iw = model.iw_nll(x, samples=1, generator=torch.Generator().manual_seed(10))
    assert torch.allclose(iw, (terms.recon + terms.kl).detach(), rtol=0, atol=1e-10)
    kl = model.kl(x, samples=20_000, generator=torch.Generator().manual_seed(11))
    assert kl.shape == (5,) and (kl > 0).all()


# --- AF prior ------------------------------------------------------------------------------------
def test_made_is_autoregressive():
    torch.manual_seed(0)
    made = MADE(4, 12).double()
    randomise(made, std=0.5, seed=12)
    z = torch.randn(4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: torch.cat(made(v[None]), 1)[0], z)   # (2D, D)
    for block in jac.view(2, 4, 4):
        assert torch.equal(block.triu() != 0, torch.zeros(4, 4, dtype=torch.bool)), "m_i or s_i sees z_>=i"
        assert (block.tril(-1) != 0).sum() == 6, "m_i, s_i should see all of z_<i"


def test_flow_prior_identity_at_init_and_invertible():
    """At init the AF prior is exactly N(0, I). After randomising: from_noise inverts to_noise,
    log p(z) equals log N(eps) + log|det d eps/dz| (autograd Jacobian), and a VLAE with the flow
    prior samples z through it."""
    model = make(latent_dim=3, prior="flow")
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    std = (-0.5 * (z ** 2 + math.log(2 * math.pi))).sum(1)
    assert torch.allclose(model.prior_log_prob(z), std, rtol=0, atol=1e-12)
    flow = model.flow
    randomise(flow, std=0.4, seed=14)
    eps, logdet = flow.to_noise(z)
    assert torch.allclose(flow.from_noise(eps), z, rtol=0, atol=1e-10)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow.to_noise(v[None])[0][0], z[i])
        assert abs(torch.linalg.slogdet(jac).logabsdet.item() - logdet[i].item()) < 1e-10
    assert not torch.allclose(flow.log_prob(z), std)
    a = model.sample_prior(4, generator=torch.Generator().manual_seed(15))
    e = torch.randn(4, 3, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    assert torch.allclose(a, flow.from_noise(e), rtol=0, atol=0)


def test_flow_prior_normalises():
    """2-d AF prior with random weights: exp(log p(z)) integrates to 1 on a fine grid."""
    torch.manual_seed(0)
    flow = AutoregressiveFlowPrior(2, layers=2, hidden=8).double()
    randomise(flow, std=0.4, seed=16)
    t = torch.linspace(-10, 10, 401, dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)
    with torch.no_grad():
        total = flow.log_prob(grid).exp().sum() * (t[1] - t[0]) ** 2
    assert abs(total.item() - 1.0) < 1e-4


# --- objective, training -------------------------------------------------------------------------
@pytest.mark.parametrize("prior", ["normal", "flow"])
def test_training_loss_nll_and_free_bits(prior):
    model = make(image_shape=(4, 4), latent_dim=4, prior=prior)
    x = torch.randint(0, 2, (6, 4, 4), generator=torch.Generator().manual_seed(17))
    t = model.elbo_terms(x, generator=torch.Generator().manual_seed(18))
    loss = model.training_loss(x, generator=torch.Generator().manual_seed(18))
    assert loss.dim() == 0 and torch.allclose(loss, (t.recon + t.kl).mean(), rtol=0, atol=1e-12)
    out = model.nll(x, generator=torch.Generator().manual_seed(18))
    assert torch.allclose(out.nats, loss.detach(), rtol=0, atol=1e-12)
    assert torch.allclose(out.bits_per_dim, out.nats / (16 * math.log(2)), rtol=0, atol=1e-12)
    # a free-bits floor far above the actual KL replaces the KL term by the floor
    fb = make(image_shape=(4, 4), latent_dim=4, prior=prior, free_bits=50.0)
    fb_loss = fb.training_loss(x, generator=torch.Generator().manual_seed(18))
    assert torch.allclose(fb_loss, t.recon.mean() + 50.0, rtol=0, atol=1e-10)
    fb_loss.backward()
    assert fb.encoder[-1].weight.grad.abs().sum() > 0          # recon still trains the encoder


def test_free_bits_is_per_dimension_floor():
    """Normal prior: sum_j max(free_bits / D, mean_batch KL_j); dims above the floor keep their KL."""
    model = make(image_shape=(4, 4), latent_dim=4, free_bits=0.4)
    randomise(model.encoder, std=0.7, seed=19)
    x = torch.randint(0, 2, (6, 4, 4), generator=torch.Generator().manual_seed(20))
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        per_dim = (0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)).mean(0)
        recon = model.elbo_terms(x, generator=torch.Generator().manual_seed(21)).recon
        loss = model.training_loss(x, generator=torch.Generator().manual_seed(21))
    assert torch.allclose(loss, recon.mean() + per_dim.clamp(min=0.1).sum(), rtol=0, atol=1e-12)


def templates_data(n: int, g: torch.Generator, templates: torch.Tensor) -> torch.Tensor:
    x = templates[torch.randint(0, len(templates), (n,), generator=g)]
    flip = torch.rand(x.shape, generator=g) < 0.05
    return torch.where(flip, 1 - x, x)


@pytest.mark.slow
def test_training_reduces_loss_and_uses_z():
    """8x8 binary images: two random templates with 5% pixel flips. 300 Adam steps roughly halve
    the loss, and with the 2-layer (local) decoder the model puts > 0.1 nats into z."""
    templates = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5).long()
    torch.manual_seed(1)
    model = VLAE(num_classes=2, image_shape=(8, 8), latent_dim=4, decoder_hidden=8, encoder_hidden=8)
    held = templates_data(64, torch.Generator().manual_seed(5), templates)
    with torch.no_grad():
        before = model.training_loss(held, generator=torch.Generator().manual_seed(9)).item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g, noise = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    for _ in range(300):
        loss = model.training_loss(templates_data(32, g, templates), generator=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.training_loss(held, generator=torch.Generator().manual_seed(9)).item()
    assert after < 0.6 * before, (before, after)
    assert model.kl(held).mean().item() > 0.1


# --- sampling and validation ---------------------------------------------------------------------
@pytest.mark.parametrize("prior", ["normal", "flow"])
def test_sample_shapes_logprob_and_reproducibility(prior):
    model = make(num_classes=5, image_shape=(4, 4), latent_dim=3, prior=prior)
    if prior == "flow":
        randomise(model.flow, std=0.3, seed=22)
    images, lp = model.sample(3, generator=torch.Generator().manual_seed(23))
    assert images.shape == (3, 4, 4) and images.dtype == torch.long and lp.shape == (3,)
    assert int(images.min()) >= 0 and int(images.max()) < 5
    z = model.sample_prior(3, generator=torch.Generator().manual_seed(23))   # the z drawn first
    with torch.no_grad():
        assert torch.allclose(lp, model.decoder_log_prob(images, z), rtol=0, atol=1e-9)
    again, lp2 = model.sample(3, generator=torch.Generator().manual_seed(23), cached=False)
    assert torch.equal(images, again) and torch.allclose(lp, lp2, rtol=0, atol=1e-9)   # cached == naive
    with pytest.raises(ValueError, match="image_shape must be the model's"):
        model.sample(2, generator=torch.Generator().manual_seed(23), image_shape=(2, 5))


def test_validation():
    model = make(image_shape=(3, 3), latent_dim=2)
    x = torch.randint(0, 2, (2, 3, 3))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="cond must be None"):
        model.training_loss(x, cond=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="cond must be None"):
        model.nll(x, cond=torch.zeros(2))
    with pytest.raises(ValueError, match="cond must be None"):
        model.sample(2, generator=g, cond=torch.zeros(2, 2))
    for bad in (None, (3,), (0, 3), (3, 2.5), (3, 3, 3)):
        with pytest.raises(ValueError):
            VLAE(num_classes=2, image_shape=bad)
    with pytest.raises(ValueError):
        model.sample(2, generator=g, image_shape=(0, 2))
    for kw in ({"prior": "iaf"}, {"free_bits": -1.0}, {"free_bits": float("nan")}, {"latent_dim": 0},
               {"decoder_layers": 0}, {"num_classes": 1}):
        with pytest.raises(ValueError):
            VLAE(**{"num_classes": 2, "image_shape": (3, 3), **kw})
    with pytest.raises(ValueError):
        model.nll(torch.randint(0, 2, (2, 4, 3)))               # wrong image size for the encoder
    with pytest.raises(ValueError):
        model.nll(x.double())                                    # float pixels
    with pytest.raises(ValueError):
        model.nll(x + 2)                                         # out of range
    with pytest.raises(ValueError):
        model.iw_nll(x, samples=0, generator=g)
    with pytest.raises(ValueError):
        model.iw_nll(x, samples=2, generator=None)
    with pytest.raises(ValueError):
        model.sample(2, generator=0)
    with pytest.raises(ValueError):
        model.elbo_terms(x, generator="seed")
