"""The export bundle's ``manifest.json``: what is in the folder, how to feed it, and checksums.

A device loads a bundle only after :func:`verify_bundle`: every listed file exists with its
recorded size and sha256, so a truncated copy or an edited model is refused with a one-line reason
before anything runs. Standard library, numpy and firmware_sim only: a device verifies without PyTorch.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from firmware_sim.encoding import IW, ZERO_LEVEL
from firmware_sim.atomic import atomic_open
from firmware_sim.errors import InputError
from firmware_sim.weights import SensorWeights
from pixelrnn import __version__

MANIFEST = "manifest.json"
FORMAT = "pixelrnn-edge-bundle/1"
_VERSIONED = ("numpy", "onnx", "onnxruntime", "torch", "tensorflow", "larq", "larq-compute-engine")


class BundleError(InputError):
    """A bundle that cannot be trusted: missing manifest or file, or a checksum that differs."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages an export depends on (those installed)."""
    versions = {"pixelrnn-edge": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(*, directory: str | os.PathLike, files: list[str], classes: list[str], task: str,
                   sensor: SensorWeights, formats: list[str], source: str = "") -> dict:
    """The manifest of ``files`` (names relative to ``directory``), checksummed as they are now."""
    directory = Path(directory)
    entries = {}
    for name in sorted(files):
        _check_name(name, directory)
        path = directory / name
        entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    t, s = sensor.timesteps, sensor.frontend.size
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_weights": source,
        "task": task,
        "classes": list(classes),
        "formats": list(formats),
        "sensor_program_hash": sensor.program_hash(),
        "preprocessing": {
            "frontend": sensor.frontend.to_dict(),
            "threshold_gray": sensor.frontend.threshold_gray,
            "input_shape": [1, t, s, s], "input_dtype": "uint8", "timesteps": t,
            "iw": IW, "zero_level": ZERO_LEVEL,
            "readout": f"uint8 (1,{s},{s}) = clip(floor({ZERO_LEVEL:g} + {IW:g} * o_T), 0, 255)",
        },
        "files": entries,
        "versions": package_versions(),
    }


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temp file in the same folder, then rename)."""
    path = Path(directory) / MANIFEST
    with atomic_open(path, "w", encoding="utf-8", shared=True) as fh:  # a bundle is meant to be copied
        json.dump(manifest, fh, indent=2, sort_keys=False)
        fh.write("\n")
    return path


def _check_name(name: str, directory: Path) -> None:
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise BundleError(f"{directory / MANIFEST}: file name {name!r} points outside the bundle")


def verify_bundle(directory: str | os.PathLike) -> dict:
    """Check every file listed in ``directory/manifest.json``; return the manifest.

    Raises :class:`BundleError` (one line, naming the file) when the manifest is missing or
    unreadable, a listed file is missing, or its size or sha256 differs from the record.
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
        _check_name(name, directory)
        if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                and isinstance(record.get("bytes"), int)):
            raise BundleError(f"{path}: the record of {name} is malformed")
        file = directory / name
        if not file.is_file():
            raise BundleError(f"bundle file {name} is missing from {directory}")
        if file.stat().st_size != record["bytes"] or sha256_file(file) != record["sha256"]:
            raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST}: "
                              f"tampered or corrupt")
    return manifest


def save_sensor_weights(path: str | os.PathLike, sensor: SensorWeights) -> Path:
    """The sensor program as ``.npz`` (``SensorWeights.to_npz_dict``) for a numpy-only device."""
    path = Path(path)
    with open(path, "wb") as fh:
        np.savez(fh, **sensor.to_npz_dict())
    return path
