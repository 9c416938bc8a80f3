"""Fit the simulator's noise model so simulated readouts look like a physical sensor's.

What is fitted (``firmware_sim.noise.NoiseModel``): the in-sensor noise ``conv_sigma`` and
``gate_sigma`` (they change binary decisions, hence the spread of o), and the output stage
``o_read = out_gain * o + N(0, out_sigma^2) + out_offset + offset_map``. The distance minimised
and reported is defined in :mod:`calib.distance` (per-pixel Wasserstein-1, in readout levels).

How, in three stages (small searches, every simulation on the fast path):

1. global parameters: for every (conv_sigma, gate_sigma) of a grid the clips are simulated once;
   (out_gain, out_sigma, out_offset) are then searched on a fixed random sample of the simulated
   o values against the pooled real level distribution (pooled W1), because these act on all
   pixels alike;
2. the per-pixel offset map: the difference of per-pixel mean levels (real minus simulated),
   iterated to account for saturation, then shrunk towards zero by the share of its variance that
   is not sampling noise (the clips and the readouts are different recordings, so a per-pixel
   mean is noisy) and re-centred (its mean goes into ``out_offset``);
3. ``out_sigma`` again, with the map in place, on the primary per-pixel distance.

The distance is reported on held-out data: clips and readouts are both split in two stratified
halves; parameters fitted on one pair of halves are scored on the other and the two scores
averaged (before = the authors' noise model, after = fitted). The file written is then fitted on
all the data.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calib.distance import PRIMARY, distance_floor, distance_report, per_pixel_cdf, per_pixel_w1
from calib.layout import require_authors_readout
from core.atomic import atomic_open
from core.errors import InputError
from core.readouts import load_readouts, stratified_split
from firmware_sim.encoding import IW, ZERO_LEVEL
from firmware_sim.noise import NoiseModel

FORMAT = "pixelrnn-edge-noise/1"


def _grid(values, name: str, *, lo: float, hi: float, lo_open: bool = False) -> tuple[float, ...]:
    if not (isinstance(values, (tuple, list)) and values):
        raise InputError(f"{name} must be a non-empty list of numbers, got {values!r}")
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v <= hi
        ok = ok and (v > lo if lo_open else v >= lo)
        if not ok:
            raise InputError(f"every value of {name} must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class NoiseFitOptions:
    """Search grids and protocol of the noise fit (defaults: the settings behind docs/RESULTS.md)."""

    conv_sigmas: tuple[float, ...] = (0.6, 1.0, 1.5, 2.0, 3.0)
    gate_sigmas: tuple[float, ...] = (0.6, 1.0, 1.5, 2.0, 3.0)
    gains: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1, 1.2)
    out_sigmas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
    offset_map: bool = True          # fit the per-pixel fixed-pattern offset
    holdout: bool = True             # report the distance on held-out halves (cross-fitted)
    seed: int = 0                    # splits, simulation noise, search sample
    sample: int = 20000              # simulated o values used in the global search

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_sigmas", _grid(self.conv_sigmas, "conv_sigmas", lo=0, hi=10))
        object.__setattr__(self, "gate_sigmas", _grid(self.gate_sigmas, "gate_sigmas", lo=0, hi=10))
        object.__setattr__(self, "gains", _grid(self.gains, "gains", lo=0, hi=10, lo_open=True))
        object.__setattr__(self, "out_sigmas", _grid(self.out_sigmas, "out_sigmas", lo=0, hi=20))
        for name in ("offset_map", "holdout"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.sample, int) and self.sample >= 1000):
            raise InputError(f"sample must be an integer >= 1000, got {self.sample!r}")


# -- simulation ------------------------------------------------------------------------------------
class _Simulations:
    """o (unclipped, MAC units) of every clip for each (conv_sigma, gate_sigma), computed once."""

    def __init__(self, sensor, frames: np.ndarray, seed: int, progress) -> None:
        self.sensor, self.frames, self.seed, self.progress = sensor, frames, seed, progress
        self._cache: dict[tuple[float, float], np.ndarray] = {}

    def output(self, conv: float, gate: float) -> np.ndarray:
        key = (conv, gate)
        if key not in self._cache:
            from firmware_sim.simulate import simulate
            res = simulate(weights=self.sensor, frames=self.frames, noise=NoiseModel(conv, gate, 0.0),
                           seed=self.seed, stages=())
            self._cache[key] = res.output.astype(np.float64)
            if self.progress is not None:
                self.progress.update(1)
        return self._cache[key]

    def readouts(self, noise: NoiseModel, idx: np.ndarray, *, seed: int) -> np.ndarray:
        from firmware_sim.simulate import simulate
        return simulate(weights=self.sensor, frames=self.frames[idx], noise=noise, seed=seed, stages=()).readout


def _levels(o: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(ZERO_LEVEL + IW * o), 0, 255).astype(np.int64)


def _pooled_cdf_rows(levels: np.ndarray) -> np.ndarray:
    """(K, M) integer levels -> (K, 256) CDFs, one per row."""
    k, m = levels.shape
    idx = (np.arange(k)[:, None] * 256 + levels).ravel()
    return np.cumsum(np.bincount(idx, minlength=k * 256).reshape(k, 256) / m, axis=1)


# -- the fit ---------------------------------------------------------------------------------------
def _fit_global(sims: _Simulations, clip_idx: np.ndarray, real: np.ndarray, options: NoiseFitOptions) -> dict:
    """Stage 1: (conv, gate, gain, sigma, offset) minimising the pooled W1 on a fixed sample."""
    rng = np.random.default_rng(options.seed)
    real_cdf = np.cumsum(np.bincount(real.ravel(), minlength=256) / real.size)
    real_median_o = (np.median(real) + 0.5 - ZERO_LEVEL) / IW
    size = len(clip_idx) * real.shape[1] * real.shape[2]
    pick = rng.choice(size, min(options.sample, size), replace=False)
    z = rng.standard_normal(pick.size)
    steps = np.arange(-8, 9) * 0.1
    best = None
    for conv in options.conv_sigmas:
        for gate in options.gate_sigmas:
            o = sims.output(conv, gate)[clip_idx].reshape(-1)[pick]
            for gain in options.gains:
                for sigma in options.out_sigmas:
                    v = gain * o + sigma * z
                    offsets = real_median_o - np.median(v) + steps
                    cdfs = _pooled_cdf_rows(_levels(v[None, :] + offsets[:, None]))
                    w1 = np.abs(cdfs - real_cdf[None]).sum(1)
                    i = int(np.argmin(w1))
                    if best is None or w1[i] < best["pooled_w1"]:
                        best = {"conv_sigma": conv, "gate_sigma": gate, "out_gain": gain, "out_sigma": sigma,
                                "out_offset": float(offsets[i]), "pooled_w1": float(w1[i])}
    return best


def _fit_offset_map(o: np.ndarray, z: np.ndarray, real: np.ndarray, params: dict) -> tuple[np.ndarray, float]:
    """Stage 2: per-pixel offset (MAC units, zero mean) and the shrinkage factor applied to it."""
    base = params["out_gain"] * o + params["out_sigma"] * z + params["out_offset"]
    real_f = real.astype(np.float64)
    real_mean = real_f.mean(0)
    sim = _levels(base).astype(np.float64)
    d0 = real_mean - sim.mean(0)
    sampling_var = sim.var(0) / sim.shape[0] + real_f.var(0) / real_f.shape[0]
    centred = d0 - d0.mean()
    shrink = float(np.clip(1.0 - sampling_var.mean() / max(float(np.mean(centred ** 2)), 1e-12), 0.0, 1.0))
    offset = np.zeros(real.shape[1:])
    for _ in range(4):     # mean of clipped levels moves by 10 * P(not saturated) per MAC of offset
        sim = _levels(base + offset)
        unsat = np.mean((sim > 0) & (sim < 255), axis=0)
        offset = offset + (real_mean - sim.mean(0)) / (IW * np.maximum(unsat, 0.25))
    offset = shrink * offset
    return offset, shrink


def _fit_on(sims: _Simulations, clip_idx: np.ndarray, real: np.ndarray, options: NoiseFitOptions) -> tuple[dict, dict]:
    """All three stages on one set of clips and readouts -> (NoiseModel fields, fit details)."""
    params = _fit_global(sims, clip_idx, real, options)
    details = {"stage1_pooled_w1": params.pop("pooled_w1")}
    if not options.offset_map:
        return params, details
    o = sims.output(params["conv_sigma"], params["gate_sigma"])[clip_idx]
    z = np.random.default_rng(options.seed + 1).standard_normal(o.shape)
    offset, shrink = _fit_offset_map(o, z, real, params)
    params["out_offset"] = float(params["out_offset"] + offset.mean())
    offset = offset - offset.mean()
    real_cdf = per_pixel_cdf(real)
    scores = {}
    for sigma in options.out_sigmas:      # stage 3: out_sigma with the map in place
        levels = _levels(params["out_gain"] * o + sigma * z + params["out_offset"] + offset).astype(np.uint8)
        scores[sigma] = float(np.abs(per_pixel_cdf(levels) - real_cdf).sum(1).mean())
    params["out_sigma"] = min(scores, key=scores.get)
    params["offset_map"] = np.round(offset, 4)
    details.update(offset_map_shrinkage=shrink, offset_map_rms=float(np.sqrt(np.mean(offset ** 2))),
                   stage3_per_pixel_w1={f"{k:g}": v for k, v in scores.items()})
    return params, details


def _model(params: dict, model_id: str) -> NoiseModel:
    return NoiseModel(conv_sigma=params["conv_sigma"], gate_sigma=params["gate_sigma"],
                      out_sigma=params["out_sigma"], out_offset=params["out_offset"],
                      out_gain=params["out_gain"], offset_map=params.get("offset_map"), model_id=model_id)


def _halves(labels: np.ndarray | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels) if labels is not None else np.zeros(1, np.int64)
    if labels is not None and counts[counts > 0].min() >= 2:
        return stratified_split(labels, fraction=0.5, seed=seed)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n // 2:]), np.sort(perm[:n // 2])


# -- the command -----------------------------------------------------------------------------------
@dataclass
class NoiseReport:
    noise: NoiseModel
    metric: dict
    fit: dict
    files: dict


def calibrate_noise(*, weights: str | os.PathLike, readouts: str | os.PathLike, clips: str | os.PathLike,
                    out: str | os.PathLike, options: NoiseFitOptions | None = None,
                    progress: bool = False, plots: bool = True) -> NoiseReport:
    """Fit the noise model of ``weights``' sensor program to real ``readouts`` using simulated
    ``clips``; write the calibration JSON ``out`` (and before/after PNGs next to it)."""
    from firmware_sim.clips import load_clips
    from pixelrnn.checkpoint import load_model

    options = options or NoiseFitOptions()
    if not isinstance(options, NoiseFitOptions):
        raise InputError(f"options must be NoiseFitOptions, got {type(options).__name__}")
    out = Path(out)
    if out.suffix != ".json":
        raise InputError(f"output {out} must end in .json (a noise calibration file)")
    if not out.absolute().parent.is_dir():
        raise InputError(f"output folder does not exist: {out.absolute().parent}")
    model = load_model(weights)
    require_authors_readout(model.config.layout, "calib noise", hidden=model.config.hidden_channels)
    sensor = model.sensor_weights()
    model_id = sensor.program_hash()
    real = load_readouts(readouts)
    real.check_program(model_id, what=str(weights))
    data = load_clips(clips, timesteps=sensor.timesteps, num_classes=model.config.num_classes)
    if data.frames.shape[0] < 4:
        raise InputError(f"{clips}: need at least 4 clips to compare distributions, got {data.frames.shape[0]}")
    if real.readouts.shape[0] < 4:
        raise InputError(f"{readouts}: need at least 4 readouts to compare distributions, got {len(real)}")

    n_pairs = len(options.conv_sigmas) * len(options.gate_sigmas)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_pairs, desc="calib noise: simulate", unit="sim", leave=False, disable=None)
    sims = _Simulations(sensor, data.frames, options.seed, bar)
    n_clips = data.frames.shape[0]
    all_clips = np.arange(n_clips)
    before_models = {"authors": NoiseModel.authors(), "off": NoiseModel.off()}
    try:
        held_out = None
        if options.holdout:
            c_halves = _halves(data.labels, n_clips, options.seed)
            r_halves = _halves(real.labels, len(real), options.seed)
            rows = []
            for fit_half, eval_half in ((0, 1), (1, 0)):
                params, _ = _fit_on(sims, c_halves[fit_half], real.readouts[r_halves[fit_half]], options)
                target = real.readouts[r_halves[eval_half]]
                clip_eval = c_halves[eval_half]
                row = {name: distance_report(sims.readouts(m, clip_eval, seed=options.seed + 7), target)
                       for name, m in before_models.items()}
                row["fitted"] = distance_report(sims.readouts(_model(params, model_id), clip_eval,
                                                              seed=options.seed + 7), target)
                row["floor"] = distance_floor(real.readouts[r_halves[fit_half]], target, n=len(clip_eval),
                                              seed=options.seed)
                rows.append(row)
            held_out = {name: {k: float(np.mean([r[name][k] for r in rows])) for k in rows[0][name]}
                        for name in rows[0]}
        params, details = _fit_on(sims, all_clips, real.readouts, options)
        noise = _model(params, model_id)
        sim_before = sims.readouts(before_models["authors"], all_clips, seed=options.seed + 7)
        sim_after = sims.readouts(noise, all_clips, seed=options.seed + 7)
        sim_off = sims.readouts(before_models["off"], all_clips, seed=options.seed + 7)
    finally:
        if bar is not None:
            bar.close()
    in_sample = {"authors": distance_report(sim_before, real.readouts),
                 "off": distance_report(sim_off, real.readouts),
                 "fitted": distance_report(sim_after, real.readouts),
                 "floor": distance_floor(real.readouts, real.readouts, n=min(n_clips, len(real)),
                                         seed=options.seed)}
    headline = held_out or in_sample
    metric = {
        "name": PRIMARY,
        "unit": "readout levels (10 per MAC)",
        "definition": "mean over the 64x64 pixels of the Wasserstein-1 distance between the simulated "
                      "and the real distributions of that pixel's 8-bit level (see calib/distance.py)",
        "protocol": ("held out: fitted on half of the clips and readouts, scored on the other halves, "
                     "both ways, averaged" if held_out else "in sample: fitted and scored on all data"),
        "before": headline["authors"][PRIMARY], "after": headline["fitted"][PRIMARY],
        "floor": headline["floor"][PRIMARY],
        "held_out": held_out, "in_sample": in_sample,
    }
    files = {"json": str(out)}
    if plots:
        files.update(write_plots(out=out, real=real.readouts, before=sim_before, after=sim_after,
                                 offset_map=noise.offset_array))
    payload = {
        "format": FORMAT, "model_id": model_id, "noise": noise.to_dict(), "metric": metric,
        "fit": {**details, "options": {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in asdict(options).items()}},
        "source": {"weights": str(weights), "readouts": str(readouts), "clips": str(clips),
                   "n_clips": int(n_clips), "n_readouts": len(real)},
        "plots": {k: Path(v).name for k, v in files.items() if k != "json"},
    }
    payload["noise"].pop("model_id", None)
    with atomic_open(out, "w", encoding="utf-8", shared=True) as fh:
        fh.write(_dumps(payload))
    return NoiseReport(noise=noise, metric=metric, fit=payload["fit"], files=files)


def _dumps(payload: dict) -> str:
    """Indented JSON with the offset map written one row per line (readable, ~40 KB)."""
    rows = payload["noise"].get("offset_map")
    if rows is None:
        return json.dumps(payload, indent=1) + "\n"
    marker = "@@offset_map@@"
    text = json.dumps({**payload, "noise": {**payload["noise"], "offset_map": marker}}, indent=1)
    body = ",\n".join("   " + json.dumps(row) for row in rows)
    return text.replace(json.dumps(marker), "[\n" + body + "\n  ]") + "\n"


def write_plots(*, out: Path, real: np.ndarray, before: np.ndarray, after: np.ndarray,
                offset_map: np.ndarray | None) -> dict[str, str]:
    """Before/after PNGs next to ``out``: pooled level histograms and per-pixel mean-offset maps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = out.with_suffix("")
    paths = {"histograms": Path(f"{stem}_histograms.png"), "offsets": Path(f"{stem}_offsets.png")}
    bins = np.arange(257)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, sim, title in ((axes[0], before, "before (authors' noise model)"), (axes[1], after, "after (calibrated)")):
        ax.hist(real.ravel(), bins=bins, density=True, histtype="step", color="black", label="real SCAMP-5")
        ax.hist(sim.ravel(), bins=bins, density=True, histtype="step", color="tab:red", label="simulated")
        ax.set_yscale("log")
        ax.set_xlabel("readout level")
        ax.set_title(f"{title}: per-pixel W1 {per_pixel_w1(sim, real):.1f} levels")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("share of levels (log)")
    fig.suptitle(f"{before.shape[0]} simulated clips vs {real.shape[0]} real readouts (all data)", fontsize=10)
    _save(fig, paths["histograms"], plt)

    diff_before = real.astype(np.float64).mean(0) - before.astype(np.float64).mean(0)
    diff_after = real.astype(np.float64).mean(0) - after.astype(np.float64).mean(0)
    lim = float(np.percentile(np.abs(diff_before), 99))
    panels = [(diff_before, "real - simulated mean, before"), (diff_after, "real - simulated mean, after")]
    if offset_map is not None:
        panels.append((IW * offset_map, "fitted offset map (levels)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4))
    for ax, (img, title) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(img, cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.set_title(f"{title}\nRMS {np.sqrt(np.mean(img ** 2)):.1f} levels", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, paths["offsets"], plt)
    return {k: str(v) for k, v in paths.items()}


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    try:
        with atomic_open(path, "wb", shared=True) as fh:
            fig.savefig(fh, dpi=90, format="png")
    finally:
        plt.close(fig)


def format_noise_report(report: NoiseReport) -> str:
    m, n = report.metric, report.noise
    lines = [f"noise model: conv_sigma {n.conv_sigma:g}, gate_sigma {n.gate_sigma:g}, out_gain {n.out_gain:g}, "
             f"out_sigma {n.out_sigma:g}, out_offset {n.out_offset:.3f} MAC"
             + (f", offset map RMS {np.sqrt(np.mean(n.offset_array ** 2)):.3f} MAC" if n.offset_map else ""),
             f"distance ({m['name']}, {m['unit']}; {m['protocol']}):",
             f"  before (authors' noise) {m['before']:.2f}   after {m['after']:.2f}   "
             f"floor (real vs real) {m['floor']:.2f}"]
    table = m["held_out"] or m["in_sample"]
    keys = ("pooled_w1", "mean_map_rmse", "std_map_rmse", "hist_tv_32bins", "sat_low_sim", "sat_high_sim")
    lines.append("  " + " ".join(f"{k:>15s}" for k in ("",) + keys))
    for name in ("off", "authors", "fitted"):
        lines.append("  " + f"{name:>15s} " + " ".join(f"{table[name][k]:>15.4f}" for k in keys))
    lines.append("  " + f"{'real':>15s} " + " ".join(
        f"{table['fitted'][k.replace('_sim', '_real')]:>15.4f}" if k.endswith("_sim") else f"{'':>15s}" for k in keys))
    lines.append("wrote " + ", ".join(report.files.values()))
    return "\n".join(lines)
