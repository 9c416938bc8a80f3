"""The packed path: the PixelRNN sensor program as table look-ups on bit patterns (numpy only).

Same results as :mod:`firmware_sim.fast` (and so as the instruction-level program, whose binary
states and 8-bit readout equal the fast path's): every binary state, the readout and ``output``,
with noise off and with noise on (the same Gaussian draws, in the same order, on the same float64
pre-activations). Only the way the +-1 convolutions are summed differs.

conv1 (16 kernels): three table look-ups per pixel *pair*
    The input bits are padded by two with bit 0 (= -1); the frames' padded rows are stacked into
    one tall image, so every array below is one contiguous run. Each even column's six horizontal
    neighbours (the 5-tap windows of a pixel pair) make a 6-bit row window. Two rows' windows (12
    bits) index a table of 4096 entries holding, for both pixels and all 16 kernels, the two rows'
    sums of +-1 products + 10, one byte per kernel and pixel (32 bytes); rows (0, 1), (2, 3) and 4
    give three gathers (``np.take``) whose sum is the 5x5 sum + 25, added as four uint64 words per
    pair (SWAR: every byte stays below 256, so no carry crosses into the next byte). The first and
    last pair of a row index their own table regions, in which taps outside the image add nothing
    (zero padding); the two rows at the top and bottom get a fixed correction (their taps in the
    padded rows added -w). ReLU, the 4x4 max-pool and the threshold then work on bytes: maxima of
    whole rows, then of the flat array shifted by 1 and 2 pixels. Without noise the threshold is
    folded into the tables (``+ 128 - (25 + ceil(thresh1))``: a byte's high bit is ``conv >=
    ceil(thresh1)``, which equals ``max(conv, 0) >= thresh1`` for integer sums; thresh1 <= 0 or
    > 25 make x constant), the pooled bytes are copied to their mosaic tiles as they are and three
    contiguous passes turn them into +-1. With conv noise the fast path's float64 expression is
    evaluated as it is, on the same draws.
The RNN (one kernel per convolution): 17 shifted int8 adds
    For a single kernel, the gathers (~1 ns per pixel) lose to SIMD int8 adds of the flat
    zero-padded +-1 plane: with the plane's neighbour sums and differences, each kernel row is
    three shifted adds. fi for every frame of every clip at once, oi (each of the K output
    kernels) for the read-out frames only; then per frame, for all clips of the batch together, fh
    (and the K oh in a read-out frame), the gate (``fh >= ceil(thr) - fi``: one int8 comparison)
    and h *= sign(gate), on whole padded planes (h's zero border absorbs the border's values).
Hidden maps (H > 1, :attr:`SensorWeights.hidden`)
    Every chain j has its own fi, fh (17 int8 adds each), gate and h^j (its own padded plane); a
    read-out frame adds each chain's K oh into o. The loops over chains are Python loops over the
    same whole-batch passes, so H = 1 runs exactly the passes it always ran.
The readout (the weights' ReadoutLayout)
    o = oi + oh is an exact integer. Without an output perturbation the authors' 8-bit, unpooled
    readout is one table look-up; otherwise the fast path's float64 output stage, ``pool_maps`` and
    ``quantize`` run as they are, on the same draws.

All clips of a batch go through each stage together; the only Python loops are over the T
frames of the recurrence and over groups of frames that keep the working set in cache. Work
arrays are reused across calls (fresh megabyte temporaries cost a page fault per 4 kB).
"""
from __future__ import annotations

import math

import numpy as np

from firmware_sim.encoding import encode_analog, encode_binary
from firmware_sim.fast import SensorResult, check_readout, check_run_args, make_result
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import KERNEL, N_MAPS, SensorWeights, o_max

PAD = KERNEL // 2
POOL = 4
ROW_OFFSET = 5               # one row's sum of 5 taps, + 5 (>= 0)
CONV_OFFSET = KERNEL * ROW_OFFSET   # a 5x5 sum is stored + 25: 0..50, one byte per kernel

# Stages the packed path can return itself; others (the analog probes) are left to fast.py.
PACKED_STAGES = ("0_binarized_x", "3_thresholded_quantized", "4_hidden", "7_forget_gate_x")


# ----- tables ------------------------------------------------------------------------------------

def _row_sums(kernel_rows: np.ndarray, outside: tuple[int, ...] = ()) -> np.ndarray:
    """(K, 5) +-1 kernel rows -> (32, K) int64: for each 5-bit pattern (bit j: the input at column
    offset j - 2, 0 = -1), the row's sum of +-1 products + 5. Taps ``outside`` the image (bit
    positions) add nothing, as zero padding has it."""
    bits = (np.arange(32)[:, None] >> np.arange(KERNEL)[None, :]) & 1          # (32, 5)
    signs = 2 * bits - 1
    signs[:, list(outside)] = 0
    return signs @ kernel_rows.astype(np.int64).T + ROW_OFFSET


# The pixel pairs of a row: interior, the first (x = 0, 1) and the last (x = W - 2, W - 1); for
# each, the bits of each pixel's 5-bit pattern that lie outside the image.
_PAIR_REGIONS = (((), ()), ((0, 1), (0,)), ((4,), (3, 4)))


