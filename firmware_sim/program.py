"""The PixelRNN sensor program, written only in pixel-processor-array instructions (:mod:`ppa`).

:func:`run_clips_instruction` has the signature and results of :func:`firmware_sim.fast.run_clips`
(the oracle); :func:`frame_cost` and :func:`clip_cost` count the instructions it issues and estimate
time and energy. The instruction stream has no data-dependent branches (SIMD), so the count for a
dummy frame is the count for every frame.

Registers (names as on SCAMP-5: six analog A-F, digital R0-R12; roles never live at the same time
share a register; 6 analog and 10 digital are used, for every readout layout, with one hidden map;
each further hidden map adds one digital register, see "Hidden maps" below)::

    analog   A unit (1.0, one MAC)   B conv acc | fi      C pool temp, constants | fh, comparand
             D pooled (interleaved) | oi | o, o/2      E oh | readout scratch, level thresholds
             F threshold chunk
    digital  R0 all ones   R1 hidden h   R2 x_t (mosaic)   R3 input frame
             R4-R9 scratch (walks; in a readout: a comparison and the level's bit planes)
             R10, R11, ... hidden h^1, h^2, ... (H > 1 hidden maps)

A SCAMP-5 element has about 7 analog and 14 digital registers (shared/docs/DESIGN.md);
:func:`check_registers` refuses a program that needs more, naming the bank ("needs 8 analog
registers, a SCAMP-5 element has 7"). Channels are read out one after another in the same
registers, so every :class:`~core.readout_layout.ReadoutLayout` (K <= 4) fits.

Hidden maps (H > 1, ``SensorWeights.hidden``): chain j's h^j lives in its own digital register
(R1 for chain 0, then R10, R11, ...: :func:`hidden_registers`); everything else is shared, one
chain after another: its walk (x_t, h^j and the validity plane, in the scratch R4-R9), fi and fh
in B and C, its comparand chunks in F, its gate in R4. So H costs one digital register per chain
and no analog one: 9 + H digital registers, which is at most 14 for H <= 5 whatever the layout
(:func:`max_hidden`; K = 1 and K = 4 alike). The order keeps every readout on h_{t-1}:

- channels k = 1 .. K-1 first (read-out frames only): clear oi/oh, one walk per chain adding
  W_oh^{k,j} * h^j into oh (and W_oi^k * x_t into oi in chain 0's walk), read channel k out;
- then chain by chain the walk of (e) for chain j (fi, fh, and channel 0's oi in chain 0's walk,
  its oh += W_oh^{0,j} * h^j), and, for j < H - 1, chain j's gate and h^j's update at once (no
  later readout needs h^j_{t-1}); after the last chain's walk channel 0 is read out, then the last
  gate and update, as for H = 1.

Each chain's oh is halved s times (2**s >= H + 1) and added into OI, which so holds o / 2**s
(|o| <= 25 (H + 1): every partial sum stays within 25, exact, never saturating); the readout of
(f) then works at scale 2**-s instead of 1/2 (output stage, pooling, thresholds t_m / 2**s; the
8-bit ADC reads o doubled back s times, saturating only beyond its range).

H = 1 is the program above instruction for instruction. The stage probes ``4_hidden`` and
``7_forget_gate_x`` gain a chain axis for H > 1, as in :mod:`firmware_sim.fast`; with noise the
instruction path's draws are its own (per chain, in the order above).

One frame (all B clips of a batch at once):

(a) conv1, for each of the 16 kernels: clear an accumulator, then 25 binary MACs
    (``add_or_sub``: the tap's weight sign XNOR the input bit decides add or subtract). The input
    bit-plane is moved around the 5x5 neighbourhood by one-element shifts (see ``_walk``). A shift
    fills bit 0 (= -1) at the array edge, but zero padding needs "no contribution", so a validity
    plane (all ones, shifted along the same path) is loaded into FLAG before each tap: the MAC is
    skipped where the tap falls outside the image. Shifts lose the data pushed over the edge, so the
    path is monotone from the unshifted plane in each direction (dy = 0, 1, 2 then -1, -2; for each
    row dx = 0, 1, 2 then -1, -2): 24 shifts per plane per kernel, and every tap sees exactly
    ``x[r + dy, c + dx]`` or zero fill where that lies outside.
(b) ReLU and 4x4 max-pool with shifts and ``max``: a 1-D max over 4 takes a shift by 1, a max, a
    shift by 2 and a max; choosing each shift's direction puts the block maximum of block (i, j)
    at any of the 16 PEs of the block, ``(4i + a, 4j + b)``. Kernel k uses
    ``(a, b) = (k % 4, k // 4)``, its tile position in the mosaic, so the 16 pooled maps
    interleave into one analog plane (a lattice mask from ``load_pattern``, ``where``, ``copy``).
    ReLU is one ``max`` with a zero register on the interleaved plane.
(c) threshold: one ``compare`` of the interleaved plane (+ N(0, conv_sigma^2) injected noise)
    against a register holding ``thresh1``.
(d) mosaic gather: the interleaved bit-plane is permuted into the ``scamp_shape`` mosaic of
    :mod:`firmware_sim.mosaic` (map k at tile row k % 4, tile column k // 4). Along each axis
    position ``p = 4i + a`` must go to ``q = 16a + i``: a rotation of the 6 address bits by two.
    It is done as 4 bit-swap stages per axis (address bits (2,0), (3,1), (4,2), (5,3)); a stage
    swapping bits u > v moves the PEs whose bits differ by d = 2^u - 2^v one way or the other: two
    shifted copies (2d digital shifts), two masks from ``load_pattern`` and 7 logic instructions.
    That is 2 * (3 + 6 + 12 + 24) = 90 shifts per axis, 252 instructions per frame. Bits are moved,
    not analog values: digital moves are exact on the hardware.
(e) the RNN on the mosaic, with one walk that moves x_t, h_{t-1} and the validity plane together:
    fi = W_fi * x_t and fh = W_fh * h_{t-1} in separate registers (and, in a read-out frame of the
    weights' readout layout, oi = W_oi[0] * x_t and oh = W_oh[0] * h_{t-1}; each further output
    kernel pair k takes one more walk of x_t, h_{t-1} and the validity plane into the same two
    registers, after channel k-1 has been read out, see (f)). The gate compares fi (+ N(0, gate_sigma^2))
    against the comparand ``rnn_threshold - fh``, built as -fh plus constant chunks of at most 25
    of the same sign (monotone, so it saturates only if its final value would). Without gate noise fi + fh is an
    integer and ``fi + fh >= thr`` equals ``fi + fh >= ceil(thr)``, so the loaded constant is
    ``ceil(thr)`` and every register value is an exact integer; with noise it is ``thr`` itself.
    Either way it is clipped to [-51, 51], beyond which the comparand saturates for every fh.
    Then h_t = f XNOR h_{t-1} (keep or flip) with ``d_xor`` and ``d_not``. The gate is computed in
    every frame (the readout frames too, for the ``7_forget_gate_x`` stage), after the readouts.
(f) the readout of one channel, as :mod:`firmware_sim.fast` defines it (output stage, then the
    layout's pooling and quantization):

    - 8 bit, no pooling (the authors'): o = oi + oh (+ gain error, noise and offsets, injected:
      see :mod:`firmware_sim.noise`) read out through the 8-bit ADC. Those act on the register's
      saturated value (|o| <= 25.6), the fast path's on the unbounded sum: with noise off and no
      output perturbation the readouts are identical; with a gain error or offsets they can
      differ only at pixels where |oi + oh| > 25.6.
    - otherwise the register holds v = o / 2 = oi/2 + oh/2 (two ``half`` and an ``add``: |v| <= 25,
      so, with noise off, it never saturates and every value is exact); the output stage is
      injected into v at half scale. Pooling p x p: per axis, log2(p) rounds of ``half``, a shift
      by 1, 2, 4 elements and an ``add`` (the mean of a pair of means, never above 25), which
      leaves each block's mean at the block's first element; the readout reads that grid
      (``every=p``). 8 bit: o = v + v (saturating, which the ADC's tighter range hides) through the
      ADC. b < 8 bit: no ADC; the level ``clip(floor(o / step) + 2**(b-1), 0, 2**b - 1)`` is a count
      of comparisons, v >= t_m / 2 for m = 1 .. 2**b - 1, with t_m the smallest float64 whose
      ``floor(t / step)`` reaches ``m - 2**(b-1)`` (so each comparison is exactly the fast path's
      float64 quantization); the count's binary digits are XORs of the comparisons (bit j of a
      count is the parity of the comparisons m divisible by 2**j), and the b bit planes are read
      out (``readout_bits``). A threshold beyond +-25.6 saturates, where no v (|v| <= 25) reaches.
      With noise on the injected v can approach the register's range; that is physical and kept.

Stage dumps (``stages``) are simulator probes (``peek``), not instructions: ``1_conv1`` reads each
kernel's accumulator, ``2_conv1post`` the interleaved pooled plane; the host arranges them into
the reference mosaic layout.

``SensorResult.output`` is o as the register holds it: for an 8-bit readout the o register read
by the ADC, saturated at +-25.6 where the fast path reports the unbounded sum (|o| <= 50; the
8-bit readout is the same either way, see :mod:`ppa`); for b < 8 bits 2 v, which is exact.
With noise off every readout level and binary state equals the fast path's for every layout.
"""
from __future__ import annotations

