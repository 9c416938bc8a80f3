"""Variational Lossy Autoencoder (Chen et al. 2017, "Variational Lossy Autoencoder").

A VAE whose decoder p(x|z) is an autoregressive Gated PixelCNN with a deliberately *small*
receptive field. Local statistics (texture, edges, pixel noise) are cheap for the decoder to model
from the few pixels it sees; anything global -- which template, where the object is -- cannot be
read from a small window, so to get a good likelihood it must go through the latent code z. That
is the VLAE idea: the receptive field decides what z encodes (a lossy, global code) and avoids
the "posterior collapse" of a VAE with a fully expressive PixelCNN decoder.

Model (images (B, H, W) long with K levels, same conventions as
:class:`~pixelrnn.generative.common.AutoregressiveImageModel`):

  * q(z|x) = N(mu(x), diag exp(logvar(x))): ``encoder_layers`` stride-2 3x3 convolutions with
    ReLU, then one linear layer to (mu, logvar) of size ``latent_dim``;
  * p(z): standard normal (``prior="normal"``, default) or an affine autoregressive flow
    (``prior="flow"``, the paper's "AF prior"): ``flow_layers`` MADE layers (Germain et al. 2015)
    map z to eps, ``eps_i = (z_i - m_i(z_<i)) * exp(-s_i(z_<i))``, with the dimension order
    reversed between layers, and ``log p(z) = log N(eps; 0, I) - sum s``. Density evaluation is
    one parallel pass; sampling inverts each layer in ``latent_dim`` sequential passes. The last
    MADE layer is zero-initialised, so the flow starts as the identity (p(z) = N(0, I));
  * p(x|z): ``GatedPixelCNN(num_classes=K, cond_channels=map_channels, num_layers=decoder_layers,
    kernel_size=decoder_kernel_size)``; z is decoded to a (map_channels, H, W) map (linear to a
    coarse grid, nearest upsampling, a 3x3 convolution) that enters the pre-activations of every
    layer through 1x1 convolutions (location-dependent conditioning). A spatially uniform
    z-bias was tried first: with a small window the decoder then barely used z (KL < 0.5 nats
    on digits even with the KL weight at 0.5).
    Its receptive field is :attr:`VLAE.decoder_receptive_field`.

Training objective (nats per image): ``recon + kl`` with ``recon = -log p(x|z)`` for one
reparameterised sample z ~ q(z|x) and ``kl = KL(q(z|x) || p(z))`` -- analytic for the normal
prior, the single-sample Monte Carlo estimate ``log q(z|x) - log p(z)`` (same z) for the flow.

Free bits (Kingma et al. 2016, the IAF paper): with ``free_bits = lambda > 0`` nats,
:meth:`VLAE.training_loss` replaces the KL term by ``sum_j max(lambda / latent_dim, mean_batch
KL_j)`` where KL_j is the analytic KL of latent dimension j: each dimension gets lambda/latent_dim
nats for free, averaged over the minibatch (not per image), so the optimiser has no incentive to
push a dimension's KL below the floor. For the flow prior the KL does not split over dimensions;
there the batch-mean total KL is floored at lambda. Reported numbers (:meth:`elbo_terms`,
:meth:`nll`, :meth:`kl`) never include the floor.

Likelihood: a VLAE has no exact log p(x). :meth:`VLAE.nll` reports the negative ELBO, an UPPER
BOUND on the true NLL (in expectation: it is a one-sample estimate), and :meth:`VLAE.iw_nll` the
importance-weighted bound of Burda et al. (2016), which tightens towards the true NLL as
``samples`` grows.

Deviations from the paper (a small-scale rendition, not a reproduction): q(z|x) is a plain
diagonal Gaussian from a small conv encoder (the paper uses bigger ResNet-style networks); the AF
prior is a short stack of one-hidden-layer MADEs, off by default (``prior="normal"``); the decoder
is a Gated PixelCNN (no blind spot) whose window is restricted only by its depth and kernel size,
with z entering as a decoded spatial map in every layer; no paper numbers are reproduced. With the flow
prior the KL is a one-sample Monte Carlo estimate.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import NLL, _check_int, _check_shape
from .gated import GatedPixelCNN

PRIORS = ("normal", "flow")
_LOG_2PI = math.log(2 * math.pi)


class ELBOTerms(NamedTuple):
    """Per-image terms of the negative ELBO in nats: ``recon = -log p(x|z)`` (one z ~ q(z|x)) and
    ``kl = KL(q(z|x) || p(z))``; ``recon + kl`` is the negative ELBO."""
    recon: Tensor
    kl: Tensor


def _check_generator(generator, *, required: bool) -> torch.Generator | None:
    if generator is None and not required:
        return None
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _std_normal_log_prob(z: Tensor) -> Tensor:
    """Per-dimension log N(z; 0, 1)."""
    return -0.5 * (z * z + _LOG_2PI)


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, in_features: int, out_features: int, *, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask.to(self.weight.dtype), self.bias)


class MADE(nn.Module):
    """Autoregressive map z (B, D) -> (m, s), each (B, D), where m_i and s_i depend on z_<i only.

    One hidden layer (tanh) of ``hidden`` units with MADE degrees; the output layer is
    zero-initialised (m = s = 0: the identity transform).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim = dim
        d_in = torch.arange(1, dim + 1)                       # input degrees 1..D
        d_hid = torch.arange(hidden) % max(1, dim - 1) + 1    # hidden degrees in [1, D-1]
        d_out = torch.arange(1, dim + 1).repeat(2)            # (m, s) outputs, degrees 1..D
        self.inp = MaskedLinear(dim, hidden, mask=d_hid[:, None] >= d_in[None, :])
        self.out = MaskedLinear(hidden, 2 * dim, mask=d_out[:, None] > d_hid[None, :])
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.out(torch.tanh(self.inp(z))).chunk(2, dim=1)
        return m, s


