"""How far simulated readouts are from real ones, when the two come from different recordings.

The clips we can simulate and the readouts the physical sensor produced show the same nine
gestures but are different recordings, so readouts cannot be compared one to one; their
distributions can. The primary distance is the **per-pixel Wasserstein-1** distance, in readout
levels, averaged over the 64x64 pixels:

    D = mean over pixels (i, j) of  W1( sim levels at (i, j),  real levels at (i, j) )

and W1 between two distributions of levels is sum over v of |F_sim(v) - F_real(v)| (their CDFs).
Why this one: it is in the readout's own unit (levels, 10 per MAC); it sees everything the
output stage can get wrong at a pixel at once -- an offset moves the distribution (W1 = |offset|),
a wrong spread or gain stretches it, saturation piles mass at 0 or 255 -- and unlike a histogram
L1 distance it does not punish the simulator's lattice of levels (noise-free o is an integer,
i.e. every 10th level) against the hardware's continuous levels. Pooling all pixels first would
hide per-pixel fixed-pattern offsets; we report the pooled W1 too. Reported alongside: the RMSE
between per-pixel mean maps and between per-pixel standard-deviation maps, the saturation rates
(share of levels at 0 and at 255) and the total-variation distance between pooled 32-bin
histograms. Two samples of the *same* source still differ by chance; :func:`distance_floor`
measures that floor with real readouts on both sides, at the same sample sizes.
"""
from __future__ import annotations

import numpy as np

LEVELS = 256
PRIMARY = "per_pixel_w1"


def _check(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[0] < 1:
        raise ValueError(f"{name} must be (N, H, W) uint8 readouts with N >= 1, got {a.shape} {a.dtype}")
    return a


def per_pixel_cdf(readouts: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (H * W, 256) empirical CDF of every pixel's level."""
    n = readouts.shape[0]
    flat = readouts.reshape(n, -1).astype(np.int64)
    pixels = flat.shape[1]
    index = (np.arange(pixels, dtype=np.int64)[None, :] * LEVELS + flat).ravel()
    hist = np.bincount(index, minlength=pixels * LEVELS).reshape(pixels, LEVELS) / n
    return np.cumsum(hist, axis=1)


def pooled_hist(readouts: np.ndarray) -> np.ndarray:
    """Share of all levels of all pixels at each of the 256 levels."""
    return np.bincount(readouts.ravel(), minlength=LEVELS) / readouts.size


def per_pixel_w1(sim: np.ndarray, real: np.ndarray) -> float:
    """Mean over pixels of the W1 distance (levels) between the two pixel-level distributions."""
    sim, real = _check(sim, "sim"), _check(real, "real")
    if sim.shape[1:] != real.shape[1:]:
        raise ValueError(f"sim and real readouts differ in size: {sim.shape[1:]} vs {real.shape[1:]}")
    return float(np.abs(per_pixel_cdf(sim) - per_pixel_cdf(real)).sum(axis=1).mean())


def pooled_w1(sim: np.ndarray, real: np.ndarray) -> float:
    """W1 distance (levels) between the level distributions pooled over all pixels."""
    return float(np.abs(np.cumsum(pooled_hist(_check(sim, "sim")))
                        - np.cumsum(pooled_hist(_check(real, "real")))).sum())


def distance_report(sim: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Every distance of the module docstring (levels, or shares for rates); ``per_pixel_w1`` is primary."""
    sim, real = _check(sim, "sim"), _check(real, "real")
    s, r = sim.astype(np.float64), real.astype(np.float64)
    coarse = lambda x: np.bincount(x.ravel() // 8, minlength=32) / x.size  # noqa: E731
    return {
        PRIMARY: per_pixel_w1(sim, real),
        "pooled_w1": pooled_w1(sim, real),
        "mean_map_rmse": float(np.sqrt(np.mean((s.mean(0) - r.mean(0)) ** 2))),
        "std_map_rmse": float(np.sqrt(np.mean((s.std(0) - r.std(0)) ** 2))),
        "hist_tv_32bins": float(0.5 * np.abs(coarse(sim) - coarse(real)).sum()),
        "sat_low_sim": float(np.mean(sim == 0)), "sat_low_real": float(np.mean(real == 0)),
        "sat_high_sim": float(np.mean(sim == 255)), "sat_high_real": float(np.mean(real == 255)),
        "mean_sim": float(s.mean()), "mean_real": float(r.mean()),
        "std_sim": float(s.std()), "std_real": float(r.std()),
    }


def distance_floor(real: np.ndarray, reference: np.ndarray, *, n: int, seed: int = 0,
                   repeats: int = 5) -> dict[str, float]:
    """The primary and pooled distances between ``n`` readouts drawn from ``real`` and all of
    ``reference`` (both real): what a perfect simulator would still score at these sample sizes."""
    real, reference = _check(real, "real"), _check(reference, "reference")
    if not (1 <= n <= real.shape[0]):
        raise ValueError(f"n must lie in 1..{real.shape[0]}, got {n}")
    rng = np.random.default_rng(seed)
    draws = [real[rng.choice(real.shape[0], n, replace=False)] for _ in range(repeats)]
    return {PRIMARY: float(np.mean([per_pixel_w1(d, reference) for d in draws])),
            "pooled_w1": float(np.mean([pooled_w1(d, reference) for d in draws])),
            "n": int(n), "repeats": int(repeats)}
