"""Training and evaluation of the generative family (``pixelrnn generate train|nll|sample``).

One loop for all five models: minimise the mean NLL in nats per image (the negative ELBO for the
VLAE) with Adam and a cosine learning-rate decay, evaluate the validation NLL after every epoch,
keep the best epoch (``best.pt``) and a resumable ``last.pt``, then report the test NLL of the
best epoch. Shuffles are drawn from a generator seeded by ``(seed, epoch)`` so ``--resume``
continues exactly. All checkpoints are written atomically and loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_open

from .datasets import ImageDataset, load_image_dataset

MODELS = ("pixelcnn", "rowlstm", "diagbilstm", "gated", "vlae")
FORMAT = "pixelrnn-edge-generate/1"


@dataclass
class GenerateConfig:
    """Everything a generative training run depends on (saved in every checkpoint)."""

    model: str = "gated"
    data: str = "digits"                # digits | mnist5k | a readouts .npz (1-bit sensor readouts)
    hidden: int = 0                     # 0: the model's default width
    layers: int = 0                     # 0: the model's default depth
    kernel: int = 0                     # 0: default (first-layer kernel; gated: kernel size)
    latent_dim: int = 16                # vlae only
    free_bits: float = 0.0              # vlae only: KL nats per image granted free in training
    kl_warmup: int = 0                  # vlae only: KL weight rises linearly to 1 over this many epochs
    conditional: bool = False           # gated only: condition on the class label
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0                    # 0: torch default
    out_dir: str = ""                   # empty: runs/generate/<model>-<data>

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        for name in ("hidden", "layers", "kernel", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0 (0 = default), got {getattr(self, name)}")
        for name in ("latent_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise ValueError(f"--free-bits must be >= 0, got {self.free_bits}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.kernel and self.kernel % 2 == 0:
            raise ValueError(f"--kernel must be odd, got {self.kernel}")
        if self.kl_warmup < 0:
            raise ValueError(f"--kl-warmup must be >= 0 epochs, got {self.kl_warmup}")
        if self.conditional and self.model != "gated":
            raise ValueError("--conditional is supported by --model gated only")
        if not self.out_dir:
            self.out_dir = str(Path("runs") / "generate" / f"{self.model}-{Path(self.data).stem}")

    @classmethod
    def from_dict(cls, values: dict) -> "GenerateConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")
        return cls(**values)


def load_data(data: str) -> ImageDataset:
    """``digits``, ``mnist5k`` or a readouts file (``.npz``) -> :class:`ImageDataset`."""
    if data.endswith(".npz"):
        from .readouts import load_readout_dataset
        return load_readout_dataset(data)
    return load_image_dataset(data)


def build_model(cfg: GenerateConfig, *, num_classes: int, image_shape: tuple[int, int], num_labels: int):
    """The model named by ``cfg.model`` with the config's sizes (0 = the defaults below)."""
    from . import DiagonalBiLSTM, GatedPixelCNN, PixelCNN, RowLSTM

    def pick(value, default):
        return value if value else default

    common = dict(num_classes=num_classes, image_shape=image_shape)
    if cfg.model == "pixelcnn":
        return PixelCNN(hidden=pick(cfg.hidden, 64), num_layers=pick(cfg.layers, 6),
                        first_kernel=pick(cfg.kernel, 7), **common)
    if cfg.model == "rowlstm":
        return RowLSTM(hidden=pick(cfg.hidden, 32), num_layers=pick(cfg.layers, 3),
                       first_kernel=pick(cfg.kernel, 7), **common)
    if cfg.model == "diagbilstm":
        return DiagonalBiLSTM(hidden=pick(cfg.hidden, 32), num_layers=pick(cfg.layers, 2),
                              first_kernel=pick(cfg.kernel, 7), **common)
    if cfg.model == "gated":
        return GatedPixelCNN(hidden=pick(cfg.hidden, 64), num_layers=pick(cfg.layers, 6),
                             kernel_size=pick(cfg.kernel, 3),
                             num_labels=num_labels if cfg.conditional else None, **common)
    from .vlae import VLAE
    return VLAE(latent_dim=cfg.latent_dim, decoder_hidden=pick(cfg.hidden, 64), encoder_hidden=64,
                decoder_layers=pick(cfg.layers, 2), decoder_kernel_size=pick(cfg.kernel, 3),
                free_bits=cfg.free_bits, **common)


def _cond(cfg: GenerateConfig, labels: torch.Tensor | None):
    return labels if cfg.conditional else None


def training_loss(model, x: torch.Tensor, cond, *, kl_weight: float = 1.0) -> torch.Tensor:
    """Mean nats per image: NLL for the autoregressive models, negative ELBO for the VLAE
    (with the KL term weighted by ``kl_weight`` < 1 during KL warm-up)."""
    if hasattr(model, "training_loss"):
        if kl_weight < 1.0:
            terms = model.elbo_terms(x)
            return (terms.recon + kl_weight * terms.kl).mean()
        return model.training_loss(x, cond=cond)
    return model.nll(x, cond=cond).nats


