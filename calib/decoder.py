"""Fit the off-sensor decoder to real sensor readouts; the in-pixel weights stay as they are.

The decoder is ``PixelRNN.decode``: o = (r - 127) / 10, a 1x1 conv with one binary weight,
BatchNorm2d(1), tanh, minus thresh3, Linear(4096 -> classes). With the sign +1, BatchNorm set to
y -> a * y (running mean 0, variance 1) and thresh3 = 0, its features are ``tanh(a * o)`` per pixel
and the Linear layer is a linear classifier on them. We fit that classifier by shrinkage linear
discriminant analysis (closed form, regularised towards a scaled identity): with 648 training
readouts and 4096 features an unregularised fit would memorise them, and LDA with shrinkage is the
standard estimator when samples are fewer than features. The scale ``a`` and the shrinkage are
chosen on an inner validation split of the training readouts only, and the logits are divided by a
temperature fitted on that split (so softmax scores mean something; predictions do not change).

Accuracy is measured by stratified k-fold cross-validation (the real readouts have no separate
test split), for the simulation-trained decoder, ours, and optionally a reference decoder (the
authors' ``cam_noise_finetuned.pt``) on the same folds, and optionally the authors' recipe
(Adam fine-tuning of the simulation decoder) refitted on each fold's training readouts.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from calib.layout import require_authors_readout
from core.errors import InputError
from core.readouts import Readouts, load_readouts, stratified_folds, stratified_split

METHOD = "shrinkage-lda"


@dataclass(frozen=True)
class DecoderOptions:
    """How the decoder is fitted and scored (defaults: the settings behind docs/RESULTS.md)."""

    folds: int = 5                                        # outer stratified CV folds
    seed: int = 0                                         # fold and inner-split seed
    scales: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)     # tanh(a * o): candidate a (per MAC unit)
    shrinkages: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)  # LDA covariance shrinkage candidates
    val_fraction: float = 0.2                             # inner validation share of training readouts
    finetune_baseline: bool = False                       # also refit the authors' recipe per fold
    finetune_epochs: int = 30                             # its epoch budget (best epoch on inner val)

    def __post_init__(self) -> None:
        if not (isinstance(self.folds, int) and not isinstance(self.folds, bool) and self.folds >= 2):
            raise InputError(f"folds must be an integer >= 2, got {self.folds!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        for name, lo, hi in (("scales", 0.0, math.inf), ("shrinkages", 0.0, 1.0)):
            values = getattr(self, name)
            if not (isinstance(values, (tuple, list)) and values):
                raise InputError(f"{name} must be a non-empty list of numbers, got {values!r}")
            for v in values:
                if not (isinstance(v, (int, float)) and math.isfinite(v) and lo < v <= hi):
                    raise InputError(f"every value of {name} must lie in ({lo:g}, {hi:g}], got {v!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if not (isinstance(self.val_fraction, float) and 0 < self.val_fraction < 0.5):
            raise InputError(f"val_fraction must be a number in (0, 0.5), got {self.val_fraction!r}")
        if not (isinstance(self.finetune_epochs, int) and self.finetune_epochs >= 1):
            raise InputError(f"finetune_epochs must be an integer >= 1, got {self.finetune_epochs!r}")


# -- the decoder as a feature map plus a linear classifier ----------------------------------------
@torch.no_grad()
def with_feature_scale(model, scale: float):
    """A copy of ``model`` whose decoder features are ``tanh(scale * o)`` (sensor weights untouched)."""
    m = copy.deepcopy(model).eval()
    m.fin_conv.fill_(1.0)
    m.bn.running_mean.zero_()
    m.bn.running_var.fill_(1.0)
    m.bn.weight.fill_(scale * math.sqrt(1.0 + m.bn.eps))
    m.bn.bias.zero_()
    m.thresh3.zero_()
    return m


@torch.no_grad()
def decoder_features(model, readouts: np.ndarray, *, batch: int = 256) -> torch.Tensor:
    """The Linear layer's input (N, 4096) float64, computed by ``model.decode`` on uint8 readouts."""
    captured: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        model.eval()
        for s in range(0, len(readouts), batch):
            model.decode(torch.from_numpy(readouts[s:s + batch]))
    finally:
        hook.remove()
    return torch.cat(captured).to(torch.float64)


