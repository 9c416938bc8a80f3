"""The settings of a training run: the ``TrainConfig`` dataclass, its YAML file and the code version.

One place that says what a run depends on, shared by both backends (``pixelrnn.train_loop`` for
PyTorch, ``pixelrnn.larq_train`` for Keras/Larq) and by the command line (``pixelrnn.train``).
Validation errors name settings (``epochs must be >= 1``), never command-line flags.
"""
from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.readout_layout import ReadoutLayout
from firmware_sim.noise import NoiseModel
from pixelrnn import __version__
from pixelrnn.data import (
    ALL_CLIPS,
    AVLETTERS_MS_VAL_PARTS,
    CV_DATASETS,
    DATASETS,
    ROTATING_VAL_DATASETS,
    TASKS,
    Augment,
    Dataset,
    split,
)
from pixelrnn.quantizers import QUANTIZERS

SCHEDULES = ("cosine", "plateau", "none")
OPTIMIZERS = ("adam",)
NORMALIZATIONS = ("dataset", "imagenet")
VAL_SPLITS = ("fixed", "seed")
DEVICES = ("auto", "cpu", "cuda")
# data sets whose classes a left-right mirror changes: the hand gestures (Cambridge's leftward and rightward
# motions); a mouth read in a mirror says the same
MIRROR_VARIANT = tuple(name for name, task in TASKS.items() if task == "gesture")

_INTS = ("fold", "limit", "batch_size", "epochs", "seed", "max_shift", "max_time_shift", "threads", "patience",
         "readout_every", "out_channels", "hidden_channels", "readout_bits", "readout_pool", "decoder_hidden")
_NUMBERS = ("quantizer_m", "noise_conv", "noise_gate", "noise_out", "lr", "lr_binary", "weight_decay",
            "readout_step")