@torch.no_grad()
def mean_nll(model, images: np.ndarray, labels: np.ndarray | None, *, cfg: GenerateConfig,
             batch_size: int = 256, seed: int = 0) -> float:
    """Mean nats per image over a split (VLAE: negative ELBO with one z per image, seeded)."""
    model.eval()
    total = 0.0
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size].astype(np.int64))
            y = None if labels is None else torch.from_numpy(labels[start:start + batch_size])
            total += float(model.nll(x, cond=_cond(cfg, y)).nats) * len(x)
    finally:
        torch.set_rng_state(state)
    return total / len(images)


def _save(obj: dict, path: Path) -> None:
    with atomic_open(path, "wb") as fh:      # as pixelrnn.checkpoint does: straight into the temp file
        torch.save(obj, fh)


def _meta(data: ImageDataset) -> dict:
    return {"num_classes": data.num_classes, "image_shape": list(data.image_shape),
            "num_labels": data.num_labels, "data_description": data.description}


def _read_state(path: Path, *, what: str) -> dict:
    """``torch.load(weights_only=True)`` of one of this trainer's files, or a one-line ValueError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # noqa: BLE001 - any unreadable file gets the same one-line answer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ValueError(f"{path} is not a readable {what} ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a 'pixelrnn generate' {what} (format {FORMAT} expected)")
    return state


def _check_finite(weights: dict, *, source: Path) -> None:
    for name, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source}: tensor {name} holds NaN or infinite values; the checkpoint is damaged "
                             "(train again, or use best.pt / another checkpoint)")


def load_checkpoint(path: str | os.PathLike):
    """A ``best.pt``/``last.pt`` of this trainer -> (model in eval mode, config, meta).

    Every problem (unreadable, another format, missing or mistyped fields, weights that do not fit
    the model, NaN or infinite weights) is a one-line ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path} (train one with: pixelrnn generate train)")
    state = _read_state(path, what="checkpoint")
    try:
        cfg = GenerateConfig.from_dict(dict(state["config"]))
        meta = dict(state["meta"])
        num_classes, image_shape, num_labels = meta["num_classes"], tuple(meta["image_shape"]), meta["num_labels"]
        if not (isinstance(num_classes, int) and 2 <= num_classes <= 256 and len(image_shape) == 2
                and all(isinstance(v, int) and 1 <= v <= 1024 for v in image_shape)
                and isinstance(num_labels, int) and 0 <= num_labels <= 1000):
            raise ValueError(f"meta out of bounds (levels {num_classes!r}, image {image_shape!r}, "
                             f"labels {num_labels!r})")
        weights = state["model"]
        if not isinstance(weights, dict):
            raise TypeError("model is not a state dict")
        _check_finite(weights, source=path)
        model = build_model(cfg, num_classes=num_classes, image_shape=image_shape, num_labels=num_labels)
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        text = str(exc) if not isinstance(exc, KeyError) else f"missing {exc}"
        first = (text.strip().splitlines() or [type(exc).__name__])[0][:160]
        if first.startswith(str(path)):
            raise ValueError(first) from None
        raise ValueError(f"{path}: damaged 'pixelrnn generate' checkpoint ({first})") from None
    return model.eval(), cfg, meta


