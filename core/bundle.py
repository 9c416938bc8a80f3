"""The export bundle's ``manifest.json``, read side: the verifier every device runs before loading.

A device loads a bundle only after :func:`verify_bundle`: every listed file exists with its
recorded size and sha256, so a truncated copy or an edited model is refused with a one-line reason
before anything runs. Standard library only: a device verifies without PyTorch. The write side
(``build_manifest``, ``write_manifest``) is ``export.bundle``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from core.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "pixelrnn-edge-bundle/1"

__all__ = ["FORMAT", "MANIFEST", "BundleError", "check_name", "sha256_file", "verify_bundle"]


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
    return manifest
