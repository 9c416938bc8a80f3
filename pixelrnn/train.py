"""``pixelrnn train``: noise-aware training of the binarized PixelRNN on the real datasets.

Unlike the authors' code, the binary weights have real-valued latent copies (clipped to [-1, 1]) and
are binarized in the forward pass, so their signs can actually move. Reproducible by construction:
the shuffle of epoch ``e`` and the augmentation and noise of clip ``i`` are drawn from generators
seeded by ``(seed, e, i)``, so a resumed run, and a run split over DistributedDataParallel ranks,
see exactly the same batches and noise as one uninterrupted process.

Run under ``torchrun --nproc_per_node=N`` for data parallelism (gloo backend, CPU): ``batch_size``
stays the global batch, each rank takes every N-th clip of it.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.argtypes import bool_arg as _bool
from core.atomic import atomic_open
from core.errors import InputError
from firmware_sim.noise import NoiseModel
from pixelrnn import __version__
from pixelrnn.checkpoint import save_checkpoint
from pixelrnn.data import DATASETS, TASKS, Augment, Dataset, load_dataset, split
from pixelrnn.model import ModelConfig, PixelRNN
from pixelrnn.quantizers import QUANTIZERS

SCHEDULES = ("cosine", "plateau", "none")
OPTIMIZERS = ("adam",)
NORMALIZATIONS = ("dataset", "imagenet")
STATE_FORMAT = "pixelrnn-edge-train/1"


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved inside every checkpoint)."""

    dataset: str = "grid"
    data_dir: str = ""                 # empty: $PIXELRNN_DATA or ../shared/data
    fold: int = 0                      # cambridge: which of the 5 folds is the test fold
    limit: int = 0                     # > 0: use only the first N training clips (smoke runs)
    quantizer: str = "tanh_mx"
    quantizer_m: float = 2.0
    noise_conv: float = 0.6            # training noise in MAC units (the authors' noise model)
    noise_gate: float = 0.6
    noise_out: float = 1.0
    noise_file: str = ""               # a `pixelrnn calib noise` JSON: replaces the three sigmas above
    freeze_binary: bool = False        # keep binary weights at their random init signs (baseline b)
    learn_theta0: bool = True
    gate_threshold: bool = True
    normalize: str = "dataset"         # input mean/std: of the training clips, or ImageNet's
    optimizer: str = "adam"
    lr: float = 2e-3                   # decoder, thresholds, theta0
    lr_binary: float = 2e-2            # latent binary weights (they must travel ~1 to flip a sign)
    weight_decay: float = 0.0
    schedule: str = "cosine"
    batch_size: int = 32
    epochs: int = 15
    seed: int = 0
    augment: bool = True
    max_shift: int = 3
    max_time_shift: int = 1
    threads: int = 0                   # torch threads per process; 0 = PyTorch's default
    out_dir: str = "runs/grid"

    def __post_init__(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(msg)
        check(self.dataset in DATASETS and self.dataset != "tulips",
              f"dataset must be one of grid, avletters, cambridge (tulips is test-only), got {self.dataset!r}")
        check(self.quantizer in QUANTIZERS, f"quantizer must be one of {sorted(QUANTIZERS)}, got {self.quantizer!r}")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check(self.normalize in NORMALIZATIONS, f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        for name in ("fold", "limit", "batch_size", "epochs", "seed", "max_shift", "max_time_shift", "threads"):
            check(isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool),
                  f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("quantizer_m", "noise_conv", "noise_gate", "noise_out", "lr", "lr_binary", "weight_decay"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and value >= 0, f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("freeze_binary", "learn_theta0", "gate_threshold", "augment"):
            check(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.batch_size >= 2, f"batch_size must be >= 2 (clips are batched), got {self.batch_size}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.limit >= 0 and self.threads >= 0 and self.seed >= 0, "limit, threads and seed must be >= 0")
        check(self.max_shift >= 0 and self.max_time_shift >= 0, "max_shift and max_time_shift must be >= 0")
        check(bool(self.out_dir), "out_dir must not be empty")
        if self.noise_file:
            NoiseModel.from_spec(self.noise_file)   # one-line error now, not after loading the data

    @property
    def train_noise(self) -> NoiseModel:
        """The noise injected while training: the calibration file's, else the three sigmas.

        A calibration file describes a chip (its sigmas, gain and fixed-pattern offset map); its
        ``model_id`` names the program it was measured with and is not checked here, because
        training changes the program.
        """
        if self.noise_file:
            return NoiseModel.from_spec(self.noise_file)
        return NoiseModel(self.noise_conv, self.noise_gate, self.noise_out)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"{source}: unknown setting {unknown[0]!r} (known: {', '.join(known)})")
        values = {}
        for key, value in data.items():
            default = known[key].default
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)          # YAML "lr: 1" is an int; a float setting accepts it
            values[key] = value
        return cls(**values)


def load_config_file(path: str | os.PathLike) -> dict:
    """Settings from a YAML (or JSON) file, as a plain dict; one-line errors."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InputError(f"{path}: not valid YAML{line} ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return f"{__version__}+g{rev.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


# -- distributed ----------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's copy flows back to every contribution."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the global batch of all DDP ranks (CPU/gloo).

    torch's SyncBatchNorm only runs on GPUs. Sums, sums of squares and counts are all-reduced with
    autograd, so forward and backward equal one process seeing the whole batch. State-dict keys are
    those of BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        shape = (1, c, 1, 1)
        y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    torch.distributed.init_process_group("gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size())


# -- helpers --------------------------------------------------------------------------------------
def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]) >> 1


def batch_tensors(ds: Dataset, idx: np.ndarray, *, epoch: int, cfg: TrainConfig, train: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Generator] | None]:
    """Frames, labels and per-clip noise generators for clips ``idx`` (augmented when training)."""
    frames = ds.frames[idx]
    gens = None
    if train:
        if cfg.augment:
            aug = Augment(max_shift=cfg.max_shift, max_time_shift=cfg.max_time_shift)
            frames = np.stack([aug(ds.frames[i], np.random.default_rng([cfg.seed, epoch, int(i), 1]))
                               for i in idx])
        gens = [torch.Generator().manual_seed(_seed_of(cfg.seed, epoch, int(i), 2)) for i in idx]
    return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(ds.labels[idx]), gens


@torch.no_grad()
def predict(model: PixelRNN, frames: np.ndarray, *, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and predictions of ``model`` in eval mode, noise off."""
    model.eval()
    logits = [model(torch.from_numpy(frames[s:s + batch])) for s in range(0, len(frames), batch)]
    out = torch.cat(logits).numpy()
    return out, out.argmax(1)


def _evaluate(model, ds: Dataset, idx: np.ndarray, dist: Dist) -> tuple[float, float]:
    """(mean loss, accuracy) on clips ``idx`` (split across ranks), noise off."""
    local = idx[dist.rank::dist.world]
    loss_sum, correct = 0.0, 0.0
    if len(local):
        logits, preds = predict(model, ds.frames[local])
        labels = ds.labels[local]
        loss_sum = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="sum"))
        correct = float((preds == labels).sum())
    loss_sum, correct = dist.all_sum([loss_sum, correct])
    return loss_sum / len(idx), correct / len(idx)


