"""The packed path: the PixelRNN sensor program as table look-ups on bit patterns (numpy only).

Same results as :mod:`firmware_sim.fast` (and so as the instruction-level program, whose binary
states and 8-bit readout equal the fast path's): every binary state, the readout and ``output``,
with noise off and with noise on (the same Gaussian draws, in the same order, on the same float64
pre-activations). Only the way the +-1 convolutions are summed differs.

conv1 (16 kernels): three table look-ups per pixel
    The input bits are padded by two with bit 0 (= -1) and each pixel's five horizontal neighbours
    in one row are packed into a 5-bit row pattern (contiguous uint8 ops on the flat padded image).
    Two rows' patterns (10 bits) index a table of 1024 entries holding, for all 16 kernels, the two
    rows' sums of +-1 products + 10, one byte per kernel; rows (0, 1), (2, 3) and 4 give three
    gathers (``np.take``) whose sum is the 5x5 sum + 25, added as two uint64 words per pixel (SWAR:
    every byte stays in 0..50, so no carry crosses into the next kernel's byte). A fixed per-pixel
    correction (the taps outside the image: they added -w where zero padding adds nothing) makes
    it the zero-padded sum. ReLU, the 4x4 max-pool and the threshold then work on bytes: maxima of
    whole rows, then of the flat array shifted by 1 and 2 pixels. Without noise every threshold is
    one integer comparison (``p >= thr`` equals ``p >= ceil(thr)`` for integer ``p``); with noise
    the fast path's float64 expression is evaluated as it is, on the same draws.
The RNN (one kernel per convolution): 25 shifted int8 adds
    For a single kernel, the gathers (~2 ns per pixel) lose to 25 SIMD int8 adds of the flat
    zero-padded +-1 plane. fi for every frame of every clip at once, oi (each of the K output
    kernels) for the read-out frames only; then per frame, for all clips of the batch together, fh
    (and the K oh in a read-out frame), the gate (an int8 comparison) and h *= sign(gate).
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
from firmware_sim.weights import KERNEL, N_MAPS, SensorWeights

PAD = KERNEL // 2
POOL = 4
ROW_OFFSET = 5               # one row's sum of 5 taps, + 5 (>= 0)
CONV_OFFSET = KERNEL * ROW_OFFSET   # a 5x5 sum is stored + 25: 0..50, one byte per kernel

# Stages the packed path can return itself; others (the analog probes) are left to fast.py.
PACKED_STAGES = ("0_binarized_x", "3_thresholded_quantized", "4_hidden", "7_forget_gate_x")


# ----- tables ------------------------------------------------------------------------------------

def _row_sums(kernel_rows: np.ndarray) -> np.ndarray:
    """(K, 5) +-1 kernel rows -> (32, K) int64: for each 5-bit pattern (bit j: the input at column
    offset j - 2, 0 = -1), the row's sum of +-1 products + 5."""
    bits = (np.arange(32)[:, None] >> np.arange(KERNEL)[None, :]) & 1          # (32, 5)
    return (2 * bits - 1) @ kernel_rows.astype(np.int64).T + ROW_OFFSET