_BOOLS = ("freeze_binary", "learn_theta0", "gate_threshold", "augment", "hflip", "init_decoder")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise InputError(msg)


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved inside every checkpoint)."""

    dataset: str = "grid"
    data_dir: str = ""                 # empty: $PIXELRNN_DATA or ../shared/data
    fold: int = 0                      # cambridge: which of the 5 folds is the test fold (-1: none, all train)
    val_split: str = "fixed"           # avletters_ms: validate on the fixed tenth of takes 1-2 (every seed the
                                       # same clips), or "seed": on tenth seed mod 10, so seeds validate on
                                       # different clips and their pooled validation sees more of them
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
    hflip: bool = False                # also mirror training clips left-right (lips only: on Cambridge it
                                       # would swap the leftward and rightward classes)
    threads: int = 0                   # torch threads per process; 0 = PyTorch's default
    device: str = "auto"               # cpu, cuda, or auto (cuda when available, else cpu); float32 everywhere
    patience: int = 0                  # early stopping: stop after this many epochs without a better
                                       # validation result (0 = off, run all epochs)
    # the readout (core.readout_layout): the defaults are the authors' (o at the last frame, 8 bit)
    readout_every: int = 0             # read o out every N frames (0: the last frame only)
    out_channels: int = 1              # K output kernel pairs: K maps per readout frame
    hidden_channels: int = 1           # H binary hidden maps, each with its own gate (as a SCAMP-5 element fits)
    readout_bits: int = 8              # 8, 4, 2 or 1 (trained for, straight-through)
    readout_pool: int = 1              # maps averaged over pool x pool blocks on the array (1, 2, 4, 8)
    readout_step: float = 0.0          # MAC units per level below 8 bits (0: the default for the bits)
    decoder: str = "authors"           # off-sensor head: authors (1x1 conv, BN, tanh, Linear), mlp or cnn
    decoder_hidden: int = 256          # width of the mlp head (the cnn's channels: hidden / 8, 16, 16)
    init_from: str = ""                # a model.pt to start the in-pixel weights and thresholds from
    init_decoder: bool = False         # with init_from: also its decoder and input normalisation (a fine-tune
                                       # of the whole model; same readout layout and decoder)
    out_dir: str = "runs/grid"

    def __post_init__(self) -> None:
        _check(self.dataset in DATASETS and self.dataset != "tulips",
               f"dataset must be one of {', '.join(d for d in DATASETS if d != 'tulips')} (tulips is test-only), "
               f"got {self.dataset!r}")
        _check(self.quantizer in QUANTIZERS, f"quantizer must be one of {sorted(QUANTIZERS)}, got {self.quantizer!r}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")
        _check(self.val_split in VAL_SPLITS, f"val_split must be one of {VAL_SPLITS}, got {self.val_split!r}")
        _check(self.val_split == "fixed" or self.dataset in ROTATING_VAL_DATASETS,
               f"val_split {self.val_split!r} is for {', '.join(ROTATING_VAL_DATASETS)} (validation drawn from "
               f"the training takes); {self.dataset} has one fixed validation split: set val_split fixed")
        _check(self.normalize in NORMALIZATIONS, f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        for name in _INTS:
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
        for name in _NUMBERS:
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                   and value >= 0, f"{name} must be a finite number >= 0, got {value!r}")
        for name in _BOOLS:
            _check(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.batch_size >= 2, f"batch_size must be >= 2 (clips are batched), got {self.batch_size}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.limit >= 0 and self.threads >= 0 and self.seed >= 0, "limit, threads and seed must be >= 0")
        _check(self.patience >= 0, f"patience must be >= 0 (0 = no early stopping), got {self.patience}")
        _check(self.max_shift >= 0 and self.max_time_shift >= 0, "max_shift and max_time_shift must be >= 0")
        _check(not (self.hflip and self.dataset in MIRROR_VARIANT), f"hflip mirrors left and right, which changes "
               f"{self.dataset}'s classes (leftward and rightward motions): set hflip false for {self.dataset}")
        _check(self.augment or not self.hflip, "hflip is an augmentation: it needs augment true")
        _check(bool(self.out_dir), "out_dir must not be empty")
        if self.noise_file:
            NoiseModel.from_spec(self.noise_file)   # one-line error now, not after loading the data
        try:
            self.layout(16)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        _check(self.hidden_channels >= 1, f"hidden_channels must be >= 1, got {self.hidden_channels}")
        self.check_hidden(16)
        _check(self.decoder in ("authors", "mlp", "cnn"), f"decoder must be authors, mlp or cnn, got {self.decoder!r}")
        _check(self.decoder_hidden >= 1, f"decoder_hidden must be >= 1, got {self.decoder_hidden}")
        _check(not self.init_from or Path(self.init_from).is_file(), f"init_from: no such file {self.init_from!r}")
        _check(self.init_from or not self.init_decoder, "init_decoder needs init_from (the model to start from)")
        if self.fold == ALL_CLIPS:
            _check(self.dataset in CV_DATASETS, f"fold {ALL_CLIPS} (every clip trains) is for the cross-validated "
                   f"data sets ({', '.join(CV_DATASETS)}), not {self.dataset}")
            _check(not self.patience and self.schedule != "plateau", f"fold {ALL_CLIPS} has no validation clips: "
                   f"set patience 0 and a schedule other than plateau (the last epoch is the model)")

    def split(self, ds: Dataset) -> dict[str, np.ndarray]:
        """The train / val / test indices of ``ds`` these settings train on (:func:`pixelrnn.data.split`
        with ``fold`` and the validation part); both training backends take their split from here."""
        return split(ds, fold=self.fold, val_part=self.val_part())

    def val_part(self) -> int:
        """Which validation part :func:`pixelrnn.data.split` takes (0, the fixed split, unless
        ``val_split`` is ``seed``: the seed's tenth)."""
        return self.seed % AVLETTERS_MS_VAL_PARTS if self.val_split == "seed" else 0

    def augmentation(self) -> Augment:
        """The training clips' augmentation (:class:`pixelrnn.data.Augment`), the same in both backends."""
        return Augment(max_shift=self.max_shift, max_time_shift=self.max_time_shift, hflip=self.hflip)

    def check_hidden(self, timesteps: int) -> None:
        """``hidden_channels`` must fit a SCAMP-5 element's registers with this readout (one line
        naming the bank it lacks, :func:`firmware_sim.program.check_hidden_fits`)."""
        from firmware_sim.program import check_hidden_fits

        try:
            check_hidden_fits(self.layout(timesteps), self.hidden_channels)
        except ValueError as exc:
            raise InputError(f"hidden_channels={self.hidden_channels}: {exc}") from None

    def layout(self, timesteps: int) -> ReadoutLayout:
        """The readout these settings ask for, for clips of ``timesteps`` frames."""
        return ReadoutLayout.every(self.readout_every, timesteps=timesteps, channels=self.out_channels,
                                   bits=self.readout_bits, pool=self.readout_pool, step=self.readout_step)

    def resolved_device(self) -> str:
        """``device`` with ``auto`` resolved: cuda when a GPU is visible, else cpu."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError("device cuda requested but no CUDA GPU is available (use --device cpu or auto)")
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

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
        """A config from a mapping of settings; ``source`` names where it came from in errors."""
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


def resolve_config(*, path: str | os.PathLike | None = None, overrides: Mapping[str, object] | None = None,
                   source: str = "overrides") -> TrainConfig:
    """The settings of ``path`` (a YAML file, if given), then ``overrides`` on top (``None`` values skipped);
    the rest take the defaults. ``source`` names the overrides in errors when there is no file."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise InputError(f"overrides must be a mapping of settings, got {type(overrides).__name__}")
    values = load_config_file(path) if path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(values, source=str(path) if path else source)


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    here = Path(__file__).parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return f"{__version__}+g{rev.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__