import math

import numpy as np

from firmware_sim.encoding import encode_analog
from firmware_sim.fast import STAGES, SensorResult, check_readout, make_result
from firmware_sim.mosaic import to_mosaic
from firmware_sim.noise import NoiseModel
from firmware_sim.ppa import PPA, CostModel
from firmware_sim.weights import KERNEL, N_MAPS, SensorWeights

PAD = KERNEL // 2
POOL = 4
SIZES = (16, 64, 256)   # square arrays whose mosaic gather is the bit rotation below (64: the sensor)

# Analog registers.
UNIT, ACC, TMP, POOLED = "A", "B", "C", "D"
FI, FH, OI, OH, CHUNK = "B", "C", "D", "E", "F"
ANALOG = ("A", "B", "C", "D", "E", "F")
# Digital registers.
ONE, HID, XT, INP = "R0", "R1", "R2", "R3"
S1, S2, S3, S4, S5, S6 = "R4", "R5", "R6", "R7", "R8", "R9"
DIGITAL = tuple(f"R{i}" for i in range(10))


def hidden_registers(hidden: int) -> tuple[str, ...]:
    """The digital registers of h^0 .. h^{H-1}: R1 (as for H = 1), then R10, R11, ... (names past
    R12 only count against the bank: :func:`check_registers` refuses them)."""
    return (HID,) + tuple(f"R{9 + j}" for j in range(1, hidden))

