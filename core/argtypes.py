"""argparse value types shared by every command line (``pixelrnn ...`` and ``edge/run_camera.py``)."""
from __future__ import annotations

import argparse


def bool_arg(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case)."""
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