@torch.no_grad()
def predict(model, readouts: np.ndarray, *, batch: int = 256) -> np.ndarray:
    """Class predictions of ``model.decode`` on (N, 64, 64) uint8 readouts."""
    model.eval()
    return np.concatenate([model.decode(torch.from_numpy(readouts[s:s + batch])).argmax(1).numpy()
                           for s in range(0, len(readouts), batch)])


class ShrinkageLDA:
    """Linear discriminant analysis with covariance ``(1 - g) S + g (tr S / p) I`` for any shrinkage g.

    Solved in the sample space (Woodbury identity on the n x n Gram matrix of the centred features),
    so every shrinkage costs one n x n linear solve instead of a p x p inverse (p = 4096).
    """

    def __init__(self, features: torch.Tensor, labels: np.ndarray, num_classes: int) -> None:
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
        if bool((counts == 0).any()):
            raise InputError(f"every class needs training readouts; missing classes "
                             f"{torch.nonzero(counts == 0).flatten().tolist()}")
        self.n, self.p = features.shape
        self.means = torch.zeros(num_classes, self.p, dtype=torch.float64).index_add_(0, y, features) / counts[:, None]
        self.log_prior = torch.log(counts / counts.sum())
        self.centred = features - self.means[y]
        self.nu = float((self.centred ** 2).sum()) / self.n / self.p
        self.gram = self.centred @ self.centred.T             # (n, n)
        self.proj = self.centred @ self.means.T               # (n, C)

    def solve(self, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (C, p), bias (C,)) of the discriminant for this shrinkage in (0, 1]."""
        alpha = shrinkage * self.nu
        beta = (1.0 - shrinkage) / self.n
        if beta == 0.0:
            inv_mu = self.means.T / alpha
        else:
            c = alpha / beta
            eye = torch.eye(self.n, dtype=torch.float64)
            inner = torch.linalg.solve(self.gram + c * eye, self.proj)          # (c I + K)^-1 Xc M^T
            inv_mu = (self.means.T - self.centred.T @ inner) / alpha       # Sigma^-1 mu_k, (p, C)
        weight = inv_mu.T
        bias = -0.5 * (self.means * weight).sum(1) + self.log_prior
        return weight, bias


def _logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return features @ weight.T + bias


@torch.no_grad()
def _load_linear(model, weight: torch.Tensor, bias: torch.Tensor):
    model.fc.weight.copy_(weight.to(model.fc.weight.dtype))
    model.fc.bias.copy_(bias.to(model.fc.bias.dtype))
    return model


def fit_decoder(*, model, readouts: np.ndarray, labels: np.ndarray, options: DecoderOptions) -> tuple:
    """Fit our decoder on these (training) readouts only -> (fitted copy of ``model``, choice dict).

    The feature scale and shrinkage are chosen on an inner stratified validation split (accuracy,
    ties broken by validation cross-entropy); the classifier is then refitted on all given readouts.
    """
    num_classes = model.config.num_classes
    inner_tr, inner_val = stratified_split(labels, fraction=options.val_fraction, seed=options.seed)
    best = None
    for scale in options.scales:
        feats = decoder_features(with_feature_scale(model, scale), readouts)
        lda = ShrinkageLDA(feats[inner_tr], labels[inner_tr], num_classes)
        y_val = torch.from_numpy(labels[inner_val])
        for shrink in options.shrinkages:
            logits = _logits(feats[inner_val], *lda.solve(shrink))
            acc = float((logits.argmax(1) == y_val).double().mean())
            loss = float(F.cross_entropy(logits, y_val))
            key = (-acc, loss)
            if best is None or key < best[0]:
                best = (key, scale, shrink, acc)
    _, scale, shrink, val_acc = best
    feats = decoder_features(with_feature_scale(model, scale), readouts)
    inner = ShrinkageLDA(feats[inner_tr], labels[inner_tr], num_classes)
    temperature = fit_temperature(_logits(feats[inner_val], *inner.solve(shrink)), labels[inner_val])
    fitted = with_feature_scale(model, scale)
    weight, bias = ShrinkageLDA(feats, labels, num_classes).solve(shrink)
    # Softmax and argmax ignore what all classes share: removing it (per-sample logits then sum to
    # zero) leaves the class differences only, a range an int8 output can hold. Measured: without
    # it, logits sat near +-80 and a quantized logit output clipped whole readouts to zeros.
    weight, bias = weight - weight.mean(0, keepdim=True), bias - bias.mean()
    _load_linear(fitted, weight / temperature, bias / temperature)
    return fitted, {"scale": scale, "shrinkage": shrink, "temperature": temperature,
                    "inner_val_accuracy": val_acc}


def fit_temperature(logits: torch.Tensor, labels: np.ndarray) -> float:
    """The T > 0 minimising the cross-entropy of ``logits / T`` (temperature scaling).

    LDA's discriminants have an arbitrary overall scale (here often hundreds), which makes softmax
    scores meaningless and wastes an int8 output range; dividing by T changes no prediction.
    """
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    logits = logits.to(torch.float64)
    loss = lambda log_t: float(F.cross_entropy(logits / math.exp(log_t), y))  # noqa: E731
    lo, hi = -5.0, 10.0                      # T in [e^-5, e^10]; golden-section search on log T
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def finetune_recipe(*, model, readouts: np.ndarray, labels: np.ndarray, options: DecoderOptions) -> tuple:
    """The authors' recipe, refitted on these readouts only: start from the simulation decoder and
    train BatchNorm, thresh3 and the Linear layer with Adam (lr 1e-3, batch 32, cross-entropy); the
    epoch is chosen on the same inner validation split. Returns (fitted copy, choice dict)."""
    inner_tr, inner_val = stratified_split(labels, fraction=options.val_fraction, seed=options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    m = copy.deepcopy(model)
    params = [m.bn.weight, m.bn.bias, m.thresh3, m.fc.weight, m.fc.bias]
    for p in m.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    x_all, y_all = torch.from_numpy(readouts), torch.from_numpy(labels)
    best_state, best_acc, best_epoch = copy.deepcopy(m.state_dict()), -1.0, 0
    for epoch in range(1, options.finetune_epochs + 1):
        m.train()
        order = inner_tr[torch.randperm(len(inner_tr), generator=gen).numpy()]
        for s in range(0, len(order), 32):
            b = order[s:s + 32]
            loss = F.cross_entropy(m.decode(x_all[b]), y_all[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = float((predict(m, readouts[inner_val]) == labels[inner_val]).mean())
        if acc > best_acc:
            best_state, best_acc, best_epoch = copy.deepcopy(m.state_dict()), acc, epoch
    m.load_state_dict(best_state)
    for p in m.parameters():
        p.requires_grad_(True)
    return m.eval(), {"epoch": best_epoch, "inner_val_accuracy": best_acc}


# -- cross-validation and the command -------------------------------------------------------------
@dataclass
class DecoderReport:
    """Held-out accuracies per fold (same folds for every decoder) and the final fit's settings."""

    folds: list[dict] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    n: int = 0
    options: dict = field(default_factory=dict)
    decoders: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(model, data: Readouts) -> float:
    return float((predict(model, data.readouts) == data.labels).mean())


