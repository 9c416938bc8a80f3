"""The resumable state of a PyTorch training run (``out_dir/last.pt``): written after every epoch,
read back by ``resume`` so that a resumed run is bit-identical to an uninterrupted one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.atomic import atomic_open
from core.errors import InputError
from pixelrnn.checkpoint import check_finite
from pixelrnn.train_config import TrainConfig

STATE_FORMAT = "pixelrnn-edge-train/1"


def _settings_free_to_change(cfg: TrainConfig) -> tuple[str, ...]:
    """Settings a resumed run may change: where it writes, its threads and device, its early
    stopping patience, and (without a cosine schedule, whose period is the epoch count) how many
    epochs it runs."""
    return ("out_dir", "threads", "device", "patience") + (("epochs",) if cfg.schedule != "cosine" else ())


@dataclass
class Progress:
    """What a run carries from one epoch to the next, besides model, optimizer and scheduler."""

    init_signs: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "val_loss": float("inf"), "epoch": -1})
    start: int = 0                    # the next epoch to run (0-based)


def save_state(path: Path, *, cfg: TrainConfig, version: str, epoch: int, model: torch.nn.Module,
               opt: torch.optim.Optimizer, sched, progress: Progress) -> None:
    """Write the state after ``epoch`` (0-based) atomically."""
    with atomic_open(path, "wb") as fh:
        torch.save({"format": STATE_FORMAT, "train_config": cfg.to_dict(), "code_version": version,
                    "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "init_signs": progress.init_signs, "history": progress.history, "best": progress.best}, fh)


def load_state(path: Path, *, cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
               sched) -> Progress:
    """Load ``path`` into ``model``, ``opt`` and ``sched``; refuse a state trained with other settings."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not a torch file: one line, never a traceback
        raise InputError(f"cannot resume: {path} is unreadable ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}); "
                         f"delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(f"{path} is not a pixelrnn training state")
    missing = [k for k in ("train_config", "model", "optimizer", "init_signs", "history", "best", "epoch")
               if k not in state]
    if missing or not isinstance(state["model"], dict):
        raise InputError(f"cannot resume: {path} is incomplete (missing {', '.join(missing) or 'model weights'}); "
                         f"delete it to start over")
    check_finite(state["model"], source=str(path))
    saved = dict(state["train_config"])
    free = _settings_free_to_change(cfg)
    mismatch = [k for k in saved if k not in free and saved[k] != getattr(cfg, k, None)]
    if mismatch:
        raise InputError(f"cannot resume: {path} was trained with different settings "
                         f"({', '.join(f'{k}={saved[k]!r}' for k in mismatch[:3])}); use the same config")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot resume: {path} does not fit this model ({str(exc).strip().splitlines()[0][:120]}); "
                         f"delete it to start over") from None
    return Progress(init_signs=state["init_signs"], history=list(state["history"]), best=dict(state["best"]),
                    start=int(state["epoch"]) + 1)
