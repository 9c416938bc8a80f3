"""The export bundle's ``manifest.json``, read side: the verifier every device runs before loading.

A device loads a bundle only after :func:`verify_bundle`: every listed file exists with its
recorded size and sha256, so a truncated copy or an edited model is refused with a one-line reason
before anything runs. Standard library and numpy only: a device verifies without PyTorch. The
write side (``build_manifest``, ``write_manifest``) is ``export.bundle``.

``readout_layout`` (:class:`core.readout_layout.ReadoutLayout` as ``to_dict()``): what the sensor
reads out per window. Written by every export; a manifest without it (older bundles) has the
authors' readout (o at the last frame, 1 channel, 64x64, 8 bit). It must agree with the ``layout``
entry of ``sensor_weights.npz`` (absent there: the authors').
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from core.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "pixelrnn-edge-bundle/1"

__all__ = ["FORMAT", "MANIFEST", "SENSOR_FILE", "BundleError", "check_manifest_fields", "check_name",
           "check_readout_layout", "check_sensor_scalars", "check_sensor_shape", "manifest_layout", "sha256_file",
           "verify_bundle"]

SENSOR_FILE = "sensor_weights.npz"

# Bounds of a manifest's fields: far beyond any real model, far below what would exhaust a device
MIN_CLASSES, MAX_CLASSES = 2, 1000
MIN_TIMESTEPS, MAX_TIMESTEPS = 1, 1024
MIN_SIZE, MAX_SIZE = 8, 1024
MAX_NAME = 200                       # characters in a task or class name


class BundleError(InputError):
    """A bundle that cannot be trusted: missing manifest or file, or a checksum that differs."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_name(name: str, directory: Path) -> None:
    """A manifest's file name must stay inside the bundle folder."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise BundleError(f"{directory / MANIFEST}: file name {name!r} points outside the bundle")

def _int_in(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _name_ok(value) -> bool:
    return isinstance(value, str) and bool(value.strip()) and len(value) <= MAX_NAME and value.isprintable()


def check_sensor_shape(*, timesteps, size, where: str) -> None:
    """Timesteps 1..1024 and sensor size 8..1024 (a bundle's sensor program or its manifest)."""
    if not _int_in(timesteps, MIN_TIMESTEPS, MAX_TIMESTEPS):
        raise BundleError(f"{where}: timesteps must be an integer {MIN_TIMESTEPS}..{MAX_TIMESTEPS}, "
                          f"got {timesteps!r}; re-export the bundle")
    if not _int_in(size, MIN_SIZE, MAX_SIZE):
        raise BundleError(f"{where}: sensor size must be an integer {MIN_SIZE}..{MAX_SIZE}, got {size!r}; "
                          f"re-export the bundle")


def check_sensor_scalars(scalars, *, where: str) -> None:
    """The ``scalars`` of a ``sensor_weights.npz`` (thresh1, rnn_threshold, mean, std, theta0, size,
    timesteps): 7 finite numbers, timesteps and size in bounds; a one-line BundleError otherwise."""
    import numpy as np  # only here: the manifest checks above need no numpy

    scalars = np.asarray(scalars)
    if scalars.shape != (7,) or scalars.dtype.kind not in "fiu":
        raise BundleError(f"{where}: scalars must be 7 numbers, got {scalars.dtype} {scalars.shape}; "
                          "re-export the bundle")
    if not np.isfinite(scalars).all():
        raise BundleError(f"{where}: thresholds or front end hold NaN or infinite values: the sensor "
                          "program is damaged; re-export the bundle")
    as_int = [int(v) if float(v).is_integer() else float(v) for v in scalars[5:7]]
    check_sensor_shape(timesteps=as_int[1], size=as_int[0], where=where)


def check_manifest_fields(manifest: dict, *, where: str) -> None:
    """Type and bounds of the fields a device acts on: task a non-empty string, classes a list of
    2..1000 non-empty strings, and (when present) the preprocessing's timesteps and sensor size."""
    task = manifest.get("task")
    if not _name_ok(task):
        raise BundleError(f"{where}: task must be a non-empty name of at most {MAX_NAME} printable "
                          f"characters, got {str(task)[:40]!r}; re-export the bundle")
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and MIN_CLASSES <= len(classes) <= MAX_CLASSES):
        got = f"{len(classes)} classes" if isinstance(classes, list) else type(classes).__name__
        raise BundleError(f"{where}: classes must be a list of {MIN_CLASSES}..{MAX_CLASSES} class names, "
                          f"got {got}; re-export the bundle")
    bad = [c for c in classes if not _name_ok(c)]
    if bad:
        raise BundleError(f"{where}: class names must be non-empty strings of at most {MAX_NAME} printable "
                          f"characters, got {str(bad[0])[:40]!r}; re-export the bundle")
    pre = manifest.get("preprocessing")
    if pre is not None:
        if not isinstance(pre, dict):
            raise BundleError(f"{where}: preprocessing must be an object; re-export the bundle")
        frontend = pre.get("frontend", {})
        size = frontend.get("size", MIN_SIZE) if isinstance(frontend, dict) else None
        check_sensor_shape(timesteps=pre.get("timesteps", MIN_TIMESTEPS), size=size, where=where)


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]