def train_generative(*, config: GenerateConfig, resume: bool = False, progress: bool = True,
                     data: ImageDataset | None = None, stop_after: int | None = None) -> dict | None:
    """Train ``config.model`` on ``config.data``; returns (and writes) ``report.json``.

    ``data`` overrides loading ``config.data``; ``stop_after``: return None after that many
    epochs of this call, as if killed (for resume tests).
    """
    if not isinstance(config, GenerateConfig):
        raise ValueError("config must be a GenerateConfig")
    cfg = config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = data or load_data(cfg.data)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes=data.num_classes, image_shape=data.image_shape,
                        num_labels=data.num_labels)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    train_x, train_y = data.split("train")
    val_x, val_y = data.split("val")
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    history, start_epoch, best = [], 0, {"val_nats": math.inf, "epoch": -1}
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume:
        if not last_path.is_file():
            raise ValueError(f"--resume: no {last_path} to continue from (drop --resume to start afresh)")
        state = _read_state(last_path, what="checkpoint to resume")
        if state.get("config") != asdict(cfg):
            raise ValueError(f"--resume: {last_path} was trained with a different config; use the same flags")
        try:
            _check_finite(state["model"], source=last_path)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            history, start_epoch, best = list(state["history"]), int(state["epoch"]) + 1, dict(state["best"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            text = str(exc) if not isinstance(exc, KeyError) else f"missing {exc}"
            first = (text.strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ValueError(f"--resume: {last_path} is damaged ({first}); drop --resume to start afresh") from None
    meta = _meta(data)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        torch.manual_seed(cfg.seed * 100003 + epoch)       # VLAE reparameterisation noise
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(train_x), desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}", unit="img", leave=False)
        t0, running, seen = time.perf_counter(), 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size].numpy()
            x = torch.from_numpy(train_x[idx].astype(np.int64))
            y = torch.from_numpy(train_y[idx])
            global_step = epoch * steps_per_epoch + step
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * global_step / total_steps))
            kl_weight = min(1.0, (epoch + 1) / cfg.kl_warmup) if cfg.kl_warmup else 1.0
            loss = training_loss(model, x, _cond(cfg, y), kl_weight=kl_weight)
            if not torch.isfinite(loss):
                raise RuntimeError(f"training diverged at epoch {epoch + 1} step {step} (loss {loss.item()}); "
                                   f"lower --lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(nats=f"{running / seen:.2f}")
        if bar is not None:
            bar.close()
        val = mean_nll(model, val_x, val_y, cfg=cfg)
        record = {"epoch": epoch, "train_nats": running / seen, "val_nats": val,
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        weights = {"format": FORMAT, "config": asdict(cfg), "meta": meta, "model": model.state_dict(), "epoch": epoch}
        if val < best["val_nats"]:
            best = {"val_nats": val, "epoch": epoch}
            _save(weights, best_path)
        _save({**weights, "optimizer": opt.state_dict(), "history": history, "best": best}, last_path)
        with atomic_open(out / "metrics.json", "w", encoding="utf-8") as fh:
            json.dump(history, fh, indent=1)
        if stop_after is not None and epoch + 1 - start_epoch >= stop_after and epoch + 1 < cfg.epochs:
            return None
        if progress:
            print(f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}: train {record['train_nats']:.2f} "
                  f"val {val:.2f} nats/image ({record['seconds']:.1f} s)", flush=True)
    model, _, _ = load_checkpoint(best_path)
    report = evaluate_report(model, cfg=cfg, data=data)
    report.update({"best_epoch": best["epoch"] + 1, "epochs": cfg.epochs,
                   "train_seconds": round(sum(h["seconds"] for h in history), 1),
                   "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)})
    with atomic_open(out / "report.json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1)
    return report


@torch.no_grad()
def marginal_nll(model, images: np.ndarray, *, num_labels: int, prior: np.ndarray, batch_size: int = 256) -> float:
    """Mean -log p(x) of a label-conditional model, p(x) = sum_y p(y) p(x | y) with p(y) the
    training label frequencies: an unconditional NLL, comparable with the other models'."""
    log_prior = torch.log(torch.as_tensor(prior, dtype=torch.float64) / float(np.sum(prior)))
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size].astype(np.int64))
        per_label = torch.stack([model.log_prob(x, cond=torch.full((len(x),), y, dtype=torch.long)).double()
                                 for y in range(num_labels)], dim=1)
        total += float(-torch.logsumexp(per_label + log_prior, dim=1).sum())
    return total / len(images)


def evaluate_report(model, *, cfg: GenerateConfig, data: ImageDataset, split: str = "test",
                    iw_samples: int = 100) -> dict:
    """Test NLL in nats/image and bits/dim (+ KL and an importance-weighted bound for the VLAE)."""
    x, y = data.split(split)
    dims = x.shape[1] * x.shape[2]
    nats = mean_nll(model, x, y, cfg=cfg)
    report = {"model": cfg.model, "data": data.name, "data_description": data.description, "split": split,
              "n": int(len(x)), "nats": nats, "bits_per_dim": nats / (dims * math.log(2))}
    if cfg.conditional:
        report["nats_given"] = "the true label: -log p(x | y)"
        report["marginal_nats"] = marginal_nll(model, x, num_labels=data.num_labels,
                                               prior=np.bincount(data.split("train")[1], minlength=data.num_labels))
        report["marginal_bits_per_dim"] = report["marginal_nats"] / (dims * math.log(2))
    if cfg.model == "vlae":
        report["bound"] = "negative ELBO (upper bound on the NLL)"
        gen = torch.Generator().manual_seed(0)
        kl, iw = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(x), 64):
                xb = torch.from_numpy(x[start:start + 64].astype(np.int64))
                kl += float(model.kl(xb).sum())
                iw += float(model.iw_nll(xb, samples=iw_samples, generator=gen).sum())
        report.update({"kl_nats": kl / len(x), "iw_nats": iw / len(x), "iw_samples": iw_samples,
                       "iw_bits_per_dim": iw / len(x) / (dims * math.log(2))})
    return report