def cross_validate(*, model, data: Readouts, options: DecoderOptions, reference=None,
                   progress=None) -> DecoderReport:
    """Stratified k-fold CV on labelled readouts: per fold, fit ours (and the recipe baseline) on the
    training folds and score every decoder on the held-out fold."""
    fold_of = stratified_folds(data.labels, k=options.folds, seed=options.seed)
    report = DecoderReport(n=len(data), options=_options_dict(options))
    for k in range(options.folds):
        train, test = data.subset(fold_of != k), data.subset(fold_of == k)
        ours, choice = fit_decoder(model=model, readouts=train.readouts, labels=train.labels, options=options)
        row = {"fold": k, "n_train": len(train), "n_test": len(test),
               "simulation": _accuracy(model, test), "calibrated": _accuracy(ours, test), "choice": choice}
        if reference is not None:
            row["reference"] = _accuracy(reference, test)
        if options.finetune_baseline:
            tuned, tuned_choice = finetune_recipe(model=model, readouts=train.readouts, labels=train.labels,
                                                  options=options)
            row["recipe_refit"] = _accuracy(tuned, test)
            row["recipe_choice"] = tuned_choice
        report.folds.append(row)
        if progress is not None:
            progress.update(1)
    keys = [k for k in ("simulation", "calibrated", "reference", "recipe_refit") if k in report.folds[0]]
    report.mean = {k: float(np.mean([r[k] for r in report.folds])) for k in keys}
    return report


def _options_dict(options: DecoderOptions) -> dict:
    d = asdict(options)
    d["scales"], d["shrinkages"] = list(options.scales), list(options.shrinkages)
    return d