# The 5x5 walk: (offset, shift direction, shift from the unshifted plane?) along one axis.
# An offset d means the plane holds x[r + d] at row r: contents move north (west) for d > 0.
_ROW_WALK = ((0, None, False), (1, "north", True), (2, "north", False), (-1, "south", True),
             (-2, "south", False))
_COL_WALK = ((0, None, False), (1, "west", True), (2, "west", False), (-1, "east", True),
             (-2, "east", False))
CHUNK_MAX = 25.0
COMPARAND_LIMIT = 51.0
# The readout of one channel: v (o or o/2), the scratch (pool shifts, level thresholds), and the
# digital registers of a level's comparisons and bit planes (free once the walks are done).
V, VTMP = OI, OH
CMP, PLANES = S1, (S2, S3, S4, S5)
# What one SCAMP-5 element holds (shared/docs/DESIGN.md: ~7 analog, ~14 digital registers).
SCAMP5_ANALOG = 7
SCAMP5_DIGITAL = 14


def _check_hidden(hidden) -> int:
    if not (isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool) and hidden >= 1):
        raise ValueError(f"hidden must be a positive integer (hidden maps), got {hidden!r}")
    return int(hidden)


def check_registers(analog: int, digital: int, *, hidden: int = 1, layout=None) -> None:
    """Refuse a program that needs more registers than a SCAMP-5 element has, in one line naming
    the bank it lacks (and, for H > 1 hidden maps, how many fit: :func:`max_hidden` of ``layout``)."""
    hidden = _check_hidden(hidden)
    what = "this readout layout's sensor program" if hidden == 1 else f"the sensor program with {hidden} hidden maps"
    for bank, need, have in (("analog", analog, SCAMP5_ANALOG), ("digital", digital, SCAMP5_DIGITAL)):
        if need > have:
            fit = ""
            if hidden > 1 and layout is not None:
                fit = f": use at most {max_hidden(layout)} hidden channels"
            raise ValueError(f"{what} needs {need} {bank} registers, a SCAMP-5 element has {have}{fit}")


