"""Numbers every room agrees on: the sensor's 8-bit readout encoding.

One binary multiply-accumulate (MAC) adds ``IW`` (input white) to an analog register, and the 8-bit
readout of a register holding ``v`` MACs is ``clip(floor(ZERO_LEVEL + IW * v), 0, 255)``
(``firmware_sim.encoding``). The 1-bit payload sends ``readout >= ZERO_LEVEL`` (sign(0) = +1).
"""
from __future__ import annotations

ZERO_LEVEL = 127        # the 8-bit level of o = 0
IW = 10.0               # levels per MAC

__all__ = ["IW", "ZERO_LEVEL"]