def sign_agreement(model: PixelRNN, init: dict[str, torch.Tensor]) -> float:
    """Fraction of in-sensor binary weights whose sign still equals its initial sign."""
    same = total = 0
    for name in ("conv1", "w_fi", "w_fh", "w_oi", "w_oh"):
        now = getattr(model, name).detach() >= 0
        same += int((now == (init[name] >= 0)).sum())
        total += now.numel()
    return same / total


def build_model(cfg: TrainConfig, train_set: Dataset) -> PixelRNN:
    if cfg.normalize == "dataset":
        g = train_set.frames.astype(np.float64) / 255.0
        mean, std = float(g.mean()), float(g.std())
    else:
        mean, std = ModelConfig.input_mean, ModelConfig.input_std
    mc = ModelConfig(num_classes=len(train_set.classes), classes=list(train_set.classes),
                     task=TASKS[cfg.dataset], quantizer=cfg.quantizer, quantizer_m=cfg.quantizer_m,
                     gate_threshold=cfg.gate_threshold, learn_theta0=cfg.learn_theta0,
                     input_mean=mean, input_std=std, noise_conv=cfg.noise_conv,
                     noise_gate=cfg.noise_gate, noise_out=cfg.noise_out)
    torch.manual_seed(cfg.seed)
    model = PixelRNN(mc)
    if cfg.freeze_binary:
        for name in PixelRNN.LATENT:
            getattr(model, name).requires_grad_(False)
    return model