def registers_needed(layout, *, hidden: int = 1) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The analog and digital registers the program uses for ``layout`` and ``hidden`` maps
    (checked against SCAMP-5 by :func:`check_registers`)."""
    hidden = _check_hidden(hidden)
    digital = set(DIGITAL) | set(hidden_registers(hidden))
    if layout.bits < 8:
        digital |= {CMP, *PLANES[:layout.bits]}
    analog = set(ANALOG) | {V, VTMP}
    return (tuple(sorted(analog)), tuple(sorted(digital, key=lambda r: int(r[1:]))))


def max_hidden(layout) -> int:
    """The largest number of hidden maps whose program fits a SCAMP-5 element with ``layout``
    (each map adds one digital register; 0 if not even one fits)."""
    best = 0
    while True:
        analog, digital = registers_needed(layout, hidden=best + 1)
        if len(analog) > SCAMP5_ANALOG or len(digital) > SCAMP5_DIGITAL:
            return best
        best += 1


def check_hidden_fits(layout, hidden: int) -> None:
    """Refuse ``hidden`` maps with ``layout`` when their program does not fit a SCAMP-5 element:
    a one-line ValueError naming the register bank it lacks and the most hidden maps that fit."""
    hidden = _check_hidden(hidden)
    analog, digital = registers_needed(layout, hidden=hidden)
    check_registers(len(analog), len(digital), hidden=hidden, layout=layout)


def level_thresholds(layout) -> list[float]:
    """For a b < 8-bit layout: t_m (m = 1 .. 2**b - 1), the smallest float64 t with
    ``floor(t / step) + zero >= m``; since ``t -> floor(t / step)`` is monotone (IEEE division), the
    level ``clip(floor(o / step) + zero, 0, max)`` is exactly the number of m with ``o >= t_m``."""
    step, zero = layout.step, int(layout.zero)
    out = []
    for m in range(1, layout.max_level + 1):
        k = m - zero
        t = k * step
        if math.floor(t / step) >= k:
            while math.floor(math.nextafter(t, -math.inf) / step) >= k:
                t = math.nextafter(t, -math.inf)
        else:
            while math.floor(t / step) < k:
                t = math.nextafter(t, math.inf)
        out.append(t)
    return out


def _walk(ppa: PPA, chains):
    """Visit the 25 taps; yield (dy, dx, planes) with each plane holding ``base[r + dy, c + dx]``.

    ``chains`` is a list of (base, row_scratch, col_scratch) digital registers; the bases are not
    modified. Shifts are monotone away from the unshifted plane, so nothing needed is lost at the
    edge. 24 shifts per chain.
    """
    for dy, vdir, v_from_base in _ROW_WALK:
        rows = []
        for base, vreg, _ in chains:
            if vdir is not None:
                ppa.shift(vreg, base if v_from_base else vreg, vdir)
            rows.append(base if vdir is None else vreg)
        for dx, hdir, h_from_row in _COL_WALK:
            planes = []
            for row, (_, _, hreg) in zip(rows, chains):
                if hdir is not None:
                    ppa.shift(hreg, row if h_from_row else hreg, hdir)
                planes.append(row if hdir is None else hreg)
            yield dy, dx, planes


def _pool_axis(ppa: PPA, reg: str, tmp: str, offset: int, forward: str, backward: str) -> None:
    """1-D max over the 4 elements of a pooling block, left at block offset ``offset`` (0..3)."""
    first = forward if offset % 2 == 0 else backward       # pairs {0,1} or {-1,0}
    second = forward if offset < 2 else backward           # then pairs 2 apart
    ppa.shift(tmp, reg, first)
    ppa.max(reg, reg, tmp)
    ppa.shift(tmp, reg, second)
    ppa.shift(tmp, tmp, second)
    ppa.max(reg, reg, tmp)


def _swap_address_bits(ppa: PPA, reg: str, u: int, v: int, axis: str) -> None:
    """reg[x] <- reg[x with address bits u and v swapped] along ``axis`` ("row" or "col")."""
    d = (1 << u) - (1 << v)
    up, down = ("south", "north") if axis == "row" else ("east", "west")
    for scratch, direction in ((S1, up), (S2, down)):
        ppa.shift(scratch, reg, direction)
        for _ in range(d - 1):
            ppa.shift(scratch, scratch, direction)
    care = (1 << u) | (1 << v)
    for mask, value in ((S3, 1 << u), (S4, 1 << v)):
        ppa.load_pattern(mask, **{axis: (value, care)})
    ppa.d_and(S1, S1, S3)      # bits (u, v) = (1, 0): take the element d lower
    ppa.d_and(S2, S2, S4)      # bits (0, 1): take the element d higher
    ppa.d_or(S3, S3, S4)
    ppa.d_not(S3, S3)          # bits equal: keep
    ppa.d_and(reg, reg, S3)
    ppa.d_or(reg, reg, S1)
    ppa.d_or(reg, reg, S2)


def _comparand_chunks(threshold: float, *, integer: bool) -> list[float]:
    """Constants whose sum is the gate's threshold, each of magnitude <= 25, all of one sign."""
    c = float(math.ceil(threshold)) if integer else float(threshold)
    c = min(max(c, -COMPARAND_LIMIT), COMPARAND_LIMIT)
    chunks = []
    while abs(c) > CHUNK_MAX:
        step = math.copysign(CHUNK_MAX, c)
        chunks.append(step)
        c -= step
    if c != 0.0:
        chunks.append(c)
    return chunks


