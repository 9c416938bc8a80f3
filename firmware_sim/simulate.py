"""Run the sensor program on clips through either path (``fast`` or ``instruction``).

``fast`` runs :mod:`firmware_sim.packed` (table look-ups on bit patterns; identical results to
:mod:`firmware_sim.fast`, which it calls itself for the analog stage dumps ``1_conv1`` and
``2_conv1post``)."""
from __future__ import annotations

import numpy as np

from core.errors import InputError
from firmware_sim import fast, packed
from firmware_sim.encoding import decode_binary
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import SensorWeights

PATHS = ("fast", "instruction")


def chunk_multiple(path: str) -> int:
    """Clips per chunk must be a multiple of this for chunked runs to draw the noise of one run."""
    from firmware_sim.program import BATCH
    return BATCH if path == "instruction" else 1


def binary_input(frames: np.ndarray, weights: SensorWeights, *, binarized_input: bool) -> np.ndarray:
    """uint8 frames -> +-1 int8 input: the front end's binarization, or 0/255 maps taken as they are."""
    if binarized_input:
        bad = ~np.isin(frames, (0, 255))
        if bad.any():
            raise InputError(f"binarized input: frames must hold only 0 and 255, found "
                             f"{int(bad.sum())} other values (e.g. {int(frames[bad][0])})")
        return decode_binary(frames)
    if frames.dtype == np.uint8:
        # The binarization is a function of the gray level alone: one table of 256 entries,
        # computed with the front end's own float32 arithmetic, so it is exactly binarize(frames).
        # It is monotone (std > 0), so it is one comparison with the first level that maps to +1.
        table = weights.frontend.binarize(np.arange(256, dtype=np.uint8))
        ones = np.flatnonzero(table > 0)
        first = int(ones[0]) if ones.size else 256
        if np.array_equal(table, np.where(np.arange(256) >= first, 1, -1)):
            binary = (frames >= first).view(np.int8)
            binary = binary + binary                    # 0/2 -> -1/+1 (int8, SIMD ops)
            binary -= np.int8(1)
            return binary
        return table[frames]
    return weights.frontend.binarize(frames)


def simulate(*, weights: SensorWeights, frames: np.ndarray, binarized_input: bool = False,
             noise: NoiseModel | None = None, seed: int | None = None, path: str = "fast",
             stages: tuple[str, ...] = fast.STAGES, rng: np.random.Generator | None = None) -> fast.SensorResult:
    """Simulate the sensor on (N, T, 64, 64) uint8 frames; see :func:`fast.run_clips` for outputs.

    The noise is drawn from ``rng`` if given, else from a new Generator seeded with ``seed``. The
    fast path draws clip by clip and the instruction path batch by batch (:data:`program.BATCH`
    clips), so consecutive chunks run with one ``rng`` get exactly the results of one call on all
    of them, when each chunk but the last is a multiple of :func:`chunk_multiple` clips (what
    streaming ``simulate``/``evaluate`` rely on)."""
    if path not in PATHS:
        raise InputError(f"unknown simulator path {path!r}; choose from {PATHS}")
    if frames.shape[1] != weights.timesteps:
        raise InputError(f"clips have {frames.shape[1]} frames, the model needs {weights.timesteps}")
    if rng is not None and seed is not None:
        raise ValueError("pass a seed or a Generator (rng), not both")
    noise = noise or NoiseModel.off()
    rng = rng if rng is not None else np.random.default_rng(seed)
    binary = binary_input(frames, weights, binarized_input=binarized_input)
    if path == "fast":
        return packed.run_clips(binary, weights, noise=noise, rng=rng, stages=stages)
    from firmware_sim.program import run_clips_instruction
    return run_clips_instruction(binary, weights, noise=noise, rng=rng, stages=stages)
