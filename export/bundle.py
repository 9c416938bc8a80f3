"""The export bundle's ``manifest.json``, write side: what is in the folder, how to feed it, checksums.

The read side (``verify_bundle``, ``BundleError``) is ``core.bundle``, which a device uses without
PyTorch; it is re-exported here for the exporters.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core import __version__
from core.atomic import atomic_open
from core.bundle import FORMAT, MANIFEST, BundleError, check_name, sha256_file, verify_bundle
from firmware_sim.encoding import IW, ZERO_LEVEL
from firmware_sim.weights import SensorWeights

__all__ = ["FORMAT", "MANIFEST", "BundleError", "build_manifest", "package_versions",
           "save_sensor_weights", "sha256_file", "verify_bundle", "write_manifest"]

_VERSIONED = ("numpy", "onnx", "onnxruntime", "torch", "tensorflow", "larq", "larq-compute-engine")


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
                   sensor: SensorWeights, formats: list[str], source: str = "",
                   skipped: dict[str, str] | None = None) -> dict:
    """The manifest of ``files`` (names relative to ``directory``), checksummed as they are now.

    ``readout_layout`` is the sensor program's readout (``ReadoutLayout.to_dict()``, always written;
    ``core.bundle`` reads a manifest without one as the authors'). ``skipped``: ``{format or file:
    why}`` for what an ``all`` export could not write for this model (recorded as ``skipped``)."""
    directory = Path(directory)
    entries = {}
    for name in sorted(files):
        check_name(name, directory)
        path = directory / name
        entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    t, s = sensor.timesteps, sensor.frontend.size
    layout = sensor.layout
    if layout.is_authors:
        readout = f"uint8 (1,{s},{s}) = clip(floor({ZERO_LEVEL:g} + {IW:g} * o_T), 0, 255)"
    else:
        quant = (f"clip(floor({ZERO_LEVEL:g} + {IW:g} * o), 0, 255)" if layout.bits == 8 else
                 f"clip(floor(o / {layout.step:g}) + {layout.zero:g}, 0, {layout.max_level})")
        readout = (f"uint8 (1,{','.join(map(str, layout.shape))}) = {quant} of o at frames "
                   f"{','.join(map(str, layout.frames))} x {layout.channels} channel(s)"
                   + (f", mean of {layout.pool}x{layout.pool} blocks" if layout.pool > 1 else "")
                   + " (maps frame-major)")
    manifest = {
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
            "readout": readout,
        },
        "readout_layout": layout.to_dict(),
        "files": entries,
        "versions": package_versions(),
    }
    if skipped:
        manifest["skipped"] = {str(k): str(v) for k, v in skipped.items()}
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temp file in the same folder, then rename)."""
    path = Path(directory) / MANIFEST
    with atomic_open(path, "w", encoding="utf-8", shared=True) as fh:  # a bundle is meant to be copied
        json.dump(manifest, fh, indent=2, sort_keys=False)
        fh.write("\n")
    return path


def save_sensor_weights(path: str | os.PathLike, sensor: SensorWeights) -> Path:
    """The sensor program as ``.npz`` (``SensorWeights.to_npz_dict``) for a numpy-only device."""
    path = Path(path)
    with open(path, "wb") as fh:
        np.savez(fh, **sensor.to_npz_dict())
    return path
