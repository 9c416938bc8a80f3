"""The PyTorch training loop: noise-aware training of the binarized PixelRNN on the real datasets.

Unlike the authors' code, the binary weights have real-valued latent copies (clipped to [-1, 1]) and
are binarized in the forward pass, so their signs can actually move. Reproducible by construction:
the shuffle of epoch ``e`` and the augmentation and noise of clip ``i`` are drawn from generators
seeded by ``(seed, e, i)``, so a resumed run, and a run split over DistributedDataParallel ranks
(:mod:`pixelrnn.distributed`), see exactly the same batches and noise as one uninterrupted process.
``batch_size`` stays the global batch; each rank takes every N-th clip of it.

Speed (docs/BENCHMARKS.md, "Training speed"): the model's fast path (:mod:`pixelrnn.model`) does
the work; here the next batch (augmentation and its per-clip noise draws) is prepared on a loader
thread while the current one trains, and ``device`` picks cpu or cuda (float32 everywhere: no mixed
precision, so no binary decision can change with the device's precision). ``patience`` > 0 stops
early once validation has not improved for that many epochs.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.atomic import write_json_atomic
from core.errors import InputError
from firmware_sim.noise import NoiseModel
from pixelrnn.checkpoint import load_model, save_checkpoint
from pixelrnn.data import TASKS, Dataset, load_dataset
from pixelrnn.distributed import Dist, GlobalBatchNorm2d, init_distributed, teardown_distributed
from pixelrnn.model import ModelConfig, PixelRNN, draw_noise
from pixelrnn.train_config import SCHEDULES, TrainConfig, code_version
from pixelrnn.train_state import Progress, load_state, save_state

SENSOR_WEIGHTS = ("conv1", "w_fi", "w_fh", "w_oi", "w_oh")   # the in-sensor binary weights

# schedule name -> the scheduler it builds (None: constant learning rate)
SCHEDULERS = {
    "cosine": lambda cfg, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs),
    "plateau": lambda cfg, opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3),
    "none": lambda cfg, opt: None,
}
assert set(SCHEDULERS) == set(SCHEDULES)


# -- model, batches, evaluation -------------------------------------------------------------------
def build_model(cfg: TrainConfig, train_set: Dataset) -> PixelRNN:
    """The untrained model of ``cfg`` (initial weights seeded by ``cfg.seed``), normalized on ``train_set``."""
    src = load_model(cfg.init_from) if cfg.init_from else None
    if cfg.init_decoder:      # the decoder was trained on inputs normalised the source's way: keep it
        mean, std = src.config.input_mean, src.config.input_std
    elif cfg.normalize == "dataset":
        g = train_set.frames.astype(np.float64) / 255.0
        mean, std = float(g.mean()), float(g.std())
    else:
        mean, std = ModelConfig.input_mean, ModelConfig.input_std
    mc = ModelConfig(num_classes=len(train_set.classes), classes=list(train_set.classes),
                     task=TASKS[cfg.dataset], quantizer=cfg.quantizer, quantizer_m=cfg.quantizer_m,
                     gate_threshold=cfg.gate_threshold, learn_theta0=cfg.learn_theta0,
                     input_mean=mean, input_std=std, noise_conv=cfg.noise_conv,
                     noise_gate=cfg.noise_gate, noise_out=cfg.noise_out, timesteps=train_set.frames.shape[1],
                     readout_every=cfg.readout_every, out_channels=cfg.out_channels,
                     hidden_channels=cfg.hidden_channels, readout_bits=cfg.readout_bits, readout_pool=cfg.readout_pool,
                     readout_step=cfg.readout_step, decoder=cfg.decoder, decoder_hidden=cfg.decoder_hidden)
    torch.manual_seed(cfg.seed)
    model = PixelRNN(mc)
    if src is not None:
        init_sensor_from(model, src)
    if cfg.init_decoder:
        init_decoder_from(model, src, source=cfg.init_from)
    if cfg.freeze_binary:
        for p in model.latent():
            p.requires_grad_(False)
    return model


def _flipped(w: torch.Tensor) -> torch.Tensor:
    """``w`` with 30% of its signs flipped (torch's seeded generator): a latent copy that differs."""
    return w * torch.where(torch.rand(w.shape) < 0.3, -1.0, 1.0)


def _chains(w: torch.Tensor, n: int, *, flip: bool = True) -> torch.Tensor:
    """``n`` hidden chains along dim 0 from a checkpoint's: the chains it has, copied; each extra one
    its chain 0, with 30% of the signs flipped (``flip``; thresholds are copied as they are)."""
    have = w[:n]
    return torch.cat([have] + [_flipped(w[:1]) if flip else w[:1] for _ in range(n - have.shape[0])])


def init_sensor_from(model: PixelRNN, src: PixelRNN | str) -> None:
    """Start ``model``'s in-pixel weights and thresholds from ``src`` (a model or a checkpoint path).

    The input CNN, the gate and theta0 are copied; the checkpoint's output kernel pair fills every
    output channel (a latent copy with signs flipped at random for the extra channels, so they
    differ). The gate's chains are copied as far as the checkpoint has them; each extra hidden map
    starts from its chain 0 with 30% of the latent signs of W_fi, W_fh and its W_oh column flipped
    (the threshold copied). Identical chains would get identical gradients and stay identical (a
    second map that only copies the first). The decoder starts fresh (its input is the new readout)
    unless :func:`init_decoder_from` copies it too.
    """
    src = load_model(src) if isinstance(src, str) else src
    with torch.no_grad():
        for name in ("conv1", "thresh1", "theta0"):
            getattr(model, name).copy_(getattr(src, name).detach())
        hc = model.w_fi.shape[0]
        model.rnn_threshold.copy_(_chains(src.rnn_threshold.detach(), hc, flip=False))
        for name in ("w_fi", "w_fh"):        # as many chains as the checkpoint: a plain copy, no random draws
            getattr(model, name).copy_(_chains(getattr(src, name).detach(), hc))
        for name in ("w_oi", "w_oh"):
            dst, w = getattr(model, name), getattr(src, name).detach()[:1]
            for k in range(dst.shape[0]):
                wk = w if k == 0 else _flipped(w)
                if name == "w_oh":           # (1, H_src, 5, 5) -> (1, H, 5, 5): an extra chain gets its own flips
                    wk = _chains(wk.transpose(0, 1), hc).transpose(0, 1)
                dst[k:k + 1].copy_(wk)


def init_decoder_from(model: PixelRNN, src: PixelRNN, *, source: str) -> None:
    """Copy ``src``'s decoder (every parameter and buffer outside the sensor) into ``model``: a
    fine-tune of a whole model. Its readout layout, decoder and classes must be ``model``'s."""
    mine, theirs = model.config, src.config
    for what, a, b in (("readout layout", mine.layout.describe(), theirs.layout.describe()),
                       ("decoder", mine.decoder, theirs.decoder), ("classes", mine.num_classes, theirs.num_classes)):
        if a != b:
            raise InputError(f"init_decoder: {source} has another {what} ({b} vs this run's {a}); "
                             f"drop init_decoder to start the decoder fresh")
    sensor = set(SENSOR_WEIGHTS) | {"thresh1", "rnn_threshold", "theta0"}
    state = {k: v for k, v in src.state_dict().items() if k.split(".")[0] not in sensor}
    missing = [k for k in model.state_dict() if k.split(".")[0] not in sensor and k not in state]
    if missing:
        raise InputError(f"init_decoder: {source} lacks decoder entries {missing[:4]}; drop init_decoder")
    with torch.no_grad():
        model.load_state_dict(state, strict=False)


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]) >> 1


