"""A SCAMP-5-like pixel-processor array (PPA), simulated one array instruction at a time.

The array is an H x W grid of processing elements (PEs) that all execute the same instruction at
once (SIMD). Each PE holds

* named ANALOG registers: float64 values in units of one binary MAC (the sensor's 8-bit readout of
  a register holding ``v`` is ``127 + IW * v``, ``IW = 10``; see :mod:`firmware_sim.encoding`);
* named DIGITAL registers: one bit each (stored as numpy bools);
* a FLAG bit for conditional execution: ``where(d)`` sets FLAG from a digital register, ``all()``
  sets it everywhere. In this model FLAG gates every write to an ANALOG register (PEs whose FLAG
  is 0 keep their old value); digital instructions always execute everywhere.

Each public instruction method performs one array-wide operation and is counted under its kind
(``counts``, a dict) and in ``total``. Simulator conveniences that are not instructions are not
counted: ``peek``/``peek_bits`` (a debugger's view of a register) and ``inject`` (a physical
perturbation of an analog register: the noise model, :mod:`firmware_sim.noise`).

Batch
    Registers may be (B, H, W): B independent arrays (e.g. B clips) driven by one instruction
    stream. Counts are per array instruction, not per batch element.

Shifts
    ``shift(dst, src, direction)`` moves the contents of ``src`` one PE in ``direction`` and writes
    them to ``dst``: after a shift ``north`` a PE holds what its southern neighbour held
    (``new[r, c] = old[r + 1, c]``). The row or column that enters at the array edge is filled
    with zeros (0.0 or bit 0). For analog registers this *is* the zero padding of a convolution;
    for digital registers bit 0 means -1, so the program carries a validity mask along (see
    :mod:`firmware_sim.program`).

Saturation
    Every analog write saturates to +-``SATURATION`` = 25.6 MAC units (+-256 on the 8-bit DN scale
    around the zero level 127; docs/DESIGN.md section 5: "25 taps reach 250, near the register's range"). This
    never changes a binary decision of the PixelRNN program (without noise):

    - every quantity accumulated before a comparison is a sum of at most 25 unit taps (one 5x5
      binary convolution), so every partial sum satisfies |s| <= 25 < 25.6 and is never clipped;
      sums of two convolutions (the gate's fi + fh, the output's oi + oh) are never formed in a
      register before a decision: each half lives in its own register, or (a pooled or b < 8-bit
      readout) the halves are halved first, v = oi/2 + oh/2 with |v| <= 25, and so are the block
      means of v that pooling forms;
    - comparisons are register versus register. The gate compares fi against the comparand
      ``rnn_threshold - fh``; if that comparand saturates at +25.6 (or -25.6), an integer
      fi in [-25, 25] is below (or above) it exactly as it is below (above) the unsaturated
      value. Likewise the pooled conv value (an integer in [0, 25]) against ``thresh1``.
      (The program builds the comparand by monotone additions from -fh, so an intermediate can
      only saturate if the final value does; see :mod:`firmware_sim.program`.)

    The 8-bit readout clips to [0, 255], i.e. to -12.7 <= o <= 12.8, a tighter range than the
    register's, so saturating ``o = oi + oh`` (|o| <= 50) at +-25.6 never changes its readout.
    With noise on, a pre-activation within a few sigma of +-25.6 can be clipped: that is the
    physical register range, and it is kept.

Cost model
    One instruction is one array-wide cycle of the 10 MHz array clock, and every PE spends
    1.9 pJ per instruction, whether or not its FLAG is set. So for ``n`` instructions on an
    H x W array: ``time = n / 10 MHz`` and ``energy = n * H * W * 1.9 pJ`` (per array, i.e. per
    batch element). The readout instruction is counted as one cycle like the others; the real
    ADC readout of a whole image takes longer and is not modelled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_sim.encoding import encode_analog

SATURATION = 25.6
DIRECTIONS = ("north", "south", "east", "west")


@dataclass(frozen=True)
class CostModel:
    """Time and energy of array instructions (see the module docstring)."""

    clock_hz: float = 10e6
    energy_per_pe_op_j: float = 1.9e-12

    def __post_init__(self) -> None:
        for name in ("clock_hz", "energy_per_pe_op_j"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"CostModel {name} must be a positive finite number, got {value!r}")

    def estimate(self, instructions: int, *, height: int, width: int) -> dict:
        seconds = instructions / self.clock_hz
        joules = instructions * height * width * self.energy_per_pe_op_j
        return {"instructions": int(instructions), "time_s": seconds, "time_us": seconds * 1e6,
                "energy_j": joules, "energy_uj": joules * 1e6}


def _shifted(value: np.ndarray, direction: str) -> np.ndarray:
    """Contents of ``value`` (..., H, W) moved one element in ``direction``, zero fill at the edge."""
    out = np.zeros_like(value)
    if direction == "north":
        out[..., :-1, :] = value[..., 1:, :]
    elif direction == "south":
        out[..., 1:, :] = value[..., :-1, :]
    elif direction == "west":
        out[..., :, :-1] = value[..., :, 1:]
    elif direction == "east":
        out[..., :, 1:] = value[..., :, :-1]
    else:
        raise ValueError(f"shift direction must be one of {DIRECTIONS}, got {direction!r}")
    return out


class PPA:
    """An H x W (optionally batched) pixel-processor array with named analog and digital registers.

    ``analog`` and ``digital`` name the registers each PE has (names must be distinct); analog
    registers start at 0.0, digital at 0, FLAG at 1. ``batch=None`` gives (H, W) registers,
    ``batch=B`` gives (B, H, W).
    """

    def __init__(self, *, height: int, width: int, analog: tuple[str, ...], digital: tuple[str, ...],
                 batch: int | None = None, cost_model: CostModel | None = None) -> None:
        for name, value in (("height", height), ("width", width)):
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"PPA {name} must be a positive integer, got {value!r}")
        if batch is not None and not (isinstance(batch, (int, np.integer)) and batch >= 1):
            raise ValueError(f"PPA batch must be None or a positive integer, got {batch!r}")
        analog, digital = tuple(analog), tuple(digital)
        names = analog + digital
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError("PPA register names must be non-empty strings")
        if len(set(names)) != len(names):
            raise ValueError(f"PPA register names must be distinct, got {names}")
        self.height, self.width, self.batch = int(height), int(width), batch
        self.shape = (self.height, self.width) if batch is None else (int(batch), self.height, self.width)
        self.cost_model = cost_model or CostModel()
        self._analog = {n: np.zeros(self.shape, np.float64) for n in analog}
        self._digital = {n: np.zeros(self.shape, bool) for n in digital}
        self._flag = np.ones(self.shape, bool)
        self._flag_all = True   # FLAG known to be set everywhere (skip the masked write)
        self.counts: dict[str, int] = {}
        self.total = 0

    # ----- bookkeeping ---------------------------------------------------------------------
    @property
    def analog_registers(self) -> tuple[str, ...]:
        return tuple(self._analog)

    @property
    def digital_registers(self) -> tuple[str, ...]:
        return tuple(self._digital)

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.total += 1

    def reset_counts(self) -> None:
        self.counts = {}
        self.total = 0

    def cost(self) -> dict:
        """Instructions so far (total and by kind) with the estimated time and energy per array."""
        out = self.cost_model.estimate(self.total, height=self.height, width=self.width)
        out["per_kind"] = dict(sorted(self.counts.items()))
        return out

    def _a(self, name: str) -> np.ndarray:
        try:
            return self._analog[name]
        except KeyError:
            kind = "a digital" if name in self._digital else "not a"
            raise ValueError(f"{name!r} is {kind} register of this array; analog registers: "
                             f"{self.analog_registers}") from None

    def _d(self, name: str) -> np.ndarray:
        try:
            return self._digital[name]
        except KeyError:
            kind = "an analog" if name in self._analog else "not a"
            raise ValueError(f"{name!r} is {kind} register of this array; digital registers: "
                             f"{self.digital_registers}") from None

    def _write_analog(self, name: str, value: np.ndarray) -> None:
        old = self._a(name)
        value = np.clip(value, -SATURATION, SATURATION)
        self._analog[name] = value if self._flag_all else np.where(self._flag, value, old)

    def _check_frame(self, values, what: str) -> np.ndarray:
        values = np.asarray(values)
        if values.shape != self.shape:
            raise ValueError(f"{what} must have the array's shape {self.shape}, got {values.shape}")
        return values

    # ----- simulator access (not instructions) ---------------------------------------------
    def peek(self, name: str) -> np.ndarray:
        """A copy of an analog register (a debugger's view; not an instruction)."""
        return self._a(name).copy()

    def peek_bits(self, name: str) -> np.ndarray:
        """A copy of a digital register as bools (a debugger's view; not an instruction)."""
        return self._d(name).copy()

    def inject(self, name: str, delta) -> None:
        """Add a physical perturbation (noise, offset) to an analog register, saturating.

        Not an instruction: this is how the simulator models analog error. FLAG is ignored.
        """
        delta = np.broadcast_to(np.asarray(delta, dtype=np.float64), self.shape)
        if not np.all(np.isfinite(delta)):
            raise ValueError("inject: the perturbation must be finite")
        self._analog[name] = np.clip(self._a(name) + delta, -SATURATION, SATURATION)

    # ----- input / output ------------------------------------------------------------------
    def sense(self, dst: str, bits) -> None:
        """Load a binarized frame (bools, or +-1 with +1 -> bit 1) into a digital register.

        Models the pixel reading its photodiode and comparing it with the front end's threshold.
        """
        bits = self._check_frame(bits, "sense: the frame")
        self._d(dst)
        self._digital[dst] = bits.astype(bool) if bits.dtype == bool else bits > 0
        self._count("sense")

    def readout(self, name: str, *, every: int = 1) -> np.ndarray:
        """Read an analog register through the 8-bit ADC: ``encode_analog`` (uint8).

        ``every``: read only every ``every``-th row and column, starting at (0, 0) (a pooled map
        whose block values sit at the blocks' first elements). SCAMP-5 reads out such a
        subsampled grid, as it reads a window of the array.
        """
        value = encode_analog(self._a(name)[..., ::self._every(every), ::every])
        self._count("readout")
        return value

    def readout_bits(self, name: str, *, every: int = 1) -> np.ndarray:
        """Read a digital register out of the array (one bit per element; bools): SCAMP-5 outputs
        binary images of its digital registers. ``every`` as in :meth:`readout`."""
        value = self._d(name)[..., ::self._every(every), ::every].copy()
        self._count("readout_bits")
        return value

    @staticmethod
    def _every(every) -> int:
        if not (isinstance(every, (int, np.integer)) and every >= 1):
            raise ValueError(f"readout: every must be a positive integer, got {every!r}")
        return int(every)

    # ----- analog instructions -------------------------------------------------------------
    def load(self, dst: str, value: float) -> None:
        """dst = constant (saturating)."""
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"load: the constant must be finite, got {value}")
        self._write_analog(dst, np.full(self.shape, value))
        self._count("load")

    def copy(self, dst: str, src: str) -> None:
        self._write_analog(dst, self._a(src).copy())
        self._count("copy")

    def add(self, dst: str, a: str, b: str) -> None:
        self._write_analog(dst, self._a(a) + self._a(b))
        self._count("add")

    def sub(self, dst: str, a: str, b: str) -> None:
        """dst = a - b."""
        self._write_analog(dst, self._a(a) - self._a(b))
        self._count("sub")

    def neg(self, dst: str, src: str) -> None:
        self._write_analog(dst, -self._a(src))
        self._count("neg")

    def half(self, dst: str, src: str) -> None:
        """dst = src / 2: SCAMP-5's analog ``div`` (halving by sharing charge between two
        capacitors); modelled exact, like the other analog instructions."""
        self._write_analog(dst, self._a(src) * 0.5)
        self._count("half")

    def add_or_sub(self, dst: str, src: str, cond: str, *, sign: int = 1) -> None:
        """The binary MAC: dst += src where XNOR(cond bit, sign > 0), else dst -= src.

        ``sign`` (+1 or -1) is an immediate of the instruction: the weight of one convolution
        tap, compiled into the program. Bit 1 encodes +1, so the term added is
        ``sign * (+1 if bit else -1) * src``.
        """
        if sign not in (1, -1):
            raise ValueError(f"add_or_sub: sign must be +1 or -1, got {sign!r}")
        bit = self._d(cond)
        src_value = self._a(src)
        add = bit if sign > 0 else ~bit
        self._write_analog(dst, self._a(dst) + np.where(add, src_value, -src_value))
        self._count("add_or_sub")

    def max(self, dst: str, a: str, b: str) -> None:
        """dst = max(a, b) (ReLU against a zero register; max-pooling with shifts)."""
        self._write_analog(dst, np.maximum(self._a(a), self._a(b)))
        self._count("max")

    def shift(self, dst: str, src: str, direction: str) -> None:
        """dst = src moved one PE in ``direction`` with zero fill; analog or digital (same kind)."""
        if src in self._analog:
            self._write_analog(dst, _shifted(self._analog[src], direction))
            self._count("shift_analog")
        else:
            value = _shifted(self._d(src), direction)
            self._d(dst)
            self._digital[dst] = value
            self._count("shift_digital")

    def compare(self, dst: str, a: str, b: str) -> None:
        """Digital dst = (a >= b): bit 1 means +1, so sign(0) = +1."""
        value = self._a(a) >= self._a(b)
        self._d(dst)
        self._digital[dst] = value
        self._count("compare")

    # ----- flag ----------------------------------------------------------------------------
    def where(self, cond: str) -> None:
        """FLAG = cond: later analog writes happen only where the bit is 1."""
        self._flag = self._d(cond).copy()
        self._flag_all = False
        self._count("where")

    def all(self) -> None:
        """FLAG = 1 everywhere."""
        self._flag = np.ones(self.shape, bool)
        self._flag_all = True
        self._count("all")

    # ----- digital instructions ------------------------------------------------------------
    def _write_digital(self, dst: str, value: np.ndarray, kind: str) -> None:
        self._d(dst)
        self._digital[dst] = value
        self._count(kind)

    def d_copy(self, dst: str, src: str) -> None:
        self._write_digital(dst, self._d(src).copy(), "d_copy")

    def d_set(self, dst: str) -> None:
        self._write_digital(dst, np.ones(self.shape, bool), "d_set")

    def d_clear(self, dst: str) -> None:
        self._write_digital(dst, np.zeros(self.shape, bool), "d_clear")

    def d_not(self, dst: str, src: str) -> None:
        self._write_digital(dst, ~self._d(src), "d_not")

    def d_and(self, dst: str, a: str, b: str) -> None:
        self._write_digital(dst, self._d(a) & self._d(b), "d_and")

    def d_or(self, dst: str, a: str, b: str) -> None:
        self._write_digital(dst, self._d(a) | self._d(b), "d_or")

    def d_xor(self, dst: str, a: str, b: str) -> None:
        self._write_digital(dst, self._d(a) ^ self._d(b), "d_xor")

    def load_pattern(self, dst: str, *, row: tuple[int, int] = (0, 0), col: tuple[int, int] = (0, 0)) -> None:
        """Digital dst = 1 where ``r & row_mask == row_value`` and ``c & col_mask == col_value``.

        ``row`` and ``col`` are (value, mask) pairs of PE address bits (mask 0: any). Models the
        array's row/column address decoders, which SCAMP-5 uses to load such patterns in one step.
        """
        (rv, rm), (cv, cm) = row, col
        for what, v in (("row value", rv), ("row mask", rm), ("col value", cv), ("col mask", cm)):
            if not (isinstance(v, (int, np.integer)) and v >= 0):
                raise ValueError(f"load_pattern: {what} must be a non-negative integer, got {v!r}")
        rows = (np.arange(self.height) & rm) == (rv & rm)
        cols = (np.arange(self.width) & cm) == (cv & cm)
        pattern = np.broadcast_to(rows[:, None] & cols[None, :], self.shape).copy()
        self._write_digital(dst, pattern, "load_pattern")