def _pair_rows(kernel_rows: np.ndarray) -> np.ndarray:
    """(K, 5) +-1 kernel rows -> (3, 64, 2, K) int64: for each pair region (interior, first, last)
    and 6-bit window (bit j: padded column x + j), the row sums (+5) of the pixel pair (x, x + 1),
    whose 5-bit patterns are bits 0..4 and 1..5 of the window."""
    p = np.arange(64)
    return np.stack([np.stack([_row_sums(kernel_rows, out0)[p & 31], _row_sums(kernel_rows, out1)[p >> 1]],
                              axis=1) for out0, out1 in _PAIR_REGIONS])


def _row_corrections(kernels: np.ndarray, h: int, w: int) -> np.ndarray:
    """What the taps in rows outside an h x w image add back, once the image is padded with bit 0
    (= -1): ``sum(w)`` over the taps whose row is outside and column inside (the tables give the
    taps whose column is outside nothing). (4, W, K): image rows 0, 1, H - 2, H - 1."""
    k = kernels.shape[0]
    corr = np.zeros((4, w, k), dtype=np.int64)
    yy, xx = np.array([0, 1, h - 2, h - 1])[:, None], np.arange(w)[None, :]
    for dy in range(-PAD, PAD + 1):
        for dx in range(-PAD, PAD + 1):
            row_out = (yy + dy < 0) | (yy + dy >= h)
            col_out = (xx + dx < 0) | (xx + dx >= w)
            corr += (row_out & ~col_out)[..., None] * kernels[:, dy + PAD, dx + PAD].astype(np.int64)
    return corr