def _border_corrections(kernels: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """What the taps outside an h x w image add back, once the image is padded with bit 0 (= -1).

    Padding with -1 adds ``-w`` per outside tap where zero padding adds nothing, so the exact sum
    is the padded one plus ``sum(w)`` over the outside taps. Returned as ``rows`` (H, W, K): the
    taps whose row is outside (non-zero only in the 2 rows at each edge), and ``cols`` (H, W, K):
    the taps whose row is inside and column outside (non-zero only in the 2 columns at each edge).
    """
    k = kernels.shape[0]
    rows = np.zeros((h, w, k), dtype=np.int64)
    cols = np.zeros((h, w, k), dtype=np.int64)
    yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
    for dy in range(-PAD, PAD + 1):
        for dx in range(-PAD, PAD + 1):
            row_out = (yy + dy < 0) | (yy + dy >= h)
            col_out = (xx + dx < 0) | (xx + dx >= w)
            tap = kernels[:, dy + PAD, dx + PAD].astype(np.int64)
            rows += (row_out & np.ones_like(col_out))[..., None] * tap
            cols += (~row_out & col_out)[..., None] * tap
    return rows, cols


class _Conv:
    """A bank of K 5x5 +-1 kernels (K in {1, 2, 16}) as three look-up tables; K bytes per pixel.

    ``T01[p0 | p1 << 5]`` holds kernel rows 0 and 1's sums (+10) for the row patterns p0, p1;
    ``T23`` the same for rows 2 and 3; ``T4[p]`` row 4's (+5). Their sum is the 5x5 sum + 25 with
    the image padded by -1; the border corrections make it the zero-padded sum.
    """

    def __init__(self, kernels: np.ndarray) -> None:
        kernels = np.asarray(kernels)
        self.kernels = kernels
        self.k = kernels.shape[0]
        rows = [_row_sums(kernels[:, r, :]) for r in range(KERNEL)]
        pair = [(rows[a][None, :, :] + rows[b][:, None, :]).reshape(1024, self.k)   # [p1, p0]
                for a, b in ((0, 1), (2, 3))]
        self.word = {1: np.uint8, 2: np.uint16, 16: np.uint64}[self.k]
        # One entry = a row of plain words: np.take copies whole rows, the adds are per word (SWAR:
        # every byte stays in 0..50, so no carry crosses into the next kernel's byte).
        self.t01, self.t23, self.t4 = (np.ascontiguousarray(t.astype(np.uint8)).view(self.word)
                                       for t in (pair[0], pair[1], rows[4]))
        self._corr: dict = {}
        self._buffers: dict = {}

    def correction(self, h: int, w: int) -> np.ndarray:
        """The border correction (H, W, K) as uint8 addends (mod 256: the sum wraps back into 0..50)."""
        key = (h, w)
        if key not in self._corr:
            rows, cols = _border_corrections(self.kernels, h, w)
            self._corr[key] = ((rows + cols) % 256).astype(np.uint8)
        return self._corr[key]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype, *, zero: bool = False) -> np.ndarray:
        """Reused work arrays: fresh megabyte temporaries cost page faults on every call."""
        key = (name, shape)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) > 32:
                self._buffers.clear()
            buf = self._buffers[key] = (np.zeros if zero else np.empty)(shape, dtype)
        return buf

    def __call__(self, bits: np.ndarray) -> np.ndarray:
        """(F, H, W) 0/1 uint8 -> (F, H, W, K) uint8: each kernel's zero-padded 5x5 sum + 25.

        The result is a reused buffer: valid until the next call with the same shapes.
        """
        f, h, w = bits.shape
        hp, wp = h + 2 * PAD, w + 2 * PAD
        # zero border (bit 0 = -1; the correction below makes it add nothing): written once
        padded = self._buffer("padded", (f, hp, wp), np.uint8, zero=True)
        padded[:, PAD:PAD + h, PAD:PAD + w] = bits
        # 5-bit row patterns on the flat padded image: contiguous ops; the last 4 columns of each
        # padded row (which would mix in the next row) are never read
        flat = padded.reshape(-1)
        n = flat.size - (KERNEL - 1)
        rows = self._buffer("rows", (f * hp * wp,), np.uint8)
        r = rows[:n]
        np.add(flat[4:4 + n], flat[4:4 + n], out=r)          # doubling: numpy's add is SIMD, shifts are not
        for j in (3, 2, 1):
            np.bitwise_or(r, flat[j:j + n], out=r)
            np.add(r, r, out=r)
        np.bitwise_or(r, flat[0:n], out=r)
        low = self._buffer("low", (f, hp, wp), np.uint16)
        high = self._buffer("high", (f, hp, wp), np.uint16)
        np.copyto(low.reshape(-1), rows)
        np.multiply(low, 32, out=high, dtype=np.uint16)
        shape = (f, h, w)
        sums = None
        for i, (a, b, table) in enumerate(((0, 1, self.t01), (2, 3, self.t23), (4, None, self.t4))):
            idx = self._buffer(f"idx{i}", shape, np.intp)
            if b is None:
                np.copyto(idx, low[:, a:a + h, :w])
            else:
                np.bitwise_or(low[:, a:a + h, :w], high[:, b:b + h, :w], out=idx)
            out = self._buffer(f"take{i}", shape + table.shape[1:], self.word)
            np.take(table, idx, axis=0, out=out, mode="clip")
            if sums is None:
                sums = out
            else:
                sums += out
        result = sums.view(np.uint8).reshape(shape + (self.k,))
        result += self.correction(h, w)
        return result