def batch_tensors(ds: Dataset, idx: np.ndarray, *, epoch: int, cfg: TrainConfig, train: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Generator] | None]:
    """Frames, labels and per-clip noise generators for clips ``idx`` (augmented when training)."""
    frames = ds.frames[idx]
    gens = None
    if train:
        if cfg.augment:
            aug = cfg.augmentation()
            frames = np.stack([aug(ds.frames[i], np.random.default_rng([cfg.seed, epoch, int(i), 1]))
                               for i in idx])
        gens = [torch.Generator().manual_seed(_seed_of(cfg.seed, epoch, int(i), 2)) for i in idx]
    return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(ds.labels[idx]), gens


def prepare_batch(ds: Dataset, idx: np.ndarray, *, epoch: int, cfg: TrainConfig, noise: NoiseModel,
                  threads: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A training batch ready for the model: frames, labels and the clips' noise draws (on the CPU,
    from each clip's own generator, so they do not depend on the batch, rank or device; drawn on
    ``threads`` threads)."""
    frames, labels, gens = batch_tensors(ds, idx, epoch=epoch, cfg=cfg, train=True)
    return frames, labels, draw_noise(noise, len(idx), frames.shape[1], gens, frames.shape[-1],
                                      cfg.layout(frames.shape[1]).maps, cfg.hidden_channels, threads=threads)


@torch.no_grad()
def predict(model: PixelRNN, frames: np.ndarray, *, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and predictions of ``model`` in eval mode, noise off (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    logits = [model(torch.from_numpy(frames[s:s + batch]).to(device)).cpu() for s in range(0, len(frames), batch)]
    out = torch.cat(logits).numpy()
    return out, out.argmax(1)


@torch.no_grad()
def predict_simulated(model: PixelRNN, frames: np.ndarray, *, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`predict` returns, with the sensor stage run by firmware_sim's packed path instead of
    the PyTorch forward: the same binary decisions and readout levels (bit-exact, noise off; tested),
    so the same logits from the model's own decoder, about 6x faster on a CPU (docs/BENCHMARKS.md,
    "Training speed"). Validation uses it after every epoch. A model whose decoder reads the
    analog o (``readout_8bit`` off: no sensor outputs it) runs :func:`predict`."""
    from firmware_sim.simulate import simulate

    if not model.config.readout_8bit:
        return predict(model, frames)
    model.eval()
    weights = model.sensor_weights()
    device = next(model.parameters()).device
    logits = []
    for s in range(0, len(frames), chunk):
        result = simulate(weights=weights, frames=np.ascontiguousarray(frames[s:s + chunk]), path="fast", stages=())
        logits.append(model.decode(torch.from_numpy(result.readout).to(device)).cpu())
    out = (torch.cat(logits) if logits else torch.empty(0, model.config.num_classes)).numpy()
    return out, out.argmax(1)