def _schedule(cfg: TrainConfig, opt):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3)
    return None


# -- the loop -------------------------------------------------------------------------------------
def train(*, config: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train, keep the best model on validation, evaluate it on the test split; return the report.

    ``stop_after``: stop once that many epochs are done (time-boxed jobs; continue with ``resume``);
    the final report is only made when the last epoch is done.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError("config must be a TrainConfig")
    cfg = config
    dist = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, delete=True)
        probe.close()
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out} ({exc.strerror or exc})") from None
    state_path, best_path = out / "last.pt", out / "model.pt"
    if state_path.exists() and not resume:
        raise InputError(f"{out} already holds a training run (last.pt): pass --resume to continue it "
                         f"or choose another --out-dir")

    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir or None)
    parts = split(ds, fold=cfg.fold)
    train_idx = parts["train"][:cfg.limit] if cfg.limit else parts["train"]
    model = build_model(cfg, ds.subset(train_idx))
    init_signs = {n: getattr(model, n).detach().clone() for n in ("conv1", "w_fi", "w_fh", "w_oi", "w_oh")}
    binary = [getattr(model, n) for n in PixelRNN.LATENT if getattr(model, n).requires_grad]
    ids = {id(p) for p in binary}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": binary, "lr": cfg.lr_binary}] if binary else [])
    opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    sched = _schedule(cfg, opt)
    history: list[dict] = []
    best = {"val_acc": -1.0, "val_loss": math.inf, "epoch": -1}
    start = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise InputError(f"{state_path} is not a pixelrnn training state")
        saved = dict(state["train_config"])
        free = ("out_dir", "threads") + (("epochs",) if cfg.schedule != "cosine" else ())
        mismatch = [k for k in saved if k not in free and saved[k] != getattr(cfg, k, None)]
        if mismatch:
            raise InputError(f"--resume: {state_path} was trained with different settings "
                             f"({', '.join(f'{k}={saved[k]!r}' for k in mismatch[:3])}); use the same config")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        init_signs = state["init_signs"]
        history, best, start = list(state["history"]), dict(state["best"]), int(state["epoch"]) + 1
    if dist.world > 1:
        bn = GlobalBatchNorm2d(model.bn.num_features)
        bn.load_state_dict(model.bn.state_dict())
        model.bn = bn
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    else:
        ddp = model
    version = code_version()
    noise = cfg.train_noise

    n = len(train_idx)
    steps = math.ceil(n / cfg.batch_size)
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(start, last):
        t0 = time.perf_counter()
        model.train()
        order = train_idx[np.random.default_rng([cfg.seed, epoch]).permutation(n)]
        bar = None
        if progress and dist.main:
            from tqdm import tqdm
            bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="clip", leave=False,
                       dynamic_ncols=True, file=sys.stderr)
        loss_sum = correct = 0.0
        for s in range(steps):
            global_idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if len(global_idx) < dist.world:   # a last batch too small to give every rank a clip
                continue
            local_idx = global_idx[dist.rank::dist.world]
            frames, labels, gens = batch_tensors(ds, local_idx, epoch=epoch, cfg=cfg, train=True)
            logits = ddp(frames, generators=gens, noise=noise)
            losses = F.cross_entropy(logits, labels, reduction="none")
            # DDP averages gradients over ranks: scale so the result is the mean over the global batch
            loss = losses.sum() * dist.world / len(global_idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.clip_latent_()
            loss_sum += float(losses.detach().sum())
            correct += float((logits.argmax(1) == labels).sum())
            if bar is not None:
                bar.update(len(global_idx))
                bar.set_postfix(loss=f"{float(losses.mean()):.3f}")
        if bar is not None:
            bar.close()
        loss_sum, correct = dist.all_sum([loss_sum, correct])
        seconds = time.perf_counter() - t0
        val_loss, val_acc = _evaluate(model, ds, parts["val"], dist)
        lr = opt.param_groups[0]["lr"]
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val_acc)
        elif sched is not None:
            sched.step()
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": round(seconds, 3),
               "clips_per_s": round(n / seconds, 2), "sign_agreement_with_init": sign_agreement(model, init_signs)}
        history.append(row)
        improved = (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"])
        if improved:
            best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
        if dist.main:
            if improved:
                save_checkpoint(model, best_path, extra={"train_config": cfg.to_dict(), "epoch": epoch + 1,
                                                         "val_acc": val_acc, "code_version": version})
            with atomic_open(state_path, "wb") as fh:
                torch.save({"format": STATE_FORMAT, "train_config": cfg.to_dict(), "code_version": version,
                                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict() if sched is not None else None,
                            "init_signs": init_signs, "history": history, "best": best}, fh)
            from core.atomic import write_json_atomic
            write_json_atomic(out / "metrics.json", {"config": cfg.to_dict(), "code_version": version,
                                                     "epochs": history, "best": best})
            print(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.3f}  "
                  f"val_loss {val_loss:.4f}  val_acc {val_acc:.3f}  {row['clips_per_s']:.1f} clips/s  "
                  f"signs kept {row['sign_agreement_with_init']:.3f}", file=sys.stderr, flush=True)
        dist.barrier()
    report: dict = {}
    if dist.main and last == cfg.epochs:
        from pixelrnn.report import final_report
        report = final_report(best_path=best_path, ds=ds, test_idx=parts["test"], out=out,
                              history=history, best_epoch=best["epoch"], config=cfg.to_dict())
    dist.barrier()
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    return report