def manifest_layout(manifest: dict, *, where: str):
    """The manifest's ``readout_layout`` as a ReadoutLayout, or None when absent (the authors');
    a malformed one is a one-line BundleError."""
    from core.readout_layout import ReadoutLayout  # numpy: only when a bundle is checked

    data = manifest.get("readout_layout")
    if data is None:
        return None
    try:
        return ReadoutLayout.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{where}: readout_layout is not a valid readout layout ({_first_line(exc)}); "
                          "re-export the bundle") from None


def _npz_layout(file: Path):
    """The ``layout`` entry of a sensor-weights ``.npz`` as a ReadoutLayout, or None when it has none."""
    import numpy as np

    from core.npz import open_npz
    from core.readout_layout import ReadoutLayout

    try:
        with open_npz(file, what="sensor weights", example="pixelrnn export") as data:
            if "layout" not in data.files:
                return None
            raw = np.asarray(data["layout"])
        return ReadoutLayout.from_array(raw)
    except (InputError, ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{file} holds no usable readout layout ({_first_line(exc)}); re-export the bundle") from None


def check_readout_layout(manifest: dict, directory: Path, *, where: str) -> None:
    """``readout_layout`` (absent: the authors') is a valid layout for the manifest's timesteps and
    agrees with the ``layout`` of ``sensor_weights.npz`` (absent: the authors'); a one-line
    BundleError otherwise."""
    layout = manifest_layout(manifest, where=where)
    pre = manifest.get("preprocessing") if isinstance(manifest.get("preprocessing"), dict) else {}
    timesteps = pre.get("timesteps")
    if layout is not None and timesteps is not None and layout.timesteps != timesteps:
        raise BundleError(f"{where}: readout_layout is for {layout.timesteps} frames, the preprocessing says "
                          f"{timesteps}; re-export the bundle")
    if SENSOR_FILE not in manifest.get("files", {}):
        return
    stored = _npz_layout(directory / SENSOR_FILE)
    authors = lambda lay: lay is None or lay.is_authors  # noqa: E731
    if (authors(layout) and authors(stored)) or (layout is not None and layout == stored):
        return
    said = "the authors' readout" if authors(layout) else layout.describe()
    holds = "the authors' readout" if authors(stored) else stored.describe()
    raise BundleError(f"{where}: readout_layout says {said}, {SENSOR_FILE} reads out {holds}: the bundle is "
                      "inconsistent; re-export it")


def verify_bundle(directory: str | os.PathLike) -> dict:
    """Check every file listed in ``directory/manifest.json``; return the manifest.

    Raises :class:`BundleError` (one line, naming the file) when the manifest is missing or
    unreadable, a listed file is missing, its size or sha256 differs from the record, a field
    a device acts on is out of bounds (:func:`check_manifest_fields`), or the readout layout is
    malformed or disagrees with the sensor program's (:func:`check_readout_layout`).
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"bundle folder not found: {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: not an export bundle (run pixelrnn export)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is unreadable ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path} lists no files")
    for name, record in files.items():
        check_name(name, directory)
        if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                and isinstance(record.get("bytes"), int)):
            raise BundleError(f"{path}: the record of {name} is malformed")
        file = directory / name
        if not file.is_file():
            raise BundleError(f"bundle file {name} is missing from {directory}")
        if file.stat().st_size != record["bytes"] or sha256_file(file) != record["sha256"]:
            raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST}: "
                              f"tampered or corrupt")
    check_manifest_fields(manifest, where=str(path))
    check_readout_layout(manifest, directory, where=str(path))
    return manifest