def evaluate_split(model: PixelRNN, ds: Dataset, idx: np.ndarray, dist: Dist) -> tuple[float, float]:
    """(mean loss, accuracy) on clips ``idx`` (split across ranks), noise off: the sensor stage through
    the simulator (:func:`predict_simulated`), the decoder the model's own."""
    local = dist.shard(idx)
    loss_sum, correct = 0.0, 0.0
    if len(local):
        logits, preds = predict_simulated(model, ds.frames[local])
        labels = ds.labels[local]
        loss_sum = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="sum"))
        correct = float((preds == labels).sum())
    loss_sum, correct = dist.all_sum([loss_sum, correct])
    return loss_sum / len(idx), correct / len(idx)


def sign_agreement(model: PixelRNN, init: dict[str, torch.Tensor]) -> float:
    """Fraction of in-sensor binary weights whose sign still equals its initial sign."""
    same = total = 0
    for name in SENSOR_WEIGHTS:
        now = getattr(model, name).detach().cpu() >= 0
        same += int((now == (init[name].cpu() >= 0)).sum())
        total += now.numel()
    return same / total


# -- pieces of the loop ---------------------------------------------------------------------------
def _output_folder(out_dir: str, *, resume: bool) -> Path:
    """``out_dir``, created and checked writable; refused if it holds a run and ``resume`` is off."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out, delete=True).close()
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out} ({exc.strerror or exc})") from None
    if (out / "last.pt").exists() and not resume:
        raise InputError(f"{out} already holds a training run (last.pt): pass --resume to continue it "
                         f"or choose another --out-dir")
    return out


def _optimizer(cfg: TrainConfig, model: PixelRNN) -> torch.optim.Optimizer:
    """Adam with two learning rates: ``lr_binary`` for the latent binary weights, ``lr`` for the rest."""
    binary = [p for p in model.latent() if p.requires_grad]
    ids = {id(p) for p in binary}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": binary, "lr": cfg.lr_binary}] if binary else [])
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)


def _step_schedule(sched, val_acc: float) -> None:
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(val_acc)
    elif sched is not None:
        sched.step()


def _data_parallel(model: PixelRNN, dist: Dist) -> torch.nn.Module:
    """``model`` wrapped for DDP (BatchNorm over the global batch) when there are several ranks."""
    if dist.world == 1:
        return model
    if next(model.parameters()).device.type != "cpu":
        raise InputError("data-parallel training (torchrun) runs on the CPU (gloo): use --device cpu")
    model.bn = GlobalBatchNorm2d.from_batch_norm(model.bn)
    return torch.nn.parallel.DistributedDataParallel(model)


def _train_epoch(*, net: torch.nn.Module, model: PixelRNN, opt: torch.optim.Optimizer, ds: Dataset,
                 train_idx: np.ndarray, epoch: int, cfg: TrainConfig, dist: Dist, noise: NoiseModel,
                 progress: bool) -> tuple[float, float]:
    """One pass over ``train_idx`` in the epoch's seeded order; (loss sum, correct) over all ranks."""
    n = len(train_idx)
    model.train()
    order = train_idx[np.random.default_rng([cfg.seed, epoch]).permutation(n)]
    bar = None
    if progress and dist.main:
        from tqdm import tqdm
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="clip", leave=False,
                   dynamic_ncols=True, file=sys.stderr)
    batches = [order[s * cfg.batch_size:(s + 1) * cfg.batch_size] for s in range(math.ceil(n / cfg.batch_size))]
    batches = [b for b in batches if len(b) >= dist.world]   # a last batch too small to give every rank a clip
    device = next(model.parameters()).device
    ahead = loader_threads(device)
    # prepared between steps (ahead = 0), a batch's noise is drawn on the training threads' cores
    draw_threads = 1 if ahead else torch.get_num_threads()
    prep = lambda b: prepare_batch(ds, dist.shard(b), epoch=epoch, cfg=cfg, noise=noise,  # noqa: E731
                                   threads=draw_threads)
    # no loader at all when batches are prepared between steps
    with (ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="pixelrnn-loader") if ahead
          else contextlib.nullcontext()) as loader:
        pending = deque(loader.submit(prep, b) for b in batches[:ahead])
        loss_sum, correct = _run_batches(net=net, model=model, opt=opt, batches=batches, pending=pending,
                                         loader=loader, prep=prep, device=device, dist=dist, noise=noise, bar=bar)
    if bar is not None:
        bar.close()
    loss_sum, correct = dist.all_sum([loss_sum, correct])
    return loss_sum, correct


