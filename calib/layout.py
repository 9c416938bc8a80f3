"""Calibration works on real SCAMP-5 readouts, which have the authors' readout layout only."""
from __future__ import annotations

from core.errors import InputError


def require_authors_readout(layout, command: str, *, hidden: int = 1) -> None:
    """A one-line InputError unless ``layout`` (a :class:`core.readout_layout.ReadoutLayout`) is the
    authors' (o at the last frame, 1 channel, 64x64, 8 bit) and the program has one hidden map
    (``hidden``): the real readouts come from that program."""
    if not layout.is_authors:
        raise InputError(f"{command} calibrates on real SCAMP-5 readouts, which have the authors' layout (o at "
                         f"the last frame, 1 channel, 64x64, 8 bit); this model reads out {layout.describe()}")
    if hidden != 1:
        raise InputError(f"{command} calibrates on real SCAMP-5 readouts, which come from the authors' program "
                         f"with one hidden map; this model has hidden_channels={hidden}")