class PackedProgram:
    """The sensor program for one set of weights, compiled to look-up tables."""

    def __init__(self, weights: SensorWeights) -> None:
        self.weights = weights
        self.conv1 = _Conv(weights.conv1)
        self.w_fi, self.w_fh = _DirectConv(weights.w_fi), _DirectConv(weights.w_fh)
        self.w_oi = [_DirectConv(k) for k in weights.w_oi]     # one per output kernel pair
        self.w_oh = [_DirectConv(k) for k in weights.w_oh]
        layout = weights.layout
        self.plain_readout = layout.bits == 8 and layout.pool == 1     # the ADC level of o itself
        t1 = weights.thresh1
        # pooled = max(conv, 0) >= thresh1, in the +25 offset domain (uint8 compare)
        self.pool_thr = 0 if t1 <= 0 else int(min(CONV_OFFSET + math.ceil(t1), 255))
        # gate: fi + fh >= thr  <=>  fi + fh >= ceil(thr), an int8 compare (|fi + fh| <= 50)
        self.gate_thr = int(min(max(math.ceil(weights.rnn_threshold), -51), 51))
        self.readout_lut = encode_analog(np.arange(-50, 51, dtype=np.float64))     # o + 50 -> level

    def readout(self, o_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact integer o (N, K, H, W) int16, no output perturbation -> (levels, output) of the
        layout: one table look-up for the authors' 8-bit unpooled readout, else the fast path's
        ``pool_maps`` and ``quantize``."""
        if self.plain_readout:
            return self.readout_lut[o_int + 50], o_int
        layout = self.weights.layout
        o = layout.pool_maps(o_int.astype(np.float64))
        return layout.quantize(o), o

    def pooled(self, bits: np.ndarray) -> np.ndarray:
        """(F, H, W) 0/1 input -> 4x4 max of conv1 (+25), (F, H/4, W/4, 16) uint8 (before ReLU)."""
        s = self.conv1(bits)                                  # (F, H, W, 16)
        f, h, w, k = s.shape
        # rows: maxima of whole rows (contiguous runs of W * 16 bytes)
        s = s.reshape(f, h // POOL, POOL, w * k)
        m = np.maximum(s[:, :, 0:2], s[:, :, 2:4])
        m = np.maximum(m[:, :, 0], m[:, :, 1])                # (F, H/4, W * 16)
        # columns: maxima of the flat array and its copies shifted by 1 and 2 pixels, then every
        # 4th pixel (a block's first column holds the block's maximum)
        flat = m.reshape(-1)
        a = np.maximum(flat[:-k], flat[k:])
        b = np.maximum(a[:-2 * k], a[2 * k:])
        full = np.empty_like(flat)
        full[:b.size] = b
        return full.reshape(f, h // POOL, w // POOL, POOL, k)[:, :, :, 0]

    def quantize(self, pooled: np.ndarray, noise: np.ndarray | None, sigma: float) -> np.ndarray:
        """(F, h, w, 16) pooled (+25) -> the x_t mosaic (F, 4h, 4w) as 0/1 uint8.

        ``noise``: (F, 16, h, w) standard normals (the fast path's layout) or None.
        """
        if noise is None:
            q = pooled >= self.pool_thr
        else:
            p = np.maximum(pooled.astype(np.float64) - CONV_OFFSET, 0.0)    # exact ReLU'd integers
            pre = p + sigma * np.moveaxis(noise, 1, -1)
            q = (pre - self.weights.thresh1) >= 0
        q = q.view(np.uint8)
        f, h, w, _ = q.shape
        # map k = 4 * kc + kr sits at tile row kr, tile column kc (firmware_sim.mosaic)
        return q.reshape(f, h, w, 4, 4).transpose(0, 4, 1, 3, 2).reshape(f, 4 * h, 4 * w)


class _DirectConv:
    """One 5x5 +-1 kernel on int8 +-1 planes (zero-padded by 2): 25 shifted adds of the flat array.

    For one kernel this beats the look-up tables (whose gathers cost ~2 ns per pixel): int8 adds are
    SIMD. Sums stay in [-25, 25].
    """

    def __init__(self, kernel: np.ndarray) -> None:
        self.taps = [(dy, dx, int(kernel[dy + PAD, dx + PAD]))
                     for dy in range(-PAD, PAD + 1) for dx in range(-PAD, PAD + 1)]

    def __call__(self, padded: np.ndarray, out: np.ndarray, first: int = 0, last: int | None = None) -> None:
        """Frames [first, last) of ``padded`` (F, H + 4, W + 4) int8 -> ``out`` (same shape) int8:
        the sum at every interior element (the 2-element border of ``out`` is left undefined)."""
        f, hp, wp = padded.shape
        size = hp * wp
        last = f if last is None else last
        src, dst = padded.reshape(-1), out.reshape(-1)
        lo, hi = first * size + PAD * wp + PAD, last * size - PAD * wp - PAD
        acc = dst[lo:hi]
        for i, (dy, dx, sign) in enumerate(self.taps):
            off = dy * wp + dx
            tap = src[lo + off:hi + off]
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
    """The compiled tables for ``weights`` (cached by program hash; a few kB each)."""
    key = weights.program_hash()
    prog = _PROGRAMS.get(key)
    if prog is None:
        if len(_PROGRAMS) > 16:
            _PROGRAMS.clear()
        prog = _PROGRAMS[key] = PackedProgram(weights)
    return prog


def run_clips(binary: np.ndarray, weights: SensorWeights, *, noise: NoiseModel | None = None,
              rng: np.random.Generator | None = None, stages: tuple[str, ...] = (),
              chunk: int = 32, frame_chunk: int = 8) -> SensorResult:
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


def _draw(rng, noise: NoiseModel, n: int, t: int, h: int, w: int, read_steps: tuple[int, ...], k: int):
    """The fast path's draws for n clips, clip by clip in its order: conv (16, T, h/4, w/4), then
    for each frame its gate (h, w) and, in a read-out frame, right after it the output (K, h, w).
    One call: a Generator's normals are a stream. Returns conv, a list of T gate views (n, h, w)
    and a list of one output view (n, K, h, w) per read-out frame (None where that noise is off)."""
    conv_size = N_MAPS * t * (h // POOL) * (w // POOL) if noise.conv_sigma else 0
    gate_size = h * w if noise.gate_sigma else 0
    out_size = k * h * w if noise.out_sigma else 0
    total = conv_size + t * gate_size + len(read_steps) * out_size
    if not total:
        return None, None, None
    z = rng.standard_normal((n, total))
    conv = z[:, :conv_size].reshape(n, N_MAPS, t, h // POOL, w // POOL) if conv_size else None
    gate, out = [], []
    at = conv_size
    for step in range(t):
        gate.append(z[:, at:at + gate_size].reshape(n, h, w) if gate_size else None)
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
    z_conv, z_gate, z_out = _draw(rng, noise, n, t, h, w, read_steps, k_out)
    out: dict[str, np.ndarray] = {}
    bits = (binary > 0).view(np.uint8)
    if "0_binarized_x" in stages:
        out["0_binarized_x"] = encode_binary(binary)

    # conv1, ReLU, pool, threshold, mosaic: frames in small groups (clip-major order)
    frames = bits.reshape(n * t, h, w)
    x = np.empty((n * t, h, w), dtype=np.uint8)
    if z_conv is not None:
        z_frames = np.moveaxis(z_conv, 2, 1).reshape(n * t, N_MAPS, h // POOL, w // POOL)
    for s in range(0, n * t, frame_chunk):
        pooled = prog.pooled(frames[s:s + frame_chunk])
        x[s:s + frame_chunk] = prog.quantize(
            pooled, None if z_conv is None else z_frames[s:s + frame_chunk], noise.conv_sigma)
    x = x.reshape(n, t, h, w)
    if "3_thresholded_quantized" in stages:
        out["3_thresholded_quantized"] = np.where(x > 0, 255, 0).astype(np.uint8)

    # input halves of the recurrent convolutions (fi: every frame, all at once; oi: last frame)
    hp, wp = h + 2 * PAD, w + 2 * PAD
    inner = (slice(None), slice(PAD, PAD + h), slice(PAD, PAD + w))
    xs = np.zeros((n * t, hp, wp), np.int8)
    np.subtract(x.reshape(n * t, h, w).view(np.int8) * np.int8(2), np.int8(1), out=xs[inner])
    fi_all = np.empty_like(xs)
    group = 64                                          # frames per pass: stays in cache
    for g in range(0, n * t, group):
        prog.w_fi(xs, fi_all, g, min(g + group, n * t))
    fi = fi_all.reshape(n, t, hp, wp)[:, :, PAD:PAD + h, PAD:PAD + w]
    r = len(read_steps)
    x_read = np.ascontiguousarray(xs.reshape(n, t, hp, wp)[:, list(read_steps)]).reshape(n * r, hp, wp)
    oi = []                                             # per output kernel: (n, R, hp, wp)
    for conv in prog.w_oi:
        oi.append(np.empty_like(x_read))
        conv(x_read, oi[-1])
        oi[-1] = oi[-1].reshape(n, r, hp, wp)

    hs = np.zeros((n, hp, wp), np.int8)                 # h as +-1 int8, zero border
    h_in = hs[inner]
    h_in[...] = 1                                       # h_0 = +1
    fh_buf = np.empty_like(hs)
    fh = fh_buf[inner]
    hid_seq = np.empty((n, t, h, w), np.uint8) if "4_hidden" in stages else None
    gate_seq = np.empty((n, t, h, w), np.uint8) if "7_forget_gate_x" in stages else None
    side_h, side_w = h // layout.pool, w // layout.pool
    levels = np.empty((n, r, k_out, side_h, side_w), np.uint8)
    output = np.empty(levels.shape, np.float32)
    perturbed = noise.out_gain != 1.0 or noise.out_sigma or noise.has_offset
    oh = np.empty_like(hs) if r else None
    i = 0
    for step in range(t):
        if hid_seq is not None:
            hid_seq[:, step] = h_in > 0
        prog.w_fh(hs, fh_buf)
        if z_gate is None:
            gate = np.add(fi[:, step], fh) >= prog.gate_thr       # exact: |fi + fh| <= 50
        else:
            pre = fi[:, step].astype(np.float64) + fh                      # exact integer fi + fh
            pre = pre + noise.gate_sigma * z_gate[step]
            gate = (pre - weights.rnn_threshold) >= 0
        if gate_seq is not None:
            gate_seq[:, step] = gate
        if i < r and step == read_steps[i]:
            o_int = np.empty((n, k_out, h, w), np.int16)
            for k in range(k_out):
                prog.w_oh[k](hs, oh)
                np.add(oi[k][:, i][inner], oh[inner], out=o_int[:, k], dtype=np.int16)   # exact oi + oh
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
            sign = gate.view(np.int8) * np.int8(2)
            sign -= np.int8(1)
            h_in *= sign                                 # keep (gate +1) or flip (gate -1)
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

    Per frame: conv1 by table look-ups, the x_t mosaic, fi and fh (25 int8 adds each), the gate as
    one int8 comparison, h *= sign(gate); in a read-out frame also the K oi / oh and the readout.
    Buffers are allocated once per frame size and reused.
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
            self._h[self._inner] = 1                      # h_0 = +1

    def _buffers(self, h: int, w: int) -> None:
        hp, wp = h + 2 * PAD, w + 2 * PAD
        self._inner = (slice(None), slice(PAD, PAD + h), slice(PAD, PAD + w))
        self._x = np.zeros((1, hp, wp), np.int8)          # x_t as +-1, zero border
        self._h = np.zeros((1, hp, wp), np.int8)          # h as +-1, zero border
        self._fi, self._fh, self._o = (np.empty((1, hp, wp), np.int8) for _ in range(3))
        self._oh = np.empty((1, hp, wp), np.int8)
        self._size = (h, w)
        self._h[self._inner] = 1

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
        bits = (frame > 0).view(np.uint8)[None]
        x = prog.quantize(prog.pooled(bits), None, 0.0)              # (1, H, W) 0/1
        np.subtract(x.view(np.int8) * np.int8(2), np.int8(1), out=self._x[inner])
        prog.w_fi(self._x, self._fi)
        prog.w_fh(self._h, self._fh)
        gate = np.add(self._fi[inner], self._fh[inner]) >= prog.gate_thr
        self.step += 1
        if self.step in self._read:
            self._levels.append(self._readout())
        if self.step < self.weights.timesteps:
            sign = gate.view(np.int8) * np.int8(2)
            sign -= np.int8(1)
            self._h[inner] *= sign                                    # keep (gate +1) or flip (-1)
            return None
        levels = np.concatenate(self._levels)
        self.reset()
        return levels[0] if self.weights.layout.is_authors else levels

    def _readout(self) -> np.ndarray:
        """The read-out frame's (K, S, S) levels from o = oi + oh (exact integers)."""
        prog, inner = self._prog, self._inner
        h, w = self._size
        o_int = np.empty((prog.weights.channels, h, w), np.int16)
        for k in range(prog.weights.channels):
            prog.w_oi[k](self._x, self._o)
            prog.w_oh[k](self._h, self._oh)
            np.add(self._o[inner][0], self._oh[inner][0], out=o_int[k], dtype=np.int16)
        return prog.readout(o_int[None])[0][0]