def loader_threads(device: torch.device) -> int:
    """Batches prepared ahead, one thread each. 0 on a CPU whose cores the training threads already
    fill: a loader thread there stalls both OpenMP threads at every barrier while it runs (measured:
    ``pixelrnn train`` 1.2x slower than preparing each batch between steps, docs/BENCHMARKS.md); 1 on a CPU
    with a core to spare; up to 4 when a GPU trains, where one thread drawing the clips' noise and
    augmenting them on the CPU is slower than the GPU's step. Each batch is made from its clips'
    own seeds, so the count changes no result."""
    if device.type == "cpu":
        return 1 if (os.cpu_count() or 1) > torch.get_num_threads() else 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _run_batches(*, net, model, opt, batches, pending, loader, prep, device, dist, noise, bar) -> tuple[float, float]:
    """The optimizer steps of one epoch; the loader prepares the next ``len(pending)`` batches
    (:func:`loader_threads`), in order, while batch s trains (none pending: each batch is prepared
    here, before its step)."""
    loss_sum = correct = 0.0
    ahead = len(pending)
    for s, global_idx in enumerate(batches):
        frames, labels, draws = pending.popleft().result() if ahead else prep(global_idx)
        if ahead and s + ahead < len(batches):    # keep `ahead` batches in preparation while this one trains
            pending.append(loader.submit(prep, batches[s + ahead]))
        frames, labels = frames.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = net(frames, draws=draws, noise=noise)
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
    return loss_sum, correct


def _stop_early(cfg: TrainConfig, run: Progress) -> bool:
    """Validation has not improved for ``patience`` epochs (never when ``patience`` is 0)."""
    return bool(cfg.patience) and bool(run.history) and run.history[-1]["epoch"] - run.best["epoch"] >= cfg.patience


def _print_epoch(row: dict, epochs: int) -> None:
    val = ("no validation clips" if row["val_acc"] is None
           else f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.3f}")
    print(f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.3f}  "
          f"{val}  {row['clips_per_s']:.1f} clips/s  "
          f"signs kept {row['sign_agreement_with_init']:.3f}", file=sys.stderr, flush=True)