class _Conv:
    """A bank of K 5x5 +-1 kernels as three look-up tables on pixel pairs; K bytes per pixel.

    Each table entry holds two horizontally adjacent pixels' sums (2K bytes), so a frame costs
    three gathers per pixel *pair*: ``T01[p0 | p1 << 6]`` holds kernel rows 0 and 1's sums (+10)
    for the 6-bit row windows p0, p1 (bit j: padded column x + j); ``T23`` the same for rows 2
    and 3; ``T4[p]`` row 4's (+5, + ``offset``). Each table comes in three regions (interior pairs,
    the first pair of a row, the last: ``+ region * 4096``, or ``* 64`` for T4; :meth:`add_regions`)
    whose taps outside the image add nothing. Their sum is the 5x5 sum + 25 (+ ``offset``) with the
    image padded by -1 above and below; the row corrections (the two rows at each edge) make it
    the zero-padded sum. ``offset`` (0..205) lets a caller fold a threshold into the tables: with
    ``offset = 128 - t`` a byte's high bit is ``sum + 25 >= t``.
    """

    def __init__(self, kernels: np.ndarray, offset: int = 0) -> None:
        kernels = np.asarray(kernels)
        if not 0 <= offset <= 255 - 2 * CONV_OFFSET:
            raise ValueError(f"table offset {offset} would overflow a byte")
        self.kernels = kernels
        self.k = kernels.shape[0]
        rows = [_pair_rows(kernels[:, r, :]).astype(np.uint8) for r in range(KERNEL)]   # (3, 64, 2, K)
        t01, t23 = (rows[a][:, None] + rows[b][:, :, None] for a, b in ((0, 1), (2, 3)))   # [r, p1, p0]
        t4 = rows[4] + np.uint8(offset)
        self.word = {1: np.uint16, 2: np.uint32, 4: np.uint64, 8: np.uint64, 16: np.uint64}[self.k]
        # One entry = a row of plain words: np.take copies whole rows, the adds are per word (SWAR:
        # every byte stays in 0..50 + offset < 256, so no carry crosses into the next byte).
        self.t01, self.t23, self.t4 = (np.ascontiguousarray(t.reshape(3 * 64 ** d, -1)).view(self.word)
                                       for t, d in ((t01, 2), (t23, 2), (t4, 1)))
        self._corr: dict = {}
        self.buffers = _Buffers()

    @staticmethod
    def add_regions(index: np.ndarray, unit: int) -> None:
        """Point the first and last pair column of ``index`` (..., W / 2) at table regions 1 and 2
        (``unit``: a region's entries); the interior stays in region 0. Two column passes, not a
        broadcast over every pair (nor an add that widens: both cost more than the columns)."""
        index[:, 0] += unit
        index[:, -1] += 2 * unit

    def correction(self, h: int, w: int) -> np.ndarray:
        """The row corrections (4, W, K) as uint8 addends (mod 256: the sum wraps back into range)."""
        key = (h, w)
        if key not in self._corr:
            self._corr[key] = (_row_corrections(self.kernels, h, w) % 256).astype(np.uint8)
        return self._corr[key]

    def _windows(self, bits: np.ndarray) -> np.ndarray:
        """(F, H, W) 0/1 or +-1 -> (F * (H + 4), W / 2) uint16: the 6-bit row window of every pixel
        pair (bit j: column 2i - 2 + j for pair i) of the frames' stacked rows, each frame padded
        above and below by two rows of bit 0 (= -1).

        Columns are not padded: the bits a window takes from beyond its row's ends belong to the
        neighbouring row (or a zero guard), and the edge pairs' table regions give those taps
        nothing. So every pass below runs over one flat array, and the input is read in whole rows.
        """
        f, h, w = bits.shape
        hp = h + 2 * PAD
        n = f * hp * w
        buf = self.buffers.get
        flat = buf("padded", (n + 4,), np.uint8, zero=True)      # padding rows and guards written once
        body = flat[2:2 + n].reshape(f, hp, w)
        np.greater(bits, 0, out=body[:, PAD:PAD + h].view(bool))  # 0/1 or +-1 -> bits
        # two pixels per uint16 (little-endian: the even one in the low byte) -> 2-bit pairs;
        # two[p] is pair p - 1 of the stacked rows (two[0] and two[-1]: the guards)
        v = flat.view(np.uint16)
        two = buf("two", v.shape, np.uint16)
        np.right_shift(v, 7, out=two)
        np.bitwise_or(two, v, out=two)
        np.bitwise_and(two, 3, out=two)
        # the window of pair p: pairs p - 1, p, p + 1
        m = n // 2
        six = buf("six", (m,), np.uint16)
        tmp = buf("six_tmp", (m,), np.uint16)
        np.left_shift(two[2:], 4, out=six)
        np.left_shift(two[1:m + 1], 2, out=tmp)
        np.bitwise_or(six, tmp, out=six)
        np.bitwise_or(six, two[:m], out=six)
        return six.reshape(f * hp, w // 2)

    def __call__(self, bits: np.ndarray) -> np.ndarray:
        """(F, H, W) 0/1 uint8 (W even) -> (F, H, W, K) uint8: each kernel's zero-padded 5x5 sum
        + 25 + offset.

        The frames' padded rows are stacked into one tall image, so every index array and every
        gather is one contiguous run: output row r reads stacked rows r..r+4 (the 4 rows that mix
        two frames are computed and never read). The indices are made in uint16 (table index <
        3 * 4096) and widened once for ``np.take``. The result is a view of a reused buffer: valid
        until the next call with the same shapes.
        """
        f, h, w = bits.shape
        hp = h + 2 * PAD
        buf = self.buffers.get
        low = self._windows(bits)                                 # each stacked row's 6-bit windows
        rows = f * hp - 2 * PAD
        # index of stacked rows (r, r + 1): low[r] | low[r + 1] << 6, plus the edge pairs' regions
        pair16 = buf("pair16", (rows + 2, w // 2), np.uint16)
        np.left_shift(low[1:rows + 3], 6, out=pair16)
        np.bitwise_or(pair16, low[:rows + 2], out=pair16)
        self.add_regions(pair16, 4096)
        pair = buf("pair", pair16.shape, np.intp)
        np.copyto(pair, pair16)
        sums = buf("sums", (f * hp, w // 2) + self.t01.shape[1:], self.word)
        part = buf("part", (rows, w // 2) + self.t01.shape[1:], self.word)
        np.take(self.t01, pair[:rows], axis=0, out=sums[:rows], mode="clip")       # kernel rows 0, 1
        np.take(self.t23, pair[2:], axis=0, out=part, mode="clip")                  # kernel rows 2, 3
        sums[:rows] += part
        idx4 = buf("idx4", (rows, w // 2), np.intp)
        np.copyto(idx4, low[2 * PAD:])
        self.add_regions(idx4, 64)
        np.take(self.t4, idx4, axis=0, out=part, mode="clip")                       # kernel row 4
        sums[:rows] += part
        result = sums.view(np.uint8).reshape((f, hp, w, self.k))[:, :h]
        corr = self.correction(h, w)
        # only the two rows at each edge have taps outside the image that the tables count
        result[:, :PAD] += corr[:PAD]
        result[:, h - PAD:] += corr[PAD:]
        return result


class _Buffers:
    """Reused work arrays by (name, shape): fresh megabyte temporaries cost a page fault per 4 kB
    on every call."""

    def __init__(self) -> None:
        self._arrays: dict = {}

    def get(self, name: str, shape: tuple[int, ...], dtype, *, zero: bool = False) -> np.ndarray:
        key = (name, shape)                 # a name is used with one dtype
        buf = self._arrays.get(key)
        if buf is None:
            if len(self._arrays) > 32:
                self._arrays.clear()
            buf = self._arrays[key] = (np.zeros if zero else np.empty)(shape, dtype)
        return buf


def _tiles(out: np.ndarray, h: int, w: int) -> np.ndarray:
    """A (F, 4h, 4w) array (a view of a padded one too) as (F, 4, h, 4, w), a view: tile row, row
    in the tile, tile column, column in the tile (splitting axes never needs a copy; checked, so
    writes never go to one)."""
    tiles = out.reshape(out.shape[0], POOL, h, POOL, w)
    if not np.may_share_memory(tiles, out):
        raise AssertionError("the tile view of the mosaic is a copy")
    return tiles


class PackedProgram:
    """The sensor program for one set of weights, compiled to look-up tables."""

    def __init__(self, weights: SensorWeights) -> None:
        self.weights = weights
        self.chains = weights.hidden
        self.fi = [_DirectConv(k) for k in weights.fi_kernels]   # one per hidden map (chain)
        self.fh = [_DirectConv(k) for k in weights.fh_kernels]
        self.w_fi, self.w_fh = self.fi[0], self.fh[0]           # chain 0 (H = 1: the only gate)
        self.w_oi = [_DirectConv(k) for k in weights.w_oi]     # one per output kernel pair
        # w_oh[k][j]: W_oh^{k,j}, output kernel pair k's kernel on hidden map j
        self.w_oh = [[_DirectConv(kj) for kj in row] for row in weights.oh_kernels]
        layout = weights.layout
        self.plain_readout = layout.bits == 8 and layout.pool == 1     # the ADC level of o itself
        # x = [max(conv, 0) >= thresh1] over a 4x4 block. Without noise that is always (thresh1 <=
        # 0), never (ceil(thresh1) > 25, beyond any sum), or [conv >= ceil(thresh1)] somewhere in
        # the block: a byte's high bit once 128 - (25 + ceil(thresh1)) is folded into the tables.
        t1 = weights.thresh1
        self.x_const = 1 if t1 <= 0 else (-1 if math.ceil(t1) > KERNEL * KERNEL else None)
        self._thr_offset = None if self.x_const else 128 - (CONV_OFFSET + math.ceil(t1))
        self._conv1: _Conv | None = None            # exact sums + 25 (conv noise: the float path)
        self._conv1_thr: _Conv | None = None        # sums + 25 + the threshold offset
        # gate: fi + fh >= thr  <=>  fh >= ceil(thr) - fi, an int8 compare (|fi + fh| <= 50)
        self.gate_thrs = [int(min(max(math.ceil(t), -51), 51)) for t in weights.gate_thresholds]
        self.gate_thr = self.gate_thrs[0]
        # |o| <= 25 (H + 1): o + o_max -> level
        self.o_max = o_max(self.chains)
        self.readout_lut = encode_analog(np.arange(-self.o_max, self.o_max + 1, dtype=np.float64))
        self.buffers = _Buffers()
        self._masks: dict = {}

    @property
    def conv1(self) -> _Conv:
        if self._conv1 is None:
            self._conv1 = _Conv(self.weights.conv1)
        return self._conv1

    @property
    def conv1_thr(self) -> _Conv:
        if self._conv1_thr is None:
            self._conv1_thr = _Conv(self.weights.conv1, offset=self._thr_offset)
        return self._conv1_thr

    def readout(self, o_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact integer o (N, K, H, W) int16, no output perturbation -> (levels, output) of the
        layout: one table look-up for the authors' 8-bit unpooled readout, else the fast path's
        ``pool_maps`` and ``quantize``."""
        if self.plain_readout:
            return self.readout_lut[o_int + self.o_max], o_int
        layout = self.weights.layout
        o = layout.pool_maps(o_int.astype(np.float64))
        return layout.quantize(o), o

    def pooled(self, bits: np.ndarray, conv: _Conv | None = None) -> np.ndarray:
        """(F, H, W) 0/1 input -> 4x4 max of ``conv``'s bytes (default: conv1, the sums + 25),
        (F, H/4, W/4, 16) uint8 (before ReLU; a view of a reused buffer)."""
        s = (conv or self.conv1)(bits)                        # (F, H, W, 16)
        f, h, w, k = s.shape
        buf = self.buffers.get
        # rows: maxima of whole rows (contiguous runs of W * 16 bytes)
        s = s.reshape(f, h // POOL, POOL, w * k)
        m2 = buf("pool_m2", (f, h // POOL, 2, w * k), np.uint8)
        np.maximum(s[:, :, 0:2], s[:, :, 2:4], out=m2)
        m = buf("pool_m", (f, h // POOL, w * k), np.uint8)
        np.maximum(m2[:, :, 0], m2[:, :, 1], out=m)           # (F, H/4, W * 16)
        # columns: maxima of the flat array and its copies shifted by 1 and 2 pixels, then every
        # 4th pixel (a block's first column holds the block's maximum)
        flat = m.reshape(-1)
        a = buf("pool_a", (flat.size - k,), np.uint8)
        np.maximum(flat[:-k], flat[k:], out=a)
        b = buf("pool_b", flat.shape, np.uint8)
        np.maximum(a[:-2 * k], a[2 * k:], out=b[:-3 * k])
        return b.reshape(f, h // POOL, w // POOL, POOL, k)[:, :, :, 0]

    def x_maps(self, bits: np.ndarray, out: np.ndarray, noise: np.ndarray, sigma: float) -> None:
        """(F, H, W) input with conv noise -> the 16 thresholded maps x, written into ``out`` (F,
        H/4, W/4, 16) as 0/1 uint8: the fast path's float64 expression on the exact pooled sums.

        ``noise``: (F, 16, H/4, W/4) standard normals (the fast path's layout). Without noise
        :meth:`x_bytes` does the threshold in the tables instead."""
        p = np.maximum(self.pooled(bits).astype(np.float64) - CONV_OFFSET, 0.0)       # exact ReLU'd
        pre = p + sigma * np.moveaxis(noise, 1, -1)
        np.greater_equal(pre - self.weights.thresh1, 0, out=out.view(bool))

    @staticmethod
    def mosaic_signs(maps: np.ndarray, out: np.ndarray) -> None:
        """(F, h, w, 16) 0/1 uint8 maps (turned into +-1 in place) -> the x_t mosaic as +-1 int8,
        written into ``out`` (F, 4h, 4w) (a view of a padded array is fine). One strided copy for
        all frames: map k = 4 * kc + kr sits at tile row kr, tile column kc (firmware_sim.mosaic)."""
        f, h, w, _ = maps.shape
        sign = maps.view(np.int8)
        sign += sign
        sign -= np.int8(1)                                     # 0/1 -> -1/+1
        np.copyto(_tiles(out, h, w), sign.reshape(f, h, w, POOL, POOL).transpose(0, 4, 1, 3, 2))

    def x_bytes(self, bits: np.ndarray, out: np.ndarray) -> None:
        """(F, H, W) 0/1 input, noise off -> the x_t mosaic as bytes whose high bit is x_t (+1),
        written into ``out`` (F, H, W) uint8 (a view of a padded array is fine): the pooled bytes
        themselves, copied to their tiles, so no pass is spent on them (:meth:`signs` finishes)."""
        if self.x_const is not None:
            out[...] = 128 if self.x_const > 0 else 0
            return
        f, h, w = bits.shape
        pooled = self.pooled(bits, self.conv1_thr)            # (F, h/4, w/4, 16): high bit = x
        # map k = 4 * kc + kr sits at tile row kr, tile column kc (firmware_sim.mosaic)
        np.copyto(_tiles(out, h // POOL, w // POOL),
                  pooled.reshape(f, h // POOL, w // POOL, POOL, POOL).transpose(0, 4, 1, 3, 2))

    def signs(self, padded: np.ndarray) -> None:
        """(F, H + 4, W + 4) int8 holding :meth:`x_bytes` in the interior and a zero border -> +-1
        in the interior, the border still zero (in place; three contiguous passes)."""
        f, hp, wp = padded.shape
        key = ("interior", hp, wp)
        if key not in self._masks:
            mask = self._masks[key] = np.zeros((hp, wp), np.int8)
            mask[PAD:hp - PAD, PAD:wp - PAD] = 1
        high = self.buffers.get("high_bits", padded.shape, bool)
        np.greater_equal(padded.view(np.uint8), 128, out=high)
        np.add(high.view(np.int8), high.view(np.int8), out=padded)
        padded -= self._masks[key]                                # 2x - 1 inside, 0 on the border


class _DirectConv:
    """One 5x5 +-1 kernel on int8 +-1 planes (zero-padded by 2): 17 shifted adds of flat arrays.

    A kernel row (w0..w4) sums w0 * (x[-2] +- x[-1]) + w2 * (x[0] +- x[1]) + w4 * x[2]: with the
    plane's neighbour sums ``x[i] + x[i + 1]`` and differences ``x[i] - x[i + 1]`` made once (two
    passes), a row costs three adds instead of five, 17 passes in all instead of 25. For one
    kernel this beats the look-up tables (whose gathers cost ~1 ns per pixel): int8 adds are SIMD.
    Sums stay in [-25, 25].
    """

    def __init__(self, kernel: np.ndarray) -> None:
        self.terms = []                     # (plane, dy, dx, sign): plane 0 x, 1 sums, 2 differences
        for dy in range(-PAD, PAD + 1):
            w = [int(v) for v in kernel[dy + PAD]]
            self.terms += [(1 if w[0] == w[1] else 2, dy, -2, w[0]), (1 if w[2] == w[3] else 2, dy, 0, w[2]),
                           (0, dy, 2, w[4])]
        self._work: dict = {}

    def __call__(self, padded: np.ndarray, out: np.ndarray, first: int = 0, last: int | None = None) -> None:
        """Frames [first, last) of ``padded`` (F, H + 4, W + 4) int8 -> ``out`` (same shape) int8:
        the sum at every interior element (the 2-element border of ``out`` is left undefined)."""
        f, hp, wp = padded.shape
        size = hp * wp
        last = f if last is None else last
        a, b = first * size, last * size
        src, dst = padded.reshape(-1)[a:b], out.reshape(-1)[a:b]
        work = self._work.get(b - a)
        if work is None:
            if len(self._work) > 4:
                self._work.clear()
            work = self._work[b - a] = np.empty((2, b - a), np.int8)
        np.add(src[:-1], src[1:], out=work[0, :-1])              # x[i] + x[i + 1]
        np.subtract(src[:-1], src[1:], out=work[1, :-1])         # x[i] - x[i + 1]
        planes = (src, work[0], work[1])
        lo, hi = PAD * wp + PAD, (b - a) - PAD * wp - PAD
        acc = dst[lo:hi]
        for i, (plane, dy, dx, sign) in enumerate(self.terms):
            off = dy * wp + dx
            tap = planes[plane][lo + off:hi + off]
            if i == 0:
                np.copyto(acc, tap) if sign > 0 else np.negative(tap, out=acc)
            elif sign > 0:
                np.add(acc, tap, out=acc)
            else:
                np.subtract(acc, tap, out=acc)


def _check(binary, weights, noise, stages):
    return check_run_args(binary, noise, stages)


def supports(binary_shape: tuple[int, ...], stages: tuple[str, ...] = ()) -> bool:
    """True when :func:`run_clips` computes this case itself (else it calls the fast path)."""
    if len(binary_shape) != 4:
        return False
    h, w = binary_shape[2:]
    return (h % POOL == 0 and w % POOL == 0 and h >= 8 and w >= 8
            and set(stages) <= set(PACKED_STAGES))


_PROGRAMS: dict[str, PackedProgram] = {}


def program_for(weights: SensorWeights) -> PackedProgram:
    """The compiled tables for ``weights`` (cached by program hash): 0.8 MB of tables each, plus
    the work arrays of the batch shapes it has run (about 12 MB for 32 clips of 16 frames), so
    only a few are kept."""
    key = weights.program_hash()
    prog = _PROGRAMS.get(key)
    if prog is None:
        if len(_PROGRAMS) >= 4:
            _PROGRAMS.clear()
        prog = _PROGRAMS[key] = PackedProgram(weights)
    return prog


def run_clips(binary: np.ndarray, weights: SensorWeights, *, noise: NoiseModel | None = None,
              rng: np.random.Generator | None = None, stages: tuple[str, ...] = (),
              chunk: int = 32, frame_chunk: int = 16) -> SensorResult:
    """Run the sensor program on (N, T, H, W) +-1 int8 binary clips; as :func:`fast.run_clips`.

    Identical results (readout, output, every stage) to ``fast.run_clips(binary, weights, noise=
    noise, rng=rng, stages=stages)``, including the noise draws. Cases it does not compute itself
    (the analog stages ``1_conv1``/``2_conv1post``, or frames whose sides are not multiples of 4)
    are passed to the fast path. ``chunk`` clips run through the recurrence together;
    ``frame_chunk`` frames at a time through conv1 (small: the tables' outputs stay in cache).
    """
    binary, noise = _check(binary, weights, noise, stages)
    stages = tuple(stages)
    if not supports(binary.shape, stages):
        from firmware_sim import fast
        return fast.run_clips(binary, weights, noise=noise, rng=rng, stages=stages)
    read_steps = check_readout(weights, binary.shape)
    if noise.enabled and (noise.conv_sigma or noise.gate_sigma or noise.out_sigma) and rng is None:
        raise ValueError("noise is on: pass a numpy Generator (rng) to draw it")
    n = binary.shape[0]
    prog = program_for(weights)
    readouts, outputs, collected = [], [], {name: [] for name in stages}
    for start in range(0, n, chunk):
        part = binary[start:start + chunk]
        r, o, st = _run_chunk(prog, part, noise, rng, stages, frame_chunk, read_steps)
        readouts.append(r)
        outputs.append(o)
        for name in stages:
            collected[name].append(st[name])
    return make_result(weights, binary.shape, readouts, outputs,
                       {name: np.concatenate(v) for name, v in collected.items()} if n else {})


def _draw(rng, noise: NoiseModel, n: int, t: int, h: int, w: int, read_steps: tuple[int, ...], k: int,
          chains: int = 1):
    """The fast path's draws for n clips, clip by clip in its order: conv (16, T, h/4, w/4), then
    for each frame its gate (H, h, w) (chain 0 first) and, in a read-out frame, right after it the
    output (K, h, w). One call: a Generator's normals are a stream. Returns conv, a list of T gate
    views (n, H, h, w) and a list of one output view (n, K, h, w) per read-out frame (None where
    that noise is off)."""
    conv_size = N_MAPS * t * (h // POOL) * (w // POOL) if noise.conv_sigma else 0
    gate_size = chains * h * w if noise.gate_sigma else 0
    out_size = k * h * w if noise.out_sigma else 0
    total = conv_size + t * gate_size + len(read_steps) * out_size
    if not total:
        return None, None, None
    z = rng.standard_normal((n, total))
    conv = z[:, :conv_size].reshape(n, N_MAPS, t, h // POOL, w // POOL) if conv_size else None
    gate, out = [], []
    at = conv_size
    for step in range(t):
        gate.append(z[:, at:at + gate_size].reshape(n, chains, h, w) if gate_size else None)
        at += gate_size
        if step in read_steps:
            out.append(z[:, at:at + out_size].reshape(n, k, h, w) if out_size else None)
            at += out_size
    return conv, (gate if gate_size else None), (out if out_size else None)


def _run_chunk(prog: PackedProgram, binary: np.ndarray, noise: NoiseModel, rng, stages, frame_chunk,
               read_steps):
    n, t, h, w = binary.shape
    weights = prog.weights
    layout = weights.layout
    k_out = weights.channels
    chains = prog.chains
    z_conv, z_gate, z_out = _draw(rng, noise, n, t, h, w, read_steps, k_out, chains)
    out: dict[str, np.ndarray] = {}
    if "0_binarized_x" in stages:
        out["0_binarized_x"] = encode_binary(binary)

    # conv1, ReLU, pool, threshold, mosaic, straight into x_t as +-1 int8 with a zero border:
    # frames in small groups (clip-major order) so the tables' outputs stay in cache
    frames = binary.reshape(n * t, h, w)                # +-1: the tables' padding takes x > 0
    hp, wp = h + 2 * PAD, w + 2 * PAD
    inner = (slice(None), slice(PAD, PAD + h), slice(PAD, PAD + w))
    buf = prog.buffers.get                              # reused: fresh arrays cost page faults
    xs = buf("xs", (n * t, hp, wp), np.int8, zero=True)  # only the interior is ever written
    x_in = xs[inner]
    if z_conv is not None:
        z_frames = np.moveaxis(z_conv, 2, 1).reshape(n * t, N_MAPS, h // POOL, w // POOL)
    if z_conv is None:                                  # bytes whose high bit is x, then +-1
        x_bytes = x_in.view(np.uint8)
        for s in range(0, n * t, frame_chunk):
            prog.x_bytes(frames[s:s + frame_chunk], x_bytes[s:s + frame_chunk])
        prog.signs(xs)
    else:                                               # the float threshold on the same draws
        maps = buf("maps", (n * t, h // POOL, w // POOL, N_MAPS), np.uint8)
        for s in range(0, n * t, frame_chunk):
            e = min(s + frame_chunk, n * t)
            prog.x_maps(frames[s:e], maps[s:e], z_frames[s:e], noise.conv_sigma)
        prog.mosaic_signs(maps, x_in)
    if "3_thresholded_quantized" in stages:
        out["3_thresholded_quantized"] = np.where(x_in > 0, 255, 0).astype(np.uint8).reshape(n, t, h, w)

    # input halves of the recurrent convolutions (fi: every frame, all at once, per hidden map;
    # oi: read-out frames)
    group = 64                                          # frames per pass: stays in cache
    fis, gate_rhss = [], []
    for j in range(chains):
        fi_all = buf("fi" if j == 0 else f"fi{j}", xs.shape, np.int8)
        for g in range(0, n * t, group):
            prog.fi[j](xs, fi_all, g, min(g + group, n * t))
        fis.append(fi_all.reshape(n, t, hp, wp)[:, :, PAD:PAD + h, PAD:PAD + w])
        if z_gate is None:
            # the gate fh >= ceil(thr) - fi: the right side for every frame at once, on whole padded
            # planes (contiguous passes; what lands on the border is multiplied by h's zero border)
            gate_rhss.append(np.subtract(np.int8(prog.gate_thrs[j]), fi_all, out=fi_all).reshape(n, t, hp, wp))
    r = len(read_steps)
    x_read = np.ascontiguousarray(xs.reshape(n, t, hp, wp)[:, list(read_steps)]).reshape(n * r, hp, wp)
    oi = []                                             # per output kernel: (n, R, hp, wp)
    for conv in prog.w_oi:
        oi.append(np.empty_like(x_read))
        conv(x_read, oi[-1])
        oi[-1] = oi[-1].reshape(n, r, hp, wp)

    hss = [np.zeros((n, hp, wp), np.int8) for _ in range(chains)]     # h^j as +-1 int8, zero border
    for hs in hss:
        hs[inner] = 1                                   # h_0 = +1
    fh_buf = np.empty_like(hss[0])
    fh = fh_buf[inner]
    gate_bufs = [np.empty((n, hp, wp), bool) for _ in range(chains)]  # whole padded planes: contiguous
    sign_buf = np.empty((n, hp, wp), np.int8)
    seq_shape = (n, t, h, w) if chains == 1 else (n, t, chains, h, w)
    hid_seq = np.empty(seq_shape, np.uint8) if "4_hidden" in stages else None
    gate_seq = np.empty(seq_shape, np.uint8) if "7_forget_gate_x" in stages else None
    hid_at = None if hid_seq is None else hid_seq.reshape(n, t, chains, h, w)      # views with a chain axis
    gate_at = None if gate_seq is None else gate_seq.reshape(n, t, chains, h, w)
    side_h, side_w = h // layout.pool, w // layout.pool
    levels = np.empty((n, r, k_out, side_h, side_w), np.uint8)
    output = np.empty(levels.shape, np.float32)
    perturbed = noise.out_gain != 1.0 or noise.out_sigma or noise.has_offset
    oh = np.empty_like(hss[0]) if r else None
    thresholds = weights.gate_thresholds
    i = 0
    for step in range(t):
        for j in range(chains):
            hs, gate_buf = hss[j], gate_bufs[j]
            if hid_at is not None:
                hid_at[:, step, j] = hs[inner] > 0
            gate = gate_buf[inner]
            if step < t - 1 or gate_at is not None:    # the last gate is used only when dumped
                prog.fh[j](hs, fh_buf)
                if z_gate is None:
                    np.greater_equal(fh_buf, gate_rhss[j][:, step], out=gate_buf)     # exact integers
                else:
                    pre = fis[j][:, step].astype(np.float64) + fh                      # exact integer fi + fh
                    pre = pre + noise.gate_sigma * z_gate[step][:, j]
                    np.greater_equal(pre - thresholds[j], 0, out=gate)
            if gate_at is not None:
                gate_at[:, step, j] = gate
        if i < r and step == read_steps[i]:
            o_int = np.empty((n, k_out, h, w), np.int16)
            for k in range(k_out):
                for j in range(chains):                 # o = oi + sum_j oh^j: exact integers
                    prog.w_oh[k][j](hss[j], oh)
                    if j == 0:
                        np.add(oi[k][:, i][inner], oh[inner], out=o_int[:, k], dtype=np.int16)
                    else:
                        np.add(o_int[:, k], oh[inner], out=o_int[:, k], dtype=np.int16)
            if perturbed:
                o = o_int.astype(np.float64)
                if noise.out_gain != 1.0:
                    o = o * noise.out_gain
                if noise.out_sigma:
                    o = o + noise.out_sigma * z_out[i]
                if noise.has_offset:
                    o = o + noise.output_offset(o.shape[-2:])
                o = layout.pool_maps(o)
                levels[:, i] = layout.quantize(o)
                output[:, i] = o
            else:
                levels[:, i], output[:, i] = prog.readout(o_int)
            i += 1
        if step < t - 1:
            for hs, gate_buf in zip(hss, gate_bufs):
                sign = np.add(gate_buf.view(np.int8), gate_buf.view(np.int8), out=sign_buf)
                sign -= np.int8(1)
                hs *= sign                               # keep (gate +1) or flip (gate -1); border stays 0
    if hid_seq is not None:
        out["4_hidden"] = np.where(hid_seq > 0, 255, 0).astype(np.uint8)
    if gate_seq is not None:
        out["7_forget_gate_x"] = np.where(gate_seq > 0, 255, 0).astype(np.uint8)
    shape = (n, r * k_out, side_h, side_w)
    return levels.reshape(shape), output.reshape(shape), out


class PackedStream:
    """Frame-by-frame sensor stage on the packed program: push one binary frame, get the window's
    levels at its last frame. Same interface and identical results as :class:`fast.SensorStream`
    with noise off (the live camera loop's case); with noise on it runs :class:`fast.SensorStream`
    itself (its draws are per frame, in its order). Frame sides must be multiples of 4.

    Per frame: conv1 by table look-ups, the x_t mosaic, fi and fh (17 int8 adds each), the gate as
    one int8 comparison, h *= sign(gate) (each of these once per hidden map); in a read-out frame
    also the K oi, the K x H oh and the readout. Buffers are allocated once per frame size and reused.
    """

    def __init__(self, weights: SensorWeights, *, noise: NoiseModel | None = None,
                 rng: np.random.Generator | None = None) -> None:
        from firmware_sim import fast

        self.weights = weights
        self.noise = noise or NoiseModel.off()
        self._fallback = fast.SensorStream(weights, noise=self.noise, rng=rng) if self.noise.enabled else None
        self._prog = program_for(weights)
        self._read = weights.readout_frames(weights.timesteps)
        self._size: tuple[int, int] | None = None
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self._levels: list[np.ndarray] = []
        if self._fallback is not None:
            self._fallback.reset()
        elif self._size is not None:
            for hs in self._hs:
                hs[self._inner] = 1                       # h_0 = +1

    def _buffers(self, h: int, w: int) -> None:
        hp, wp = h + 2 * PAD, w + 2 * PAD
        self._inner = (slice(None), slice(PAD, PAD + h), slice(PAD, PAD + w))
        self._x = np.zeros((1, hp, wp), np.int8)          # x_t as +-1, zero border
        self._hs = [np.zeros((1, hp, wp), np.int8) for _ in range(self._prog.chains)]   # h^j, zero border
        self._h, self._one = self._hs[0], len(self._hs) == 1
        self._fi, self._fh, self._o = (np.empty((1, hp, wp), np.int8) for _ in range(3))
        self._oh = np.empty((1, hp, wp), np.int8)
        self._size = (h, w)
        for hs in self._hs:
            hs[self._inner] = 1

    def push(self, binary_frame: np.ndarray) -> np.ndarray | None:
        """Process one (H, W) +-1 frame; return the window's uint8 levels at its last frame, else None."""
        frame = np.asarray(binary_frame)
        if frame.ndim != 2 or frame.shape[0] % POOL or frame.shape[1] % POOL:
            raise ValueError(f"a sensor frame must be (H, W) with sides multiples of {POOL} (the 4x4 pool), "
                             f"got {frame.shape}")
        if self._fallback is not None:
            return self._fallback.push(frame)
        if self._size != frame.shape:
            if self.step:
                raise ValueError(f"frame shape changed mid-window: {frame.shape} after {self._size}")
            self._buffers(*frame.shape)
        prog, inner = self._prog, self._inner
        prog.x_bytes(frame[None], self._x[inner].view(np.uint8))
        prog.signs(self._x)                                          # x_t as +-1, (1, H, W)
        if self._one:                                                # one hidden map: no loop
            prog.w_fi(self._x, self._fi)
            prog.w_fh(self._h, self._fh)
            gates = (np.add(self._fi[inner], self._fh[inner]) >= prog.gate_thr,)
        else:
            gates = []
            for fi, fh, hs, thr in zip(prog.fi, prog.fh, self._hs, prog.gate_thrs):
                fi(self._x, self._fi)
                fh(hs, self._fh)
                gates.append(np.add(self._fi[inner], self._fh[inner]) >= thr)
        self.step += 1
        if self.step in self._read:
            self._levels.append(self._readout())
        if self.step < self.weights.timesteps:
            for gate, hs in zip(gates, self._hs):
                sign = gate.view(np.int8) * np.int8(2)
                sign -= np.int8(1)
                hs[inner] *= sign                                     # keep (gate +1) or flip (-1)
            return None
        levels = np.concatenate(self._levels)
        self.reset()
        return levels[0] if self.weights.layout.is_authors else levels

    def _readout(self) -> np.ndarray:
        """The read-out frame's (K, S, S) levels from o = oi + sum_j oh^j (exact integers)."""
        prog, inner = self._prog, self._inner
        h, w = self._size
        o_int = np.empty((prog.weights.channels, h, w), np.int16)
        for k in range(prog.weights.channels):
            prog.w_oi[k](self._x, self._o)
            for j, hs in enumerate(self._hs):
                prog.w_oh[k][j](hs, self._oh)
                if j == 0:
                    np.add(self._o[inner][0], self._oh[inner][0], out=o_int[k], dtype=np.int16)
                else:
                    np.add(o_int[k], self._oh[inner][0], out=o_int[k], dtype=np.int16)
        return prog.readout(o_int[None])[0][0]
