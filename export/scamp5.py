"""The authors' SCAMP-5 weight text: what gets pasted into the sensor's firmware.

Layout (measured on ``weights_for_scamp/cam_noise_iw10.txt`` and ``lip_iw10.txt`` against the
``.pt`` files they were made from; every kernel of both files matches):

- A sequence of entries ``<key>:`` on its own line, then the value.
- Keys, in this order: ``thresh3``, ``cnn_model.thresh1``, ``cnn_model.conv1.weight``,
  ``rnn_model.rnn_threshold`` (gesture layout only: models with a gate threshold),
  ``rnn_model.convgates_i.weight`` (W_fi), ``rnn_model.convgates_h.weight`` (W_fh),
  ``rnn_model.conv_out_i.weight`` (W_oi), ``rnn_model.conv_out_h.weight`` (W_oh),
  ``fin_conv.weight``, ``fin_convpost.0.weight``, ``fin_convpost.0.bias``, ``fc.weight``,
  ``fc.bias``: the state dict's order and names, lower-cased, without the BatchNorm running
  statistics. The authors' files also hold ``cnn_model.thresh2`` after ``cnn_model.thresh1``; no
  forward pass uses it and our models do not have it, so we do not write it.
- Real values: the Python ``str`` of the tensor's nested list (``tolist()``), float32 values printed
  as the shortest float64 repr, e.g. ``[0.9976463913917542]``, ``[[[[-1.0]]]]``, ``fc.weight``
  ``[[...], [...]]`` on one line.
- Binary 5x5 kernels: one C initializer block per kernel, ``    { `` / ``        {a,b,...},`` (25
  integers +-1) / ``    }, ``. **Kernel element order**: the kernel's rows from the bottom
  (row 4) to the top (row 0), each row left to right, i.e. ``np.flipud(k).ravel()`` (the array's
  y axis points the other way from the image's). **Kernel order** (``conv1``): the 16 kernels in
  raster order of the 4x4 feature mosaic: block ``i = 4 * tile_row + tile_col`` holds map
  ``k = 4 * tile_col + tile_row`` (map k sits at tile row ``k % 4``, tile column ``k // 4``,
  ``firmware_sim.mosaic``), i.e. maps 0, 4, 8, 12, 1, 5, 9, 13, ...
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from core.atomic import atomic_open
from core.errors import InputError
from firmware_sim.weights import KERNEL, N_MAPS, SensorWeights

KERNEL_KEYS = ("cnn_model.conv1.weight", "rnn_model.convgates_i.weight", "rnn_model.convgates_h.weight",
               "rnn_model.conv_out_i.weight", "rnn_model.conv_out_h.weight")
# text block i holds map TEXT_ORDER[i]: mosaic raster order (tile row-major)
TEXT_ORDER = tuple(4 * col + row for row in range(4) for col in range(4))


def kernels_to_text_order(kernels: np.ndarray) -> np.ndarray:
    """(n, 5, 5) kernels (model layout) -> (n, 25) rows as the SCAMP-5 text writes them."""
    kernels = np.asarray(kernels)
    if kernels.ndim != 3 or kernels.shape[1:] != (KERNEL, KERNEL) or kernels.shape[0] not in (1, N_MAPS):
        raise ValueError(f"kernels must be (1 or {N_MAPS}, {KERNEL}, {KERNEL}), got {kernels.shape}")
    order = TEXT_ORDER if kernels.shape[0] == N_MAPS else (0,)
    return np.stack([np.flipud(kernels[k]).ravel() for k in order])


def kernels_from_text_order(rows: np.ndarray) -> np.ndarray:
    """The inverse of :func:`kernels_to_text_order`: (n, 25) text rows -> (n, 5, 5) model layout."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != KERNEL * KERNEL or rows.shape[0] not in (1, N_MAPS):
        raise ValueError(f"kernel rows must be (1 or {N_MAPS}, {KERNEL * KERNEL}), got {rows.shape}")
    out = np.empty((rows.shape[0], KERNEL, KERNEL), dtype=rows.dtype)
    order = TEXT_ORDER if rows.shape[0] == N_MAPS else (0,)
    for i, k in enumerate(order):
        out[k] = np.flipud(rows[i].reshape(KERNEL, KERNEL))
    return out


