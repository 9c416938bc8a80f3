"""Checkpoints: ours (config + state dict), and import of the authors' published state dicts.

Loading never unpickles arbitrary objects: ``torch.load(..., weights_only=True)``. Any file that is
neither our format nor one of the two authors' layouts (gesture, lips) is refused with a one-line
reason.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from core.atomic import atomic_open
from core.errors import InputError
from pixelrnn import __version__
from pixelrnn.model import ModelConfig, PixelRNN

FORMAT = "pixelrnn-edge/1"

# The authors' gesture model (CNN_noise + rnn_1_mul_noise_fixed) and lip model
# (CNN_k5_single_layer_relu_mp_thresh_quantized + rnn_1_qt). ``cnn_model.thresh2`` exists in both
# but is never used by those forward passes; the lip model has no gate threshold.
_AUTHORS_COMMON = {
    "cnn_model.conv1.weight": "conv1", "cnn_model.thresh1": "thresh1",
    "rnn_model.ConvGates_i.weight": "w_fi", "rnn_model.ConvGates_h.weight": "w_fh",
    "rnn_model.Conv_out_i.weight": "w_oi", "rnn_model.Conv_out_h.weight": "w_oh",
    "fin_conv.weight": "fin_conv", "fin_convpost.0.weight": "bn.weight",
    "fin_convpost.0.bias": "bn.bias", "fin_convpost.0.running_mean": "bn.running_mean",
    "fin_convpost.0.running_var": "bn.running_var",
    "fin_convpost.0.num_batches_tracked": "bn.num_batches_tracked",
    "thresh3": "thresh3", "fc.weight": "fc.weight", "fc.bias": "fc.bias",
}
_AUTHORS_IGNORED = {"cnn_model.thresh2"}

# The authors' 8-bit test frames are min-max rescaled normalised images, so x = 0 sits between two
# gray levels. Measured on their intermediates (0_input_x vs 0_binarized_x): for the gesture clips
# the zero lies in gray level 116 (39.4% of its pixels binarize to +1, so x = 0 at ~116.61; their
# code notes vid_min = -2.0198, vid_max = 2.3987, i.e. 116.57); for the lip clips in level 113
# (63.4% -> ~113.37). We binarize at that gray level, so the ambiguous level maps to -1.
AUTHORS_FRONTEND = {
    "gesture": {"input_mean": 116.57 / 255.0, "input_std": 1.0 / (2.3987 + 2.0198)},
    "lips": {"input_mean": 113.37 / 255.0, "input_std": 1.0 / (2.3987 + 2.0198)},
}
GESTURE_CLASSES = [f"gesture{i + 1}" for i in range(9)]
LIP_CLASSES = ["one", "two", "three", "four"]


MAX_TIMESTEPS = 1024          # frames per window a sensor program may run (bounds, not a model limit)


class CheckpointError(InputError):
    """A weights file that cannot be used, with a one-line reason."""


def check_finite(state: dict, *, source: str) -> None:
    """Refuse a state dict with a NaN or infinite value, naming the tensor (a silent wrong answer
    otherwise: NaN logits, an accuracy from argmax of NaN, a bundle that decodes to NaN)."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                raise CheckpointError(f"{source}: tensor {name} holds {int(bad.sum())} NaN or infinite "
                                      f"value(s); the weights are damaged (retrain or use another checkpoint)")


def _check_config(config: ModelConfig, *, source: str) -> None:
    t = config.timesteps
    if not (isinstance(t, int) and 1 <= t <= MAX_TIMESTEPS):
        raise CheckpointError(f"{source}: timesteps must be an integer 1..{MAX_TIMESTEPS}, got {t!r}")
    names = config.class_names
    if not all(isinstance(c, str) and c.strip() for c in names):
        raise CheckpointError(f"{source}: class names must be non-empty strings")


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch weights file ({first[:160]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict or checkpoint")
    return data


def from_authors_state_dict(state: dict, *, source: str = "state dict") -> PixelRNN:
    """Build a PixelRNN from one of the authors' state dicts (gesture or lip layout)."""
    keys = set(state)
    expected = set(_AUTHORS_COMMON) | _AUTHORS_IGNORED
    is_gesture = keys == expected | {"rnn_model.rnn_threshold"}
    is_lips = keys == expected
    if not (is_gesture or is_lips):
        missing = sorted(expected - keys)[:3]
        extra = sorted(keys - expected - {"rnn_model.rnn_threshold"})[:3]
        raise CheckpointError(
            f"{source} is not a PixelRNN state dict (missing {missing or 'nothing'}, "
            f"unexpected {extra or 'nothing'}); expected the authors' gesture or lip layout or a "
            f"pixelrnn-edge checkpoint")
    try:
        num_classes = int(state["fc.weight"].shape[0])
        if (tuple(state["fc.weight"].shape) != (num_classes, 4096)
                or tuple(state["cnn_model.conv1.weight"].shape) != (16, 1, 5, 5)):
            raise CheckpointError(f"{source}: unexpected tensor shapes for PixelRNN "
                                  f"(fc {tuple(state['fc.weight'].shape)})")
    except AttributeError:
        raise CheckpointError(f"{source}: values are not tensors") from None
    check_finite(state, source=source)
    task = "gesture" if is_gesture else "lips"
    classes = GESTURE_CLASSES if (is_gesture and num_classes == 9) else (
        LIP_CLASSES if (is_lips and num_classes == 4) else [])
    config = ModelConfig(num_classes=num_classes, classes=classes, task=task,
                         gate_threshold=is_gesture, **AUTHORS_FRONTEND[task])
    model = PixelRNN(config)
    mapped = {ours: state[theirs] for theirs, ours in _AUTHORS_COMMON.items()}
    if is_gesture:
        mapped["rnn_threshold"] = state["rnn_model.rnn_threshold"]
    else:
        mapped["rnn_threshold"] = torch.zeros(1)
    mapped["theta0"] = torch.zeros(1)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: could not map keys (missing {missing}, unexpected {unexpected})")
    model.eval()
    return model


def load_model(path: str | os.PathLike) -> PixelRNN:
    """Load our checkpoint or one of the authors' state dicts; the model comes back in eval mode."""
    path = Path(path)
    data = _torch_load(path)
    if data.get("format") == FORMAT:
        try:
            config = ModelConfig.from_dict(dict(data["config"]))
            _check_config(config, source=str(path))
            if not isinstance(data["state_dict"], dict):
                raise TypeError("state_dict is not a dict")
            check_finite(data["state_dict"], source=str(path))
            model = PixelRNN(config)
            model.load_state_dict(data["state_dict"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: damaged pixelrnn-edge checkpoint ({first[:160]})") from None
        model.eval()
        return model
    return from_authors_state_dict(data, source=str(path))


def save_checkpoint(model: PixelRNN, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": __version__, "config": model.config.to_dict(),
               "state_dict": model.state_dict(), "extra": dict(extra or {})}
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path