class AutoregressiveFlowPrior(nn.Module):
    """p(z) via an affine autoregressive flow z -> eps ~ N(0, I) (the paper's "AF prior")."""

    def __init__(self, dim: int, *, layers: int, hidden: int):
        super().__init__()
        self.dim = dim
        self.mades = nn.ModuleList(MADE(dim, hidden) for _ in range(layers))

    def to_noise(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z -> (eps, log|det d eps / d z|) (one parallel pass per layer)."""
        h, logdet = z, z.new_zeros(z.shape[0])
        for i, made in enumerate(self.mades):
            if i:
                h = h.flip(1)
            m, s = made(h)
            h = (h - m) * torch.exp(-s)
            logdet = logdet - s.sum(1)
        return h, logdet

    def log_prob(self, z: Tensor) -> Tensor:
        eps, logdet = self.to_noise(z)
        return _std_normal_log_prob(eps).sum(1) + logdet

    def from_noise(self, eps: Tensor) -> Tensor:
        """Inverse of :meth:`to_noise`: ``dim`` sequential passes per layer (entry i is final
        after pass i because m_i, s_i depend on entries < i only)."""
        h = eps
        for i in reversed(range(len(self.mades))):
            made, target = self.mades[i], h
            h = torch.zeros_like(target)
            for _ in range(self.dim):
                m, s = made(h)
                h = target * torch.exp(s) + m
            if i:
                h = h.flip(1)
        return h


class VLAE(nn.Module):
    """Variational Lossy Autoencoder over (B, H, W) images with ``num_classes`` levels.

    See the module docstring for the model, the objective and the deviations from the paper.
    The model is unconditional: every ``cond`` argument must be ``None``.
    """

    def __init__(self, *, num_classes: int, image_shape, latent_dim: int = 16,
                 decoder_layers: int = 2, decoder_hidden: int = 32, decoder_kernel_size: int = 3,
                 encoder_layers: int = 2, encoder_hidden: int = 32, prior: str = "normal",
                 flow_layers: int = 2, flow_hidden: int = 32, free_bits: float = 0.0,
                 map_channels: int = 16):
        super().__init__()
        self.image_shape = _check_shape(image_shape)
        self.latent_dim = _check_int("latent_dim", latent_dim, minimum=1)
        self.decoder_layers = _check_int("decoder_layers", decoder_layers, minimum=1)
        self.decoder_kernel_size = _check_int("decoder_kernel_size", decoder_kernel_size, minimum=3)
        _check_int("encoder_layers", encoder_layers, minimum=1)
        _check_int("encoder_hidden", encoder_hidden, minimum=1)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)) \
                or not math.isfinite(free_bits) or free_bits < 0:
            raise ValueError(f"free_bits must be a finite number >= 0, got {free_bits!r}")
        self.prior_kind = prior
        self.free_bits = float(free_bits)

        self.decoder = GatedPixelCNN(num_classes=num_classes, hidden=decoder_hidden,
                                     num_layers=decoder_layers, kernel_size=decoder_kernel_size,
                                     cond_channels=_check_int("map_channels", map_channels, minimum=1),
                                     image_shape=self.image_shape)
        # z -> a (map_channels, H, W) conditioning map: linear to a coarse grid, nearest upsampling,
        # one 3x3 convolution (location-dependent conditioning, as in the conditional PixelCNN's
        # auto-encoder; a spatially uniform z-bias alone gives the local decoder almost no use of z)
        gh, gw = (self.image_shape[0] + 3) // 4, (self.image_shape[1] + 3) // 4
        self.z_to_map = nn.Sequential(
            nn.Linear(latent_dim, map_channels * gh * gw), nn.Unflatten(1, (map_channels, gh, gw)),
            nn.Upsample(size=self.image_shape, mode="nearest"), nn.ReLU(),
            nn.Conv2d(map_channels, map_channels, 3, padding=1))
        self.num_classes = self.decoder.num_classes

        convs: list[nn.Module] = []
        h, w = self.image_shape
        for i in range(encoder_layers):
            convs += [nn.Conv2d(1 if i == 0 else encoder_hidden, encoder_hidden, 3, stride=2, padding=1),
                      nn.ReLU()]
            h, w = (h + 1) // 2, (w + 1) // 2               # 3x3, stride 2, padding 1
        self.encoder = nn.Sequential(*convs, nn.Flatten(), nn.Linear(encoder_hidden * h * w, 2 * latent_dim))

        self.flow = None
        if prior == "flow":
            self.flow = AutoregressiveFlowPrior(
                latent_dim, layers=_check_int("flow_layers", flow_layers, minimum=1),
                hidden=_check_int("flow_hidden", flow_hidden, minimum=1))

    # --- inputs -------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def decoder_receptive_field(self) -> tuple[int, int, int]:
        """``(rows_above, cols_left, cols_right)`` of the decoder's causal window.

        The logits at (r, c) depend on the input exactly at rows r - rows_above .. r - 1,
        columns c - cols_left .. c + cols_right, and on row r at columns c - cols_left .. c - 1
        (clipped to the image). With L layers of k x k kernels each layer reaches k // 2 further
        (the first layer's vertical taps are strictly above, its horizontal ones strictly left;
        later layers add rows/columns 0 .. k // 2), so all three numbers are L * (k // 2).
        """
        reach = self.decoder_layers * (self.decoder_kernel_size // 2)
        return reach, reach, reach

    def check_images(self, x) -> Tensor:
        """(B, H, W) integer images in [0, K) of the model's ``image_shape`` (the encoder's
        linear layer fixes the size)."""
        x = self.decoder.check_images(x)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"images must be {self.image_shape[0]}x{self.image_shape[1]}, got {tuple(x.shape[1:])}")
        return x

    def check_cond(self, cond) -> None:
        if cond is not None:
            raise ValueError("VLAE is unconditional; cond must be None")
        return None

    def encode(self, x: Tensor) -> Tensor:
        """Integer pixels -> float map in [-1, 1], (B, 1, H, W) (the decoder's encoding)."""
        return self.decoder.encode(x)

    # --- latent distributions -----------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each (B, latent_dim), of q(z|x)."""
        x = self.check_images(x)
        mu, logvar = self.encoder(self.encode(x)).chunk(2, dim=1)
        return mu, logvar

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z), shape (B,)."""
        if self.flow is None:
            return _std_normal_log_prob(z).sum(1)
        return self.flow.log_prob(z)

    def sample_prior(self, n: int, *, generator: torch.Generator) -> Tensor:
        """z ~ p(z), shape (n, latent_dim)."""
        _check_int("n", n, minimum=1)
        generator = _check_generator(generator, required=True)
        eps = torch.randn(n, self.latent_dim, generator=generator, dtype=self.dtype)
        return eps if self.flow is None else self.flow.from_noise(eps)

    @staticmethod
    def _posterior_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        return (-0.5 * ((z - mu) ** 2 * torch.exp(-logvar) + logvar + _LOG_2PI)).sum(1)

    @staticmethod
    def _analytic_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension, (B, D)."""
        return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar)

    def _reparameterise(self, mu: Tensor, logvar: Tensor, generator) -> Tensor:
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) in nats, shape (B,) (exact: the decoder is autoregressive given z)."""
        return self.decoder.log_prob(x, cond=self.z_to_map(z))

    # --- objectives ---------------------------------------------------------------------------
    def _terms(self, x: Tensor, generator) -> tuple[Tensor, Tensor, Tensor]:
        """(recon (B,), kl (B,), kl_per_dim (B, D) or None for the flow prior)."""
        x = self.check_images(x)
        generator = _check_generator(generator, required=False)
        mu, logvar = self.posterior(x)
        z = self._reparameterise(mu, logvar, generator)
        recon = -self.decoder_log_prob(x, z)
        if self.flow is None:
            per_dim = self._analytic_kl_per_dim(mu, logvar)
            return recon, per_dim.sum(1), per_dim
        kl = self._posterior_log_prob(z, mu, logvar) - self.flow.log_prob(z)
        return recon, kl, None

    def elbo_terms(self, x: Tensor, *, generator: torch.Generator | None = None) -> ELBOTerms:
        """Per-image ``ELBOTerms(recon, kl)`` in nats with one reparameterised z ~ q(z|x) drawn
        with ``generator`` (the global RNG if None). Differentiable."""
        recon, kl, _ = self._terms(x, generator)
        return ELBOTerms(recon, kl)

    def training_loss(self, x: Tensor, *, cond=None, generator: torch.Generator | None = None) -> Tensor:
        """Scalar loss: mean over the batch of ``recon + kl`` nats/image, with the free-bits
        floor on the KL when ``free_bits > 0`` (see the module docstring)."""
        self.check_cond(cond)
        recon, kl, per_dim = self._terms(x, generator)
        if self.free_bits <= 0:
            return (recon + kl).mean()
        if per_dim is None:
            kl_term = kl.mean().clamp(min=self.free_bits)
        else:
            kl_term = per_dim.mean(0).clamp(min=self.free_bits / self.latent_dim).sum()
        return recon.mean() + kl_term

    def nll(self, x: Tensor, *, cond=None, generator: torch.Generator | None = None) -> NLL:
        """Negative ELBO, mean over the batch, in nats/image and bits/dim.

        NOT an exact NLL: the negative ELBO is an UPPER BOUND on -log p(x) (in expectation; this
        is a one-sample estimate). Use :meth:`iw_nll` for a tighter bound.
        """
        self.check_cond(cond)
        x = self.check_images(x)
        recon, kl, _ = self._terms(x, generator)
        nats = (recon + kl).mean()
        return NLL(nats, nats / (x.shape[1] * x.shape[2] * math.log(2)))

    @torch.no_grad()
    def iw_nll(self, x: Tensor, *, samples: int, generator: torch.Generator) -> Tensor:
        """Importance-weighted bound (IWAE, Burda et al. 2016) on -log p(x), nats, shape (B,):

            -log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x),    z_s ~ q(z|x) i.i.d.

        An upper bound on the true NLL in expectation, non-increasing in S (in expectation) and
        equal to the negative ELBO at S = 1 (with a Monte Carlo KL). No gradient; the decoder runs
        on chunks of ~64k pixels (x repeated over several samples at once).
        """
        x = self.check_images(x)
        _check_int("samples", samples, minimum=1)
        generator = _check_generator(generator, required=True)
        mu, logvar = self.posterior(x)
        b = x.shape[0]
        chunk = max(1, 2 ** 16 // (b * x.shape[1] * x.shape[2]))   # ~64k pixels per decoder pass
        log_w = []
        for start in range(0, samples, chunk):
            s = min(chunk, samples - start)
            mu_s, lv_s = mu.repeat(s, 1), logvar.repeat(s, 1)
            z = self._reparameterise(mu_s, lv_s, generator)
            lw = (self.decoder_log_prob(x.repeat(s, 1, 1), z) + self.prior_log_prob(z)
                  - self._posterior_log_prob(z, mu_s, lv_s))
            log_w.append(lw.view(s, b))
        log_w = torch.cat(log_w, 0)
        return -(torch.logsumexp(log_w, 0) - math.log(samples))

    def kl(self, x: Tensor, *, samples: int = 64, generator: torch.Generator | None = None) -> Tensor:
        """KL(q(z|x) || p(z)) in nats, shape (B,), for reporting (no gradient).

        Normal prior: analytic from the posterior mean and variance (``samples`` and
        ``generator`` unused, deterministic). Flow prior: Monte Carlo mean over ``samples``
        draws z ~ q(z|x) of ``log q(z|x) - log p(z)``.
        """
        x = self.check_images(x)
        _check_int("samples", samples, minimum=1)
        generator = _check_generator(generator, required=False)
        with torch.no_grad():
            mu, logvar = self.posterior(x)
            if self.flow is None:
                return self._analytic_kl_per_dim(mu, logvar).sum(1)
            mu_s, lv_s = mu.repeat(samples, 1), logvar.repeat(samples, 1)
            z = self._reparameterise(mu_s, lv_s, generator)
            est = self._posterior_log_prob(z, mu_s, lv_s) - self.flow.log_prob(z)
            return est.view(samples, x.shape[0]).mean(0)

    # --- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, cond=None, image_shape=None,
               cached: bool = True):
        """z ~ p(z), then x ~ p(x|z) pixel by pixel (the decoder's ``sample(cond=z, cached=)``).

        Both draws use ``generator``. ``image_shape`` must be the model's (z is decoded to a
        map of that size). Returns ``(images (n, H, W) long, log p(x|z) (n,))``.
        """
        self.check_cond(cond)
        _check_int("n", n, minimum=1)
        generator = _check_generator(generator, required=True)
        shape = _check_shape(self.image_shape if image_shape is None else image_shape)
        if shape != self.image_shape:
            raise ValueError(f"image_shape must be the model's {self.image_shape} (z is decoded to a map of that size)")
        z = self.sample_prior(n, generator=generator)
        return self.decoder.sample(n, generator=generator, cond=self.z_to_map(z), image_shape=shape, cached=cached)