def scamp5_entries(*, sensor: SensorWeights, decoder, gate_threshold: bool) -> dict[str, np.ndarray]:
    """The text's entries, in order: (n, 25) int8 kernel rows, float32 arrays for everything else.

    ``decoder`` is an :class:`export.onnx_export.DecoderParams`; ``gate_threshold`` says whether the
    model has a gate threshold (written as ``rnn_model.rnn_threshold``, as in the gesture layout).
    """
    if not isinstance(sensor, SensorWeights):
        raise TypeError(f"sensor must be a SensorWeights, got {type(sensor).__name__}")
    if sensor.hidden > 1:
        from export.layouts import hidden_refusal

        raise InputError(hidden_refusal("scamp5", sensor.hidden))
    f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    entries = {"thresh3": f32(decoder.thresh3).reshape(1),
               "cnn_model.thresh1": f32([sensor.thresh1]),
               "cnn_model.conv1.weight": kernels_to_text_order(sensor.conv1)}
    if gate_threshold:
        entries["rnn_model.rnn_threshold"] = f32([sensor.rnn_threshold])
    for key, kernel in zip(KERNEL_KEYS[1:], (sensor.w_fi, sensor.w_fh, sensor.w_oi, sensor.w_oh)):
        entries[key] = kernels_to_text_order(kernel.reshape(-1, KERNEL, KERNEL))   # w_oi, w_oh: (K=1, 5, 5)
    entries.update({"fin_conv.weight": f32(decoder.fin_sign).reshape(1, 1, 1, 1),
                    "fin_convpost.0.weight": f32(decoder.bn_weight).reshape(1),
                    "fin_convpost.0.bias": f32(decoder.bn_bias).reshape(1),
                    "fc.weight": f32(decoder.fc_weight), "fc.bias": f32(decoder.fc_bias)})
    return entries


def format_scamp5_text(entries: dict[str, np.ndarray]) -> str:
    """Entries (as from :func:`scamp5_entries`) -> the text, in the authors' exact layout."""
    lines = []
    for key, value in entries.items():
        lines.append(f"{key}:")
        if key in KERNEL_KEYS:
            for row in np.asarray(value, dtype=np.int64):
                lines += ["    { ", "        {" + ",".join(str(int(v)) for v in row) + "},", "    }, "]
        else:
            lines.append(str(np.asarray(value, dtype=np.float32).astype(np.float64).tolist()))
    return "\n".join(lines) + "\n"


def write_scamp5_text(*, model, path: str | os.PathLike) -> Path:
    """Write a :class:`pixelrnn.model.PixelRNN`'s weights as SCAMP-5 text, atomically. A model with
    another readout layout, or more than one hidden map (:func:`scamp5_entries`), is a one-line
    InputError (nothing written)."""
    from export.layouts import layout_refusal
    from export.onnx_export import decoder_params

    layout = model.config.layout
    if not layout.is_authors:
        raise InputError(layout_refusal("scamp5", layout))
    path = Path(path)
    text = format_scamp5_text(scamp5_entries(sensor=model.sensor_weights(), decoder=decoder_params(model),
                                             gate_threshold=bool(model.config.gate_threshold)))
    with atomic_open(path, "w", encoding="ascii", newline="\n", shared=True) as fh:
        fh.write(text)
    return path


def read_scamp5_text(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a SCAMP-5 weight text -> {key: array}, in file order.

    Kernel blocks come back as (n, 25) int8 rows in file order (:func:`kernels_from_text_order`
    turns them into (n, 5, 5) kernels); bracketed values as float64 arrays of their nested shape.
    Any malformed line is a one-line :class:`InputError` naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        raise InputError(f"SCAMP-5 weight file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable SCAMP-5 weight text ({exc})") from None
    entries: dict[str, np.ndarray] = {}
    key, rows = None, []

    def bad(n: int, why: str) -> InputError:
        return InputError(f"{path}, line {n}: {why}")

    def close(n: int) -> None:
        if key is not None and key not in entries:
            if not rows:
                raise bad(n, f"entry {key!r} has no value")
            entries[key] = np.array(rows, dtype=np.int8)

    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line in ("{", "},"):
            continue
        if line.endswith(":") and not line.startswith(("[", "{")):
            close(n)
            key, rows = line[:-1], []
            if key in entries:
                raise bad(n, f"duplicate entry {key!r}")
            continue
        if key is None:
            raise bad(n, "value before the first 'key:' line")
        if line.startswith("["):
            if rows or key in entries:
                raise bad(n, f"entry {key!r} has more than one value")
            try:
                value = np.array(json.loads(line), dtype=np.float64)
            except (ValueError, TypeError) as exc:
                raise bad(n, f"cannot parse the value of {key!r} ({str(exc)[:80]})") from None
            if not np.all(np.isfinite(value)):
                raise bad(n, f"{key!r} holds non-finite values")
            entries[key] = value
        elif line.startswith("{") and line.endswith(("},", "}")):
            if key in entries:
                raise bad(n, f"entry {key!r} mixes kernels and values")
            try:
                row = [int(v) for v in line.strip("{},").split(",")]
            except ValueError:
                raise bad(n, f"kernel row of {key!r} must be integers") from None
            if len(row) != KERNEL * KERNEL or any(v not in (-1, 1) for v in row):
                raise bad(n, f"kernel row of {key!r} must hold {KERNEL * KERNEL} values +-1")
            rows.append(row)
        else:
            raise bad(n, f"unexpected text {line[:40]!r}")
    close(len(lines))
    if not entries:
        raise InputError(f"{path} holds no SCAMP-5 weight entries")
    return entries