# -- the loop -------------------------------------------------------------------------------------
def train(*, config: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train, keep the best model on validation, evaluate it on the test split; return the report.

    Writes ``out_dir/model.pt`` (best on validation), ``last.pt`` (resumable state), ``metrics.json``
    and at the end ``report.json`` and ``confusion.png``. ``stop_after``: stop once that many epochs
    are done (time-boxed jobs; continue with ``resume``); the final report is only made when the last
    epoch is done (or early stopping ended the run), else ``{}`` is returned.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError("config must be a TrainConfig")
    for name, value in (("resume", resume), ("progress", progress)):
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r}")
    if stop_after is not None and (not isinstance(stop_after, int) or isinstance(stop_after, bool) or stop_after < 0):
        raise InputError(f"stop_after must be None or an integer >= 0, got {stop_after!r}")
    cfg = config
    dist = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = _output_folder(cfg.out_dir, resume=resume)
    state_path, best_path = out / "last.pt", out / "model.pt"

    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir or None)
    parts = cfg.split(ds)
    train_idx = parts["train"][:cfg.limit] if cfg.limit else parts["train"]
    device = torch.device(cfg.resolved_device())
    model = build_model(cfg, ds.subset(train_idx)).to(device)
    run = Progress(init_signs={n: getattr(model, n).detach().cpu().clone() for n in SENSOR_WEIGHTS})
    opt = _optimizer(cfg, model)
    sched = SCHEDULERS[cfg.schedule](cfg, opt)
    if resume and state_path.exists():
        run = load_state(state_path, cfg=cfg, model=model, opt=opt, sched=sched)
    net = _data_parallel(model, dist)
    version = code_version()
    noise = cfg.train_noise

    n = len(train_idx)
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    stopped = _stop_early(cfg, run)
    for epoch in range(run.start, last):
        if stopped:
            break
        t0 = time.perf_counter()
        loss_sum, correct = _train_epoch(net=net, model=model, opt=opt, ds=ds, train_idx=train_idx, epoch=epoch,
                                         cfg=cfg, dist=dist, noise=noise, progress=progress)
        seconds = time.perf_counter() - t0
        held_out = len(parts["val"]) > 0      # fold -1: no validation clips; the last epoch is the model
        val_loss, val_acc = evaluate_split(model, ds, parts["val"], dist) if held_out else (None, None)
        val_seconds = time.perf_counter() - t0 - seconds
        lr = opt.param_groups[0]["lr"]
        _step_schedule(sched, val_acc)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": round(seconds, 3),
               "val_seconds": round(val_seconds, 3),
               "clips_per_s": round(n / seconds, 2),
               "sign_agreement_with_init": sign_agreement(model, run.init_signs)}
        run.history.append(row)
        improved = not held_out or (val_acc, -val_loss) > (run.best["val_acc"], -run.best["val_loss"])
        if improved:
            run.best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
        stopped = _stop_early(cfg, run)
        if dist.main:
            if improved:
                save_checkpoint(model, best_path, extra={"train_config": cfg.to_dict(), "epoch": epoch + 1,
                                                         "val_acc": val_acc, "code_version": version})
            save_state(state_path, cfg=cfg, version=version, epoch=epoch, model=model, opt=opt, sched=sched,
                       progress=run)
            write_json_atomic(out / "metrics.json", {"config": cfg.to_dict(), "code_version": version,
                                                     "epochs": run.history, "best": run.best,
                                                     "stopped_early": stopped})
            _print_epoch(row, cfg.epochs)
            if stopped:
                print(f"early stopping: no better validation result for {cfg.patience} epochs "
                      f"(best epoch {run.best['epoch']})", file=sys.stderr, flush=True)
        dist.barrier()
    report: dict = {}
    if dist.main and (last == cfg.epochs or stopped):
        from pixelrnn.report import final_report
        report = final_report(best_path=best_path, ds=ds, test_idx=parts["test"], out=out,
                              history=run.history, best_epoch=run.best["epoch"], config=cfg.to_dict(),
                              train_idx=train_idx)
    dist.barrier()
    teardown_distributed(dist)
    return report
