"""``export_model``: one checkpoint -> a verified bundle folder for a device, written all or nothing.

Formats: ``onnx`` (sensor.onnx, host.onnx, pixelrnn.onnx), ``tflite`` and ``lce`` (``export.tflite``,
needs the ``[larq]`` extra), ``scamp5`` (the authors' firmware weight text), ``all``. Every bundle
also holds ``sensor_weights.npz`` (the sensor program for the numpy simulator on a device) and
``manifest.json`` (checksums, classes, preprocessing, versions; see ``export.bundle``).

Everything is written into a temporary folder next to ``out`` and moved into ``out`` only when all
of it succeeded; on any failure the temporary folder is removed and ``out`` is left as it was.

A model with another readout layout (``config.layout`` not the authors', :mod:`core.readout_layout`)
or decoder head exports ``sensor_weights.npz``, the manifest and:

- ``onnx``: all three files, ``sensor.onnx`` and ``pixelrnn.onnx`` reading out the layout's levels
  (1, M, S, S) uint8 and ``host.onnx`` decoding them (:mod:`export.onnx_export`);
- ``tflite``: ``pixelrnn.tflite`` (frames -> logits) and ``host.tflite`` (the levels -> logits),
  builtin ops only; ``lce``: ``pixelrnn_lce.tflite``, bit-packed (:mod:`export.tflite_layout`);
- ``tflite`` with ``int8``: also ``host_int8.tflite``, the layout's decoder quantized to int8 on
  representative readouts of the layout's shape (N, M, S, S) (:func:`load_representative`), with
  host.tflite's input and output (uint8 levels -> float32 logits);
- ``scamp5`` cannot express a layout yet: asked for by name, the export is refused with a one-line
  InputError naming the format and the layout (nothing is written); under ``all`` it is skipped,
  with its reason under ``skipped`` (:data:`LAYOUT_REASONS`, :func:`layout_refusal`).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.atomic import make_temp_dir
from core.errors import InputError
from core.npz import open_npz
from export.bundle import MANIFEST, BundleError, build_manifest, save_sensor_weights, verify_bundle, write_manifest
from export.layouts import HIDDEN_REASONS, LAYOUT_REASONS, hidden_refusal, layout_refusal, layout_what

FORMATS = ("onnx", "tflite", "lce", "scamp5")
ALL = "all"
SCAMP5_FILE = "weights_scamp5.txt"
SENSOR_FILE = "sensor_weights.npz"
FULL_GRAPH = "pixelrnn.onnx"              # frames -> logits in one ONNX graph (sensor.onnx + host.onnx)
LARQ_HINT = "pip install -c constraints.txt -e '.[larq]'"
READOUT_KEYS = ("readouts", "readout")     # real readouts; what pixelrnn simulate writes


@dataclass(frozen=True)
class ExportResult:
    out: Path
    files: dict[str, int]          # file name (relative to out) -> bytes, manifest.json included
    seconds: float
    formats: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)   # format or file -> why it was not written


def _asked_all(formats) -> bool:
    """Whether ``all`` was among the formats asked for (after :func:`parse_formats` accepted them)."""
    return formats == ALL or (not isinstance(formats, str) and ALL in list(formats))


def layout_plan(layout, chosen: tuple[str, ...], *, asked_all: bool, decoder: str = "authors",
                hidden: int = 1) -> tuple[tuple[str, ...], dict[str, str]]:
    """(formats to write, {format or file: why skipped}) for a model reading out ``layout`` with
    ``decoder`` and ``hidden`` hidden maps.

    The authors' network (layout, head, one hidden map): everything chosen, nothing skipped. Any
    other: ``onnx``, ``tflite`` (with int8: host_int8.tflite too) and ``lce`` write all their files;
    scamp5 is skipped under ``all`` and a one-line InputError when named (:func:`layout_refusal`,
    :func:`hidden_refusal`)."""
    authors_readout = layout.is_authors and decoder == "authors"
    if authors_readout and hidden == 1:
        return chosen, {}
    reasons = HIDDEN_REASONS if authors_readout else LAYOUT_REASONS
    refused = [f for f in chosen if f in reasons]
    if refused and not asked_all:
        raise InputError(hidden_refusal(refused[0], hidden) if authors_readout
                         else layout_refusal(refused[0], layout, decoder))
    what = f"hidden_channels={hidden}" if authors_readout else layout_what(layout, decoder)
    skipped = {f: f"{reasons[f]}; cannot express {what}" for f in refused}
    return tuple(f for f in chosen if f not in reasons), skipped


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """Validate format names -> the chosen formats in canonical order (``all`` = every format)."""
    if isinstance(formats, str):
        items = [formats]
    elif isinstance(formats, Sequence) and not isinstance(formats, (bytes, bytearray)):
        items = list(formats)
    else:
        raise InputError(f"formats must be a format name or a list of names, got {type(formats).__name__}")
    if not items:
        raise InputError(f"no export format given; choose from {', '.join(FORMATS + (ALL,))}")
    for item in items:
        if not isinstance(item, str) or item not in FORMATS + (ALL,):
            raise InputError(f"unknown export format {item!r}; choose from {', '.join(FORMATS + (ALL,))}")
    chosen = set(FORMATS) if ALL in items else set(items)
    return tuple(f for f in FORMATS if f in chosen)


def export_model(*, weights: str | os.PathLike, out: str | os.PathLike,
                 formats: str | Sequence[str] = "onnx", int8: bool = False,
                 representative: str | os.PathLike | None = None, full_graph: bool = True) -> ExportResult:
    """Export a checkpoint (ours or the authors') into the bundle folder ``out``.

    ``int8`` quantizes the TFLite decoder (only with the ``tflite`` format), calibrated on the
    ``representative`` readouts (see :func:`load_representative`; required with ``int8``).
    ``full_graph=False`` leaves ``pixelrnn.onnx`` out of an ONNX export (recorded under ``skipped``):
    sensor.onnx then host.onnx compute the same, and the full graph repeats the decoder's weights,
    which for a large decoder is most of a bundle that must stay small. ``out`` is created
    (its parent must exist); an existing ``out`` must be empty or hold a previous bundle, whose
    files are replaced. Bad arguments, an unusable checkpoint or an unwritable folder raise a
    one-line :class:`InputError`.
    """
    start = time.perf_counter()
    chosen = parse_formats(formats)
    if not isinstance(int8, bool):
        raise InputError(f"int8 must be True or False, got {int8!r}")
    if int8 and "tflite" not in chosen:
        raise InputError(f"int8 applies only to the tflite format, not to {', '.join(chosen)}: "
                         "add tflite to the formats or drop int8")
    if int8 and representative is None:
        raise InputError("int8 needs representative readouts: pass --representative FILE.npz (readouts of "
                         "this model's sensor program: real ones, e.g. pixelrnn_ref/scamp5_readouts_"
                         "cambridge810.npz, or pixelrnn simulate --readout-only output; or clips)")
    if representative is not None and not int8:
        raise InputError("--representative is used only with --int8")
    if not isinstance(full_graph, bool):
        raise InputError(f"full_graph must be True or False, got {full_graph!r}")
    if not full_graph and "onnx" not in chosen:
        raise InputError(f"leaving out the full graph (pixelrnn.onnx) applies only to the onnx format, not to "
                         f"{', '.join(chosen)}: add onnx to the formats or keep the full graph")
    for name, value in (("weights", weights), ("out", out)):
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise InputError(f"{name} must be a file or folder path, got {value!r}")
    out = Path(out)
    previous = _check_output(out)
    from pixelrnn.checkpoint import load_model

    model = load_model(weights)
    chosen, skipped = layout_plan(model.config.layout, chosen, asked_all=_asked_all(formats),
                                  decoder=model.config.decoder, hidden=model.config.hidden_channels)
    calib = load_representative(representative, model=model, weights=weights) if int8 else None
    staging = _make_staging(out)
    try:
        try:
            _write_formats(model, staging, chosen, calib, full_graph=full_graph)
            if not full_graph:
                skipped = {**skipped, FULL_GRAPH: "left out on request (no full graph): sensor.onnx then "
                                                  "host.onnx compute the same"}
            files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
            sensor = model.sensor_weights()
            manifest = build_manifest(directory=staging, files=files, classes=model.config.class_names,
                                      task=model.config.task, sensor=sensor, formats=list(chosen),
                                      source=Path(weights).name, skipped=skipped)
            write_manifest(staging, manifest)
            _publish(staging, out, files, previous)
        except OSError as exc:
            raise InputError(f"cannot write the export to {out} ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = {name: record["bytes"] for name, record in manifest["files"].items()}
    sizes[MANIFEST] = (out / MANIFEST).stat().st_size
    return ExportResult(out=out, files=sizes, seconds=time.perf_counter() - start, formats=chosen, skipped=skipped)


# -- steps ----------------------------------------------------------------------------------------
def _check_output(out: Path) -> set[str]:
    """Refuse unusable outputs before any work; return the files of a previous bundle in ``out``."""
    parent = out.absolute().parent
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if not parent.exists():
        raise InputError(f"cannot create {out}: folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"cannot create {out}: {parent} is a file, not a folder")
    if not out.is_dir():
        return set()
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    if not present:
        return set()
    try:
        listed = set(verify_bundle(out)["files"]) if (out / MANIFEST).is_file() else None
    except BundleError:
        listed = None
    if listed is None or present - listed - {MANIFEST}:
        raise InputError(f"output folder {out} holds files that are not a previous export bundle; "
                         "choose an empty or new folder")
    return listed


def _make_staging(out: Path) -> Path:
    parent = out.absolute().parent
    try:
        return make_temp_dir(parent, f".{out.name}", suffix=".export")   # and an orphaned one goes
    except OSError as exc:
        raise InputError(f"cannot write to {parent} ({exc.strerror or exc})") from None


def load_representative(path: str | os.PathLike, *, model, weights: str | os.PathLike | None = None) -> np.ndarray:
    """Readouts for int8 calibration, shaped as the model's host decoder takes them, from an .npz.

    The authors' 64x64 8-bit readout (any head): (N, 64, 64) uint8 levels, or SCAMP-5 full-array
    (N, 256, 256) frames whose 64x64 output sits at rows and columns 128:192. Another readout layout:
    (N, M, S, S) uint8 levels 0..2**bits - 1 (:func:`core.readouts.check_layout_readouts`). The array
    is ``readouts`` or ``readout`` (what ``pixelrnn simulate --readout-only`` writes); a
    ``program_hash`` of another sensor program is refused. Or clips ``frames`` (N, T, 64, 64), run
    through the simulated sensor (noise off). Anything else: a one-line InputError (``weights``, the
    model's checkpoint, is named in the command it gives to make readouts of the layout)."""
    from firmware_sim.clips import load_clips

    path = Path(path)
    example = "np.savez(path, readouts=...) (or clips with frames=...)"
    with open_npz(path, what="representative", example=example) as data:
        key = next((k for k in READOUT_KEYS if k in data.files), None)
        readouts = data[key] if key is not None else None
        program = str(data["program_hash"]) if "program_hash" in data.files else None
    if readouts is None:
        from firmware_sim.simulate import simulate

        clips = load_clips(path, timesteps=model.config.timesteps)
        return simulate(weights=model.sensor_weights(), frames=clips.frames, stages=()).readout
    from core.readouts import check_layout_readouts, check_readouts

    expected = model.sensor_weights().program_hash()
    if program is not None and program != expected:
        raise InputError(f"{path} holds readouts of sensor program {program}, but the model runs program "
                         f"{expected}: calibrate on readouts of this model's sensor program")
    layout = model.config.layout
    if layout.is_authors:
        return check_readouts(readouts, what=f"{path}: {key}")
    return check_layout_readouts(readouts, layout, what=f"{path}: {key}", weights=weights)


def _write_formats(model, staging: Path, chosen: tuple[str, ...], calib: np.ndarray | None, *,
                   full_graph: bool = True) -> None:
    save_sensor_weights(staging / SENSOR_FILE, model.sensor_weights())
    if "onnx" in chosen:
        from export.onnx_export import FILES, export_onnx

        export_onnx(model=model, out_dir=staging, files=FILES if full_graph else
                    tuple(f for f in FILES if f != FULL_GRAPH))
    if "scamp5" in chosen:
        from export.scamp5 import write_scamp5_text

        write_scamp5_text(model=model, path=staging / SCAMP5_FILE)
    tflite_formats = {f for f in chosen if f in ("tflite", "lce")}
    if tflite_formats:
        _export_tflite(model, staging, tflite_formats, calib)


def _export_tflite(model, staging: Path, formats: set[str], calib: np.ndarray | None) -> None:
    """``export.tflite`` (TensorFlow/Larq), imported only when asked for."""
    names = "/".join(sorted(formats))
    try:
        from export.tflite import export_tflite

        export_tflite(model=model, out_dir=staging, formats=set(formats), int8=calib is not None,
                      representative=calib)
    except ImportError as exc:  # at import, or TensorFlow/Larq imported lazily inside
        raise InputError(f"format {names} needs TensorFlow/Larq: {LARQ_HINT} ({exc})") from None


def _publish(staging: Path, out: Path, files: list[str], previous: set[str]) -> None:
    """Move the finished export into ``out``; the manifest goes last, so a bundle is never half-valid."""
    if not out.exists():
        staging.chmod(0o755)  # mkdtemp makes it private (0700)
        os.rename(staging, out)  # one atomic step
        return
    (out / MANIFEST).unlink(missing_ok=True)
    for stale in previous - set(files):
        (out / stale).unlink(missing_ok=True)
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    os.replace(staging / MANIFEST, out / MANIFEST)