# -- command line ---------------------------------------------------------------------------------
def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a PixelRNN on grid, avletters or cambridge",
        description="Train a binarized PixelRNN (noise-aware, latent weights). Settings come from "
                    "--config FILE.yaml, then flags override them; unspecified ones take the defaults.")
    p.add_argument("--config", default=None, help="YAML file of TrainConfig settings")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--backend", choices=("torch", "larq"), default="torch",
                   help="torch (default; resumable, DDP) or larq: train the Keras/Larq twin "
                        "(needs the [larq] extra) and save it as a PyTorch checkpoint")
    types = {int: int, float: float, str: str, bool: _bool}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        p.add_argument(flag, dest=f.name, type=types[kind], default=None,
                       metavar="BOOL" if kind is bool else kind.__name__.upper(),
                       help=f"(default {f.default!r})")
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    source = args.config or "flags"
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    return TrainConfig.from_dict(values, source=source)


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.backend == "larq":
        if args.resume:
            raise InputError("--resume is not supported with --backend larq")
        try:
            from pixelrnn.larq_train import train_larq
        except ImportError as exc:
            raise InputError(f"--backend larq needs TensorFlow/Larq: pip install -c constraints.txt "
                             f"-e '.[larq]' ({exc})") from None
        result = train_larq(config=cfg, progress=not args.no_progress)
        print(f"test accuracy {result['test_accuracy']:.4f}; wrote {result['checkpoint']}")
        return 0
    report = train(config=cfg, resume=args.resume, progress=not args.no_progress)
    if report:
        print(f"test accuracy {report['test']['accuracy']:.4f} ({report['test']['correct']}/{report['test']['n']}), "
              f"simulator agrees: {report['simulator_agrees']}; wrote {cfg.out_dir}/model.pt, report.json, "
              f"confusion.png, metrics.json")
    return 0