def calibrate_decoder(*, weights: str | os.PathLike, readouts: str | os.PathLike, out: str | os.PathLike,
                      reference: str | os.PathLike | None = None, options: DecoderOptions | None = None,
                      exclude_fold: int | None = None, progress: bool = False) -> DecoderReport:
    """Cross-validate, then fit the decoder on ALL readouts and save a checkpoint at ``out``.

    The checkpoint keeps the sensor weights of ``weights`` (same program hash) and records the
    CV report in its ``extra``. ``reference``: another checkpoint with the same sensor program whose
    decoder is scored on the same folds (e.g. the authors' ``cam_noise_finetuned.pt``).
    ``exclude_fold``: fit the saved decoder on all readouts except this CV fold, so that the fold
    stays unseen (e.g. to score ``calib int8`` on readouts no part of the decoder has seen).
    """
    if exclude_fold is not None and not (isinstance(exclude_fold, int) and not isinstance(exclude_fold, bool)):
        raise InputError(f"exclude_fold must be a fold number or None, got {exclude_fold!r}")
    from pixelrnn.checkpoint import load_model, save_checkpoint

    options = options or DecoderOptions()
    if not isinstance(options, DecoderOptions):
        raise InputError(f"options must be DecoderOptions, got {type(options).__name__}")
    out = Path(out)
    if not out.absolute().parent.is_dir():
        raise InputError(f"output folder does not exist: {out.absolute().parent}")
    model = load_model(weights)
    require_authors_readout(model.config.layout, "calib decoder", hidden=model.config.hidden_channels)
    program = model.sensor_weights().program_hash()
    ref_model = None
    if reference is not None:
        ref_model = load_model(reference)
        if ref_model.sensor_weights().program_hash() != program:
            raise InputError(f"reference decoder {reference} belongs to another sensor program "
                             f"({ref_model.sensor_weights().program_hash()}, not {program}): its "
                             "decoder cannot read these readouts")
    data = load_readouts(readouts, need_labels=True, num_classes=model.config.num_classes)
    data.check_program(program, what=str(weights))
    fit_data = data
    if exclude_fold is not None:
        if not 0 <= exclude_fold < options.folds:
            raise InputError(f"exclude_fold must lie in 0..{options.folds - 1}, got {exclude_fold}")
        fit_data = data.subset(stratified_folds(data.labels, k=options.folds, seed=options.seed) != exclude_fold)
    bar = _bar(options.folds + 1, "calib decoder", progress)
    try:
        report = cross_validate(model=model, data=data, options=options, reference=ref_model, progress=bar)
        final, choice = fit_decoder(model=model, readouts=fit_data.readouts, labels=fit_data.labels,
                                    options=options)
        if bar is not None:
            bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if final.sensor_weights().program_hash() != program:   # cannot happen: only decoder params change
        raise RuntimeError("decoder calibration changed the sensor program")
    report.final = {**choice, "method": METHOD, "train_accuracy": _accuracy(final, fit_data),
                    "n_readouts": len(fit_data), "excluded_fold": exclude_fold, "model_id": program}
    report.decoders = {"simulation": str(weights), "reference": str(reference) if reference else "",
                       "readouts": str(readouts)}
    save_checkpoint(final, out, extra={"calibration": {"decoder": report.to_dict()}})
    return report


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="fit", leave=False, disable=None)  # off when not a terminal


def format_decoder_report(report: DecoderReport) -> str:
    """Per-fold held-out accuracies as a plain-text table."""
    keys = list(report.mean)
    names = {"simulation": "(a) simulation", "calibrated": "(b) calibrated", "reference": "(c) reference",
             "recipe_refit": "(d) recipe refit"}
    lines = [f"held-out accuracy on real readouts, {len(report.folds)}-fold stratified CV (n={report.n}):",
             "  fold  " + "  ".join(f"{names[k]:>16s}" for k in keys)]
    for row in report.folds:
        lines.append(f"  {row['fold']:>4d}  " + "  ".join(f"{row[k]:>16.4f}" for k in keys))
    lines.append("  mean  " + "  ".join(f"{report.mean[k]:>16.4f}" for k in keys))
    if report.final:
        which = (f"{report.final['n_readouts']} readouts, fold {report.final['excluded_fold']} left out"
                 if report.final.get("excluded_fold") is not None else f"all {report.final['n_readouts']} readouts")
        lines.append(f"final decoder ({which}): scale {report.final['scale']:g}, "
                     f"shrinkage {report.final['shrinkage']:g}, training accuracy "
                     f"{report.final['train_accuracy']:.4f}, model id {report.final['model_id']}")
    return "\n".join(lines)