def _deinterleave(plane: np.ndarray) -> np.ndarray:
    """(..., H, W) interleaved pooled plane -> (..., 16, H/4, W/4) maps (kernel k at (k%4, k//4))."""
    return np.stack([plane[..., k % POOL::POOL, k // POOL::POOL] for k in range(N_MAPS)], axis=-3)


class _Program:
    """The compiled program for one set of weights (constants are immediates or loaded values)."""

    def __init__(self, weights: SensorWeights, noise: NoiseModel, rng, stages) -> None:
        self.w = weights
        self.noise = noise
        self.rng = rng
        self.stages = tuple(stages)
        self.chains = weights.hidden
        self.chain_chunks = [_comparand_chunks(t, integer=not noise.gate_sigma) for t in weights.gate_thresholds]
        self.gate_chunks = self.chain_chunks[0]
        self.hid = hidden_registers(self.chains)
        self.layout = weights.layout
        analog, digital = registers_needed(self.layout, hidden=self.chains)
        check_registers(len(analog), len(digital), hidden=self.chains, layout=self.layout)
        self.analog, self.digital = analog, digital
        # H > 1 carries o at scale 2**-s, 2**s >= H + 1 (|o| <= 25 (H + 1)); H = 1 at o / 2 as always
        self.scale = max(1, math.ceil(math.log2(self.chains + 1)))
        self.thresholds = ([t / 2 ** self.scale for t in level_thresholds(self.layout)]
                           if self.layout.bits < 8 else [])

    def _normal(self, shape) -> np.ndarray:
        if self.rng is None:
            raise ValueError("noise is on: pass a numpy Generator (rng) to draw it")
        return self.rng.standard_normal(shape)

    def prologue(self, ppa: PPA) -> None:
        """Once per window: constants and h^j_0 = +1."""
        ppa.load(UNIT, 1.0)
        ppa.d_set(ONE)
        for reg in self.hid:
            ppa.d_set(reg)

    def frame(self, ppa: PPA, bits: np.ndarray, *, read: bool) -> dict:
        """One frame; returns the probes asked for in ``stages`` (and, in a read-out frame,
        ``readout`` (B, K, S, S) uint8 levels and ``output`` (B, K, S, S) float64)."""
        probes: dict[str, np.ndarray] = {}
        want = set(self.stages)
        ppa.sense(INP, bits)
        if "0_binarized_x" in want:
            probes["0_binarized_x"] = ppa.peek_bits(INP)
        self._cnn(ppa, probes, want)
        self._rnn(ppa, probes, want, read=read)
        return probes

    def _cnn(self, ppa: PPA, probes: dict, want: set) -> None:
        conv = []
        for k in range(N_MAPS):
            kernel = self.w.conv1[k]
            ppa.load(ACC, 0.0)
            for dy, dx, (x, valid) in _walk(ppa, [(INP, S1, S2), (ONE, S3, S4)]):
                ppa.where(valid)
                ppa.add_or_sub(ACC, UNIT, x, sign=int(kernel[dy + PAD, dx + PAD]))
            ppa.all()
            if "1_conv1" in want:
                conv.append(ppa.peek(ACC))
            a, b = k % POOL, k // POOL
            _pool_axis(ppa, ACC, TMP, b, "west", "east")
            _pool_axis(ppa, ACC, TMP, a, "north", "south")
            ppa.load_pattern(S3, row=(a, POOL - 1), col=(b, POOL - 1))
            ppa.where(S3)
            ppa.copy(POOLED, ACC)
            ppa.all()
        if conv:
            probes["1_conv1"] = to_mosaic(np.stack(conv, axis=-3))
        ppa.load(TMP, 0.0)
        ppa.max(POOLED, POOLED, TMP)                      # ReLU
        if "2_conv1post" in want:
            probes["2_conv1post"] = to_mosaic(_deinterleave(ppa.peek(POOLED)))
        if self.noise.conv_sigma:
            ppa.inject(POOLED, self.noise.conv_sigma * self._normal(ppa.shape))
        ppa.load(TMP, self.w.thresh1)
        ppa.compare(XT, POOLED, TMP)
        for axis in ("col", "row"):
            bits = int(math.log2(ppa.width if axis == "col" else ppa.height))
            for low in range(bits - 2):
                _swap_address_bits(ppa, XT, low + 2, low, axis)
        if "3_thresholded_quantized" in want:
            probes["3_thresholded_quantized"] = ppa.peek_bits(XT)

    def _rnn(self, ppa: PPA, probes: dict, want: set, *, read: bool) -> None:
        if self.chains > 1:
            self._rnn_chains(ppa, probes, want, read=read)
            return
        accs = [(FI, self.w.w_fi, 0), (FH, self.w.w_fh, 1)]
        if read:
            accs += [(OI, self.w.w_oi[0], 0), (OH, self.w.w_oh[0], 1)]
        self._walk_macs(ppa, accs)
        if read:
            levels, outputs = [], []
            for k in range(self.w.channels):
                if k:
                    self._walk_macs(ppa, [(OI, self.w.w_oi[k], 0), (OH, self.w.w_oh[k], 1)])
                level, output = self._read_channel(ppa)
                levels.append(level)
                outputs.append(output)
            probes["readout"] = np.stack(levels, axis=-3)
            probes["output"] = np.stack(outputs, axis=-3)
        self._gate(ppa, probes, want)

    def _gate(self, ppa: PPA, probes: dict, want: set, chain: int = 0, gates: list | None = None) -> None:
        """Chain ``chain``'s gate from fi in FI and fh in FH, then h^j = f XNOR h^j (its register)."""
        hid = self.hid[chain]
        if self.noise.gate_sigma:
            ppa.inject(FI, self.noise.gate_sigma * self._normal(ppa.shape))
        ppa.neg(FH, FH)                                   # comparand: thr - fh
        loaded = None
        for chunk in self.chain_chunks[chain]:
            if chunk != loaded:
                ppa.load(CHUNK, chunk)
                loaded = chunk
            ppa.add(FH, FH, CHUNK)
        ppa.compare(S1, FI, FH)                           # f = (fi + fh >= thr), sign(0) = +1
        if gates is not None:                             # H > 1: the caller stacks the chains
            if "7_forget_gate_x" in want:
                gates.append(ppa.peek_bits(S1))
        else:
            if "4_hidden" in want:
                probes["4_hidden"] = ppa.peek_bits(hid)
            if "7_forget_gate_x" in want:
                probes["7_forget_gate_x"] = ppa.peek_bits(S1)
        ppa.d_xor(hid, S1, hid)                           # h = f XNOR h: keep or flip
        ppa.d_not(hid, hid)

    def _rnn_chains(self, ppa: PPA, probes: dict, want: set, *, read: bool) -> None:
        """The RNN of H > 1 hidden maps (module docstring): channels 1..K-1, then chain by chain."""
        w, last = self.w, self.chains - 1
        if "4_hidden" in want:                            # h^j_{t-1} of every chain, before any update
            probes["4_hidden"] = np.stack([ppa.peek_bits(reg) for reg in self.hid], axis=-3)
        levels, outputs = [None] * w.channels, [None] * w.channels
        if read:
            for k in range(1, w.channels):
                for j in range(self.chains):
                    accs = ([(OI, w.w_oi[k], 0)] if j == 0 else []) + [(OH, w.oh_kernels[k, j], 1)]
                    self._walk_macs(ppa, accs, chain=j)
                    self._fold(ppa, first=j == 0)
                levels[k], outputs[k] = self._read_channel(ppa)
        gates: list = []
        for j in range(self.chains):
            accs = [(FI, w.fi_kernels[j], 0), (FH, w.fh_kernels[j], 1)]
            if read:
                accs += ([(OI, w.w_oi[0], 0)] if j == 0 else []) + [(OH, w.oh_kernels[0, j], 1)]
            self._walk_macs(ppa, accs, chain=j)
            if read:
                self._fold(ppa, first=j == 0)
            if read and j == last:
                levels[0], outputs[0] = self._read_channel(ppa)
            self._gate(ppa, probes, want, chain=j, gates=gates)
        if read:
            probes["readout"] = np.stack(levels, axis=-3)
            probes["output"] = np.stack(outputs, axis=-3)
        if "7_forget_gate_x" in want:
            probes["7_forget_gate_x"] = np.stack(gates, axis=-3)

    def _walk_macs(self, ppa: PPA, accs, *, chain: int = 0) -> None:
        """Clear the accumulators and add each (register, 5x5 kernel, 0: x_t / 1: h^chain) over one
        walk, which moves only the planes some accumulator reads (and the validity plane)."""
        for reg, _, _ in accs:
            ppa.load(reg, 0.0)
        srcs = {src for _, _, src in accs}
        walked = [(XT, S1, S2)] if 0 in srcs else []
        walked += [(self.hid[chain], S3, S4)] if 1 in srcs else []
        where = {src: i for i, src in enumerate(sorted(srcs))}
        for dy, dx, planes in _walk(ppa, walked + [(ONE, S5, S6)]):
            ppa.where(planes[-1])
            for reg, kernel, src in accs:
                ppa.add_or_sub(reg, UNIT, planes[where[src]], sign=int(kernel[dy + PAD, dx + PAD]))
        ppa.all()

    def _fold(self, ppa: PPA, *, first: bool) -> None:
        """H > 1: add chain j's oh (in OH) into the running o / 2**s in OI at scale 2**-s
        (``first``: OI still holds oi, scaled here too). Halving is exact, and every partial sum
        stays within |o| / 2**s <= 25, so the register never saturates on the way."""
        for _ in range(self.scale):
            if first:
                ppa.half(OI, OI)
            ppa.half(OH, OH)
        ppa.add(OI, OI, OH)

    def _read_channel(self, ppa: PPA) -> tuple[np.ndarray, np.ndarray]:
        """oi in OI, oh in OH (H > 1: o / 2**s in OI, :meth:`_fold`) -> (levels, output) of one
        channel, each (B, S, S); see (f) above."""
        layout, noise = self.layout, self.noise
        p = layout.pool
        if self.chains > 1:
            return self._read_scaled(ppa)
        if layout.bits == 8 and p == 1:
            ppa.add(OI, OI, OH)
            if noise.out_gain != 1.0:                    # analog scale error of the o register
                ppa.inject(OI, (noise.out_gain - 1.0) * ppa.peek(OI))
            if noise.out_sigma:
                ppa.inject(OI, noise.out_sigma * self._normal(ppa.shape))
            if noise.has_offset:                         # global and per-pixel fixed-pattern offset
                ppa.inject(OI, noise.output_offset(ppa.shape[-2:]))
            return ppa.readout(OI), ppa.peek(OI)
        ppa.half(OI, OI)
        ppa.half(OH, OH)
        ppa.add(V, OI, OH)                               # v = o / 2, |v| <= 25: exact
        return self._read_scaled(ppa)

    def _read_scaled(self, ppa: PPA) -> tuple[np.ndarray, np.ndarray]:
        """v = o / 2**s in V (s = :attr:`scale`, |v| <= 25: exact) -> (levels, output): the output
        stage at that scale, pooling, then the ADC on o (doubled back s times, saturating only
        beyond the ADC's range) or the b < 8-bit level's comparisons with t_m / 2**s."""
        layout, noise = self.layout, self.noise
        p, unit = layout.pool, 0.5 ** self.scale
        if noise.out_gain != 1.0:                        # the output stage at scale 2**-s
            ppa.inject(V, (noise.out_gain - 1.0) * ppa.peek(V))
        if noise.out_sigma:
            ppa.inject(V, unit * noise.out_sigma * self._normal(ppa.shape))
        if noise.has_offset:
            ppa.inject(V, unit * noise.output_offset(ppa.shape[-2:]))
        for forward in ("west", "north"):                # columns, then rows
            d = 1
            while d < p:                                 # v <- mean of v and v d elements on
                ppa.half(V, V)
                ppa.shift(VTMP, V, forward)
                for _ in range(d - 1):
                    ppa.shift(VTMP, VTMP, forward)
                ppa.add(V, V, VTMP)
                d *= 2
        if layout.bits == 8:
            ppa.add(VTMP, V, V)                          # o (saturates beyond the ADC's range only)
            for _ in range(self.scale - 1):
                ppa.add(VTMP, VTMP, VTMP)
            return ppa.readout(VTMP, every=p), ppa.peek(VTMP)[..., ::p, ::p]
        planes = PLANES[:layout.bits]
        for m, threshold in enumerate(self.thresholds, start=1):
            ppa.load(VTMP, threshold)
            j = (m & -m).bit_length() - 1                # the largest j with 2**j dividing m
            if m == 1 << j:                              # the first comparison of plane j
                ppa.compare(planes[j], V, VTMP)
                for low in range(j):
                    ppa.d_xor(planes[low], planes[low], planes[j])
            else:
                ppa.compare(CMP, V, VTMP)
                for low in range(j + 1):
                    ppa.d_xor(planes[low], planes[low], CMP)
        level = np.zeros(ppa.shape[:-2] + (ppa.height // p, ppa.width // p), np.uint8)
        for j, plane in enumerate(planes):
            level |= ppa.readout_bits(plane, every=p).astype(np.uint8) << np.uint8(j)
        return level, ppa.peek(V)[..., ::p, ::p] / unit


def _new_array(program: _Program, height: int, width: int, batch: int | None,
               cost_model: CostModel | None) -> PPA:
    return PPA(height=height, width=width, analog=program.analog, digital=program.digital, batch=batch,
               cost_model=cost_model)


def _check_common(weights, noise, stages) -> NoiseModel:
    if not isinstance(weights, SensorWeights):
        raise ValueError(f"weights must be a SensorWeights, got {type(weights).__name__}")
    if noise is not None and not isinstance(noise, NoiseModel):
        raise ValueError(f"noise must be a NoiseModel or None, got {type(noise).__name__}")
    stages = tuple(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    return noise or NoiseModel.off()


def _check_size(height: int, width: int) -> None:
    if height != width or height not in SIZES:
        raise ValueError(f"the instruction path needs square frames of side {SIZES} (the sensor is "
                         f"64x64), got {height}x{width}")


def _binary_bits(binary: np.ndarray) -> np.ndarray:
    if not np.all((binary == 1) | (binary == -1)):
        raise ValueError("binary clips must hold only -1/+1")
    return binary > 0


BATCH = 64     # clips per instruction stream; noise is drawn per batch, so batches fix the draws


def run_clips_instruction(binary: np.ndarray, weights: SensorWeights, *, noise: NoiseModel | None = None,
                          rng: np.random.Generator | None = None, stages: tuple[str, ...] = (),
                          chunk: int | None = None) -> SensorResult:
    """Run the sensor program instruction by instruction on (N, T, 64, 64) +-1 int8 binary clips.

    Same arguments and results as :func:`firmware_sim.fast.run_clips`: ``stages`` names from
    :data:`firmware_sim.fast.STAGES`, each returned (N, T, ...) uint8 in the reference encoding;
    ``chunk`` clips (default :data:`BATCH`) run together as one batch (one instruction stream). ``output`` is the o
    register (saturated at +-25.6, see the module docstring).
    """
    binary = np.asarray(binary)
    if binary.ndim != 4:
        raise ValueError(f"binary clips must be (N, T, H, W), got shape {binary.shape}")
    noise = _check_common(weights, noise, stages)
    chunk = BATCH if chunk is None else chunk
    if not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    n, t, h, w = binary.shape
    _check_size(h, w)
    if t < 1:
        raise ValueError("binary clips need at least one frame (T >= 1)")
    read_steps = check_readout(weights, binary.shape)
    bits = _binary_bits(binary)
    program = _Program(weights, noise, rng, stages)
    readouts, outputs, collected = [], [], {name: [] for name in stages}
    for start in range(0, n, chunk):
        part = bits[start:start + chunk]
        ppa = _new_array(program, h, w, part.shape[0], None)
        program.prologue(ppa)
        per_step = {name: [] for name in stages}
        levels, analog = [], []
        for step in range(t):
            probes = program.frame(ppa, part[:, step], read=step in read_steps)
            for name in stages:
                per_step[name].append(probes[name])
            if step in read_steps:
                levels.append(probes["readout"])
                analog.append(probes["output"])
        b = part.shape[0]
        readouts.append(np.stack(levels, axis=1).reshape(b, -1, *levels[0].shape[-2:]))
        outputs.append(np.stack(analog, axis=1).reshape(b, -1, *analog[0].shape[-2:]).astype(np.float32))
        for name in stages:
            seq = np.stack(per_step[name], axis=1)
            if seq.dtype == bool:
                collected[name].append(np.where(seq, 255, 0).astype(np.uint8))
            else:
                collected[name].append(encode_analog(seq))
    return make_result(weights, binary.shape, readouts, outputs,
                       {name: np.concatenate(v) for name, v in collected.items()} if n else {})


def frame_cost(weights: SensorWeights, *, last: bool = False, noise: NoiseModel | None = None,
               size: int = 64, cost_model: CostModel | None = None) -> dict:
    """Instructions of one frame (by kind), with time and energy per frame (see :mod:`ppa`).

    ``last=True`` counts a read-out frame (the last one for the authors' layout), which also
    computes and reads out o for each of the layout's K channels, pooled and quantized as the
    layout says. The window's prologue (3 instructions) is not included. ``noise`` matters only
    through the gate constant (see the module docstring); injected noise is not an instruction.
    """
    noise = _check_common(weights, noise, ())
    _check_size(size, size)
    program = _Program(weights, noise, np.random.default_rng(0), ())
    ppa = _new_array(program, size, size, None, cost_model)
    program.prologue(ppa)
    ppa.reset_counts()
    program.frame(ppa, np.ones((size, size), bool), read=last)
    return ppa.cost()


def clip_cost(weights: SensorWeights, *, timesteps: int | None = None, noise: NoiseModel | None = None,
              size: int = 64, cost_model: CostModel | None = None) -> dict:
    """Instructions of one window of ``timesteps`` frames (default ``weights.timesteps``), prologue
    included, with the readouts of the weights' layout (a layout other than the authors' needs
    ``timesteps`` to be its own). ``readout_frames`` says how many frames read out."""
    noise = _check_common(weights, noise, ())
    _check_size(size, size)
    t = weights.timesteps if timesteps is None else timesteps
    if not (isinstance(t, (int, np.integer)) and t >= 1):
        raise ValueError(f"timesteps must be a positive integer, got {t!r}")
    frames = weights.readout_frames(int(t))
    program = _Program(weights, noise, np.random.default_rng(0), ())
    ppa = _new_array(program, size, size, None, cost_model)
    program.prologue(ppa)
    frame = np.ones((size, size), bool)
    for step in range(t):
        program.frame(ppa, frame, read=step + 1 in frames)
    cost = ppa.cost()
    cost["readout_frames"] = len(frames)
    return cost
