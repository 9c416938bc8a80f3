"""The in-pixel layers' training kernels on a CPU (numba): the first layer and the gate recurrence.

**First layer.** For +-1 input x and +-1 5x5 kernels, ``relu(max_pool4(conv5x5(x, w)))`` is integer
arithmetic on bits: the 8x8 neighbourhood of a 4x4 pool window (padding 2) is one 64-bit word, each
of the window's 16 phases p reads the 25 of its bits in a mask M_p, and a phase's sum for kernel k
is ``|m| - 2 * popcount((nb ^ W_{p,k}) & m)`` with ``m = M_p & (the in-image bits)``: agreeing bits
count +1, the others -1, the zero padding nothing. Those are the exact integers that
:class:`pixelrnn.model._ConvReluPool` gets from float GEMMs, at a fraction of the work, and the
window's maximum and first argmax follow as in PyTorch's max-pool. The backward takes each window's
gradient to its argmax phase's 25 taps: the weight gradient, and (when theta0 is learned) the
gradient through the kernel to the input binarization's surrogate derivative, a window at a time
with 8-lane fused multiply-adds, never forming a full-resolution map.

**Recurrence.** ``z_t = W_fi * x_t + W_fh * h_t (+ n_t) - thr``, ``h_{t+1} = sign(z_t) h_t``: the two
convolutions of +-1 maps by popcount in the same way, then the same float32 operations in the same
order as :class:`pixelrnn.model._Recurrence`, so every gate is identical. Its backward runs the
chain rule a step at a time with the convolutions as vectorised loops (the transposed ones as
correlations with the flipped kernels).

Every kernel is a plain nogil function over a range of frames or clips; the wrappers split the work
over threads themselves (numba's own threading layers either refuse calls from several Python threads
at once or bring their own OpenMP). :mod:`pixelrnn.model` uses them on a CPU when numba is installed
(the ``[train]`` extra) and ``PIXELRNN_KERNELS`` is not ``torch``, and its PyTorch path otherwise:
the same forward values and decisions, gradients equal up to float32 summation order.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # an optional speed-up: the [train] extra installs numba, the model runs without it
    import numba
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

__all__ = ["ENV", "available", "all_pm1", "lookup", "conv_relu_pool", "conv_relu_pool_backward", "threshold_mosaic",
           "threshold_mosaic_backward", "recurrence", "recurrence_backward"]

ENV = "PIXELRNN_KERNELS"          # "torch": use the PyTorch path even where numba is installed
POOL = 4
KERNEL = 5


def available() -> bool:
    """True when the kernels can run: numba is importable and ``PIXELRNN_KERNELS`` is not ``torch``."""
    return numba is not None and os.environ.get(ENV, "").strip().lower() != "torch"


def _jit(**options):
    """``njit(nogil=True, cache=True)``, or without the on-disk cache where numba finds no writable
    place for it (a read-only install): then each process compiles once, a few seconds."""
    def decorate(fn):
        try:
            return njit(nogil=True, cache=True, **options)(fn)
        except RuntimeError:
            return njit(nogil=True, **options)(fn)
    return decorate


if numba is not None:
    @intrinsic
    def _popcount(typingctx, x):
        """LLVM's ctpop on a uint64 (one instruction where the CPU has POPCNT)."""
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
            return builder.call(fn, args)
        return sig, codegen

    @_jit()
    def _count_not_pm1(x):
        bad = 0
        for v in x.flat:            # any strides
            if v != 1.0 and v != -1.0:
                bad += 1
        return bad

    @_jit()
    def _valid_masks(hb, wb, h, w):
        """(hb, wb) uint64: the neighbourhood bits of each block that lie inside the image."""
        vm = np.zeros((hb, wb), np.uint64)
        for i in range(hb):
            for j in range(wb):
                m = np.uint64(0)
                for dy in range(8):
                    y = POOL * i + dy - 2
                    for dx in range(8):
                        xx = POOL * j + dx - 2
                        if 0 <= y < h and 0 <= xx < w:
                            m |= np.uint64(1) << np.uint64(8 * dy + dx)
                vm[i, j] = m
        return vm

    @_jit()
    def _forward(x, wbits, masks, vm, f0, f1, pooled, arg):
        """Frames f0..f1 of x (F, H, W) +-1 -> pooled (F, H/4, W/4, K) (relu'd maxima), arg (first argmax)."""
        h, w = x.shape[1], x.shape[2]
        hb, wb = h // POOL, w // POOL
        k_n = wbits.shape[1]
        buf = np.zeros((h + 4, w + 4), np.uint8)
        masked = np.zeros(POOL * POOL, np.uint64)
        base = np.zeros(POOL * POOL, np.int64)
        for f in range(f0, f1):
            for y in range(h):
                for xx in range(w):
                    buf[y + 2, xx + 2] = 1 if x[f, y, xx] > 0 else 0
            for i in range(hb):
                for j in range(wb):
                    nb = np.uint64(0)
                    for dy in range(8):
                        for dx in range(8):
                            nb |= np.uint64(buf[POOL * i + dy, POOL * j + dx]) << np.uint64(8 * dy + dx)
                    v_m = vm[i, j]
                    for p in range(POOL * POOL):
                        masked[p] = masks[p] & v_m
                        base[p] = np.int64(_popcount(masked[p])) * 16 + 15 - p
                    for k in range(k_n):
                        # key = 16 v + 15 - p: its maximum over the phases is the window's maximum v
                        # and, among equal maxima, the first phase (branch-free, as in the GEMM path)
                        best = np.int64(-1 << 20)
                        for p in range(POOL * POOL):
                            best = max(best, base[p] - 32 * np.int64(_popcount((nb ^ wbits[p, k]) & masked[p])))
                        v = best >> 4
                        pooled[f, i, j, k] = np.float32(v if v > 0 else 0)
                        arg[f, i, j, k] = 15 - (best & 15)

    @_jit()
    def _threshold_mosaic(pooled, noise, has_noise, sigma, thr, f0, f1, z, xm):
        """Frames f0..f1: z[f, k, i, j] = (pooled (+ noise . sigma)) - thr in float32, in the model's
        order, and xm (F, 4 hb, 4 wb) = sign(z) tiled: map k at tile row k % 4, column k // 4."""
        hb, wb, k_n = pooled.shape[1], pooled.shape[2], pooled.shape[3]
        for f in range(f0, f1):
            for k in range(k_n):
                r0, c0 = (k % POOL) * hb, (k // POOL) * wb
                for i in range(hb):
                    for j in range(wb):
                        v = pooled[f, i, j, k]
                        if has_noise:
                            v = v + noise[f, k, i, j] * sigma
                        v = v - thr
                        z[f, k, i, j] = v
                        xm[f, r0 + i, c0 + j] = 1.0 if v >= 0 else -1.0

    @_jit()
    def _threshold_mosaic_backward(grad, sur, f0, f1, g, total, slot):
        """Frames f0..f1: g[f, k, i, j] = grad[f, mosaic position of (k, i, j)] . sur[f, k, i, j];
        total[slot] += their sum (float64)."""
        k_n, hb, wb = sur.shape[1], sur.shape[2], sur.shape[3]
        acc = 0.0
        for f in range(f0, f1):
            for k in range(k_n):
                r0, c0 = (k % POOL) * hb, (k // POOL) * wb
                for i in range(hb):
                    for j in range(wb):
                        v = grad[f, r0 + i, c0 + j] * sur[f, k, i, j]
                        g[f, k, i, j] = v
                        acc += v
        total[slot] += acc

    @_jit()
    def _lookup(levels, table_a, table_b, two, a0, a1, out_a, out_b):
        """Elements a0..a1 of the flat uint8 ``levels``: out_a = table_a[level] (and out_b = table_b[level])."""
        for i in range(a0, a1):
            v = levels[i]
            out_a[i] = table_a[v]
            if two:
                out_b[i] = table_b[v]

    @intrinsic
    def _axpy8(typingctx, a, ia, b, ib, g):
        """a[ia:ia+8] += g * b[ib:ib+8] on 1-D contiguous float32 arrays, as one 8-lane fused
        multiply-add (numba leaves these short scattered rows scalar); no bounds check."""
        sig = types.void(a, ia, b, ib, g)

        def codegen(context, builder, signature, args):
            a_v, ia_v, b_v, ib_v, g_v = args
            data_a = context.make_array(signature.args[0])(context, builder, a_v).data
            data_b = context.make_array(signature.args[2])(context, builder, b_v).data
            vec = ir.VectorType(ir.FloatType(), 8)
            pa = builder.bitcast(builder.gep(data_a, [ia_v]), vec.as_pointer())
            pb = builder.bitcast(builder.gep(data_b, [ib_v]), vec.as_pointer())
            lane0 = builder.insert_element(ir.Constant(vec, ir.Undefined), g_v, ir.Constant(ir.IntType(32), 0))
            splat = builder.shuffle_vector(lane0, ir.Constant(vec, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                                 "llvm.fma.v8f32")
            out = builder.call(fma, [splat, builder.load(pb, align=4), builder.load(pa, align=4)])
            builder.store(out, pa, align=4)
            return context.get_dummy_value()
        return sig, codegen

    @_jit()
    def _backward(x, s, need_theta, grad, pooled, arg, f0, f1, dw, ds, slot):
        """Frames f0..f1: dw[slot] (K, 5, 8) += sum of each window's gradient times its argmax
        phase's 5x8 patch of x (columns 5..7 unused); ds[slot] likewise with the surrogate s (the
        caller contracts it with the kernels: theta0's gradient). ``grad`` is (F, K, H/4, W/4) (any
        strides), ``pooled``/``arg`` (F, H/4, W/4, K). One frame's sums in float32, then float64."""
        h, w = x.shape[1], x.shape[2]
        hb, wb = h // POOL, w // POOL
        k_n = dw.shape[1]
        row = w + 7                                      # zero border; 3 more columns for 8-wide rows
        xp = np.zeros((h + 4) * row, np.float32)
        sp = np.zeros((h + 4) * row, np.float32)
        acc = np.zeros(k_n * KERNEL * 8, np.float32)
        sacc = np.zeros(k_n * KERNEL * 8, np.float32)
        for f in range(f0, f1):
            for y in range(h):
                for xx in range(w):
                    xp[(y + 2) * row + xx + 2] = x[f, y, xx]
                    if need_theta:
                        sp[(y + 2) * row + xx + 2] = s[f, y, xx]
            acc[:] = 0.0
            sacc[:] = 0.0
            for i in range(hb):
                for j in range(wb):
                    for k in range(k_n):
                        if pooled[f, i, j, k] <= 0:          # relu': no gradient below zero
                            continue
                        g = grad[f, k, i, j]
                        if g == 0:
                            continue
                        p = arg[f, i, j, k]
                        base = (POOL * i + p // POOL) * row + POOL * j + p % POOL
                        for dy in range(KERNEL):
                            _axpy8(acc, (k * KERNEL + dy) * 8, xp, base + dy * row, g)
                        if need_theta:
                            for dy in range(KERNEL):
                                _axpy8(sacc, (k * KERNEL + dy) * 8, sp, base + dy * row, g)
            for k in range(k_n):
                for dy in range(KERNEL):
                    for dx in range(8):
                        dw[slot, k, dy, dx] += acc[(k * KERNEL + dy) * 8 + dx]
                        ds[slot, k, dy, dx] += sacc[(k * KERNEL + dy) * 8 + dx]

    @_jit()
    def _recurrence_forward(x, wfi, wfh, masks, vm, noise, has_noise, sigma, thr, c0, c1, hs, zs):
        """Clips c0..c1: z_t = (W_fi * x_t + W_fh * h_t) (+ n_t . sigma) - thr, h_{t+1} = sign(z_t) h_t from
        h_0 = +1, in float32 in the order of the PyTorch path; hs (B, G+1, H, W), zs (B, G, H, W).
        ``wfi``/``wfh`` are the (16,) phase bits of the two kernels (:func:`_weight_bits`)."""
        g, h, w = x.shape[1], x.shape[2], x.shape[3]
        hb, wb = h // POOL, w // POOL
        xb = np.zeros((h + 4, w + 4), np.uint8)
        hbits = np.zeros((h + 4, w + 4), np.uint8)
        for c in range(c0, c1):
            for y in range(h):
                for xx in range(w):
                    hs[c, 0, y, xx] = 1.0
                    hbits[y + 2, xx + 2] = 1
            for t in range(g):
                for y in range(h):
                    for xx in range(w):
                        xb[y + 2, xx + 2] = 1 if x[c, t, y, xx] > 0 else 0
                for i in range(hb):
                    for j in range(wb):
                        nx = np.uint64(0)
                        nh = np.uint64(0)
                        for dy in range(8):
                            for dx in range(8):
                                bit = np.uint64(8 * dy + dx)
                                nx |= np.uint64(xb[POOL * i + dy, POOL * j + dx]) << bit
                                nh |= np.uint64(hbits[POOL * i + dy, POOL * j + dx]) << bit
                        v_m = vm[i, j]
                        for p in range(POOL * POOL):
                            m = masks[p] & v_m
                            total = 2 * np.int64(_popcount(m)) - 2 * np.int64(_popcount((nx ^ wfi[p]) & m)) \
                                - 2 * np.int64(_popcount((nh ^ wfh[p]) & m))
                            y = POOL * i + p // POOL
                            xx = POOL * j + p % POOL
                            z = np.float32(total)
                            if has_noise:
                                z = z + noise[c, t, y, xx] * sigma
                            zs[c, t, y, xx] = z - thr
                for y in range(h):
                    for xx in range(w):
                        hv = hs[c, t, y, xx] if zs[c, t, y, xx] >= 0 else -hs[c, t, y, xx]
                        hs[c, t + 1, y, xx] = hv
                        hbits[y + 2, xx + 2] = 1 if hv > 0 else 0

    @_jit(fastmath=True)
    def _flipped_correlation(gzp, wflip, out):
        """out (H, W) = the transposed 5x5 convolution of the zero-bordered (H+4, W+4) gzp, as a
        correlation with the flipped kernel ``wflip`` (offsets >= 0 keep the loops vectorised)."""
        h, w = out.shape
        for y in range(h):
            for xx in range(w):
                out[y, xx] = 0.0
        for tap in range(KERNEL * KERNEL):
            dy, dx = tap // KERNEL, tap % KERNEL
            wv = wflip[dy, dx]
            for y in range(h):
                for xx in range(w):
                    out[y, xx] += wv * gzp[y + dy, xx + dx]

    @_jit(fastmath=True)
    def _recurrence_backward(x, hs, zs, sur, grad, keep, wfi, wfh, need_gx, gx, c0, c1, dw, dthr, slot):
        """Clips c0..c1 of the recurrence's chain rule, a step at a time from the last: gz = gh . h_t
        . sur_t; the kernels' gradients (gz correlated with x_t and h_t), thr's (-sum gz), x_t's
        (gz through W_fi transposed) and h_t's (gh . sign(z_t) + gz through W_fh transposed).
        ``grad`` (B, R, H, W) is the gradient of the kept states h_keep[r]; ``wfi``/``wfh`` are the
        kernels flipped (rows and columns reversed); dw[slot] is (2, 5, 5) (W_fi, W_fh)."""
        g, h, w = zs.shape[1], zs.shape[2], zs.shape[3]
        gh = np.zeros((h, w), np.float32)
        gzp = np.zeros((h + 4, w + 4), np.float32)
        xp = np.zeros((h + 4, w + 4), np.float32)
        hp = np.zeros((h + 4, w + 4), np.float32)
        back = np.zeros((h, w), np.float32)
        acc = np.zeros((2, KERNEL * KERNEL, w), np.float32)
        for c in range(c0, c1):
            gh[:] = 0.0
            acc[:] = 0.0
            part = 0.0
            for t in range(g - 1, -1, -1):
                for r in range(keep.shape[0]):
                    if keep[r] == t + 1:
                        for y in range(h):
                            for xx in range(w):
                                gh[y, xx] += grad[c, r, y, xx]
                rowsum = 0.0
                for y in range(h):
                    for xx in range(w):
                        gz = gh[y, xx] * hs[c, t, y, xx] * sur[c, t, y, xx]
                        gzp[y + 2, xx + 2] = gz
                        rowsum += gz
                        xp[y + 2, xx + 2] = x[c, t, y, xx]
                        hp[y + 2, xx + 2] = hs[c, t, y, xx]
                part += rowsum
                for tap in range(KERNEL * KERNEL):     # 2-D indexing, one array per loop: vectorised
                    dy, dx = tap // KERNEL, tap % KERNEL
                    for y in range(h):
                        for xx in range(w):
                            acc[0, tap, xx] += gzp[y + 2, xx + 2] * xp[y + dy, xx + dx]
                    for y in range(h):
                        for xx in range(w):
                            acc[1, tap, xx] += gzp[y + 2, xx + 2] * hp[y + dy, xx + dx]
                # the transposed convolutions: h's gradient, then x's (straight into gx)
                _flipped_correlation(gzp, wfh, back)
                for y in range(h):
                    for xx in range(w):
                        gh[y, xx] = (gh[y, xx] if zs[c, t, y, xx] >= 0 else -gh[y, xx]) + back[y, xx]
                if need_gx:
                    _flipped_correlation(gzp, wfi, gx[c, t])
            for ch in range(2):
                for tap in range(KERNEL * KERNEL):
                    v = 0.0
                    for xx in range(w):
                        v += acc[ch, tap, xx]
                    dw[slot, ch, tap // KERNEL, tap % KERNEL] += v
            dthr[slot] -= part


@functools.lru_cache(maxsize=16)
def _masks() -> np.ndarray:
    """(16,) uint64: the neighbourhood bits phase p = r*4 + c of a pool window reads (rows r..r+4,
    columns c..c+4 of the 8x8)."""
    m = np.zeros(POOL * POOL, np.uint64)
    for r in range(POOL):
        for c in range(POOL):
            for dy in range(KERNEL):
                for dx in range(KERNEL):
                    m[r * POOL + c] |= np.uint64(1) << np.uint64((r + dy) * 8 + c + dx)
    return m


def _weight_bits(w: np.ndarray) -> np.ndarray:
    """(K, 5, 5) +-1 kernels -> (16 phases, K) uint64: bit (r+dy)*8 + c+dx set where w[k, dy, dx] = +1."""
    k_n = w.shape[0]
    pos = (w.reshape(k_n, KERNEL * KERNEL) > 0).astype(np.uint64)          # (K, 25)
    out = np.zeros((POOL * POOL, k_n), np.uint64)
    for r in range(POOL):
        for c in range(POOL):
            shifts = np.array([(r + dy) * 8 + c + dx for dy in range(KERNEL) for dx in range(KERNEL)], np.uint64)
            out[r * POOL + c] = np.bitwise_or.reduce(pos << shifts, axis=1)
    return out


def _ranges(n: int, threads: int) -> list[tuple[int, int]]:
    threads = max(1, min(threads, n))
    cuts = [n * t // threads for t in range(threads + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _run(fn, ranges: list[tuple[int, int]]) -> None:
    """fn(a, b, slot) for each range, the first on this thread and the others on helper threads."""
    if len(ranges) == 1:
        fn(*ranges[0], 0)
        return
    with ThreadPoolExecutor(max_workers=len(ranges) - 1, thread_name_prefix="pixelrnn.cpu_kernels") as pool:
        futures = [pool.submit(fn, a, b, slot) for slot, (a, b) in enumerate(ranges) if slot]
        fn(*ranges[0], 0)
        for fut in futures:
            fut.result()


def _require_numba() -> None:
    if numba is None:
        raise RuntimeError(f"pixelrnn.cpu_kernels needs numba (pip install numba), or set {ENV}=torch")


def _check(x: np.ndarray, w: np.ndarray) -> None:
    _require_numba()
    if x.ndim != 3 or x.dtype != np.float32 or x.shape[1] % POOL or x.shape[2] % POOL:
        raise ValueError(f"x must be float32 (frames, H, W) with H and W multiples of {POOL}, "
                         f"got {x.dtype} {x.shape}")
    if w.ndim != 3 or w.shape[1:] != (KERNEL, KERNEL):
        raise ValueError(f"w must be (kernels, {KERNEL}, {KERNEL}), got {w.shape}")


def all_pm1(x: np.ndarray) -> bool:
    """True when every value of the float32 array x is exactly +1 or -1 (what these kernels take)."""
    _require_numba()
    return _count_not_pm1(np.asarray(x)) == 0


def lookup(*, levels: np.ndarray, tables: tuple[np.ndarray, ...], threads: int = 1) -> tuple[np.ndarray, ...]:
    """uint8 ``levels`` (any shape, C-contiguous) through one or two float32 tables of 256 values ->
    that many float32 arrays of the levels' shape, in one pass: an elementwise function of a uint8
    frame (the input binarization and its surrogate) tabulated on its 256 values by PyTorch itself."""
    _require_numba()
    if levels.dtype != np.uint8:
        raise ValueError(f"levels must be uint8, got {levels.dtype}")
    if not 1 <= len(tables) <= 2 or any(t.shape != (256,) or t.dtype != np.float32 for t in tables):
        raise ValueError(f"tables must be one or two float32 arrays of 256 values, got "
                         f"{[(t.dtype, t.shape) for t in tables]}")
    flat = np.ascontiguousarray(levels).reshape(-1)
    outs = [np.empty(flat.size, np.float32) for _ in tables]
    a, b = tables if len(tables) == 2 else (tables[0], tables[0])
    out_b = outs[1] if len(tables) == 2 else outs[0]
    _run(lambda s0, s1, _slot: _lookup(flat, a, b, len(tables) == 2, s0, s1, outs[0], out_b),
         _ranges(flat.size, threads))
    return tuple(o.reshape(levels.shape) for o in outs)


def conv_relu_pool(*, x: np.ndarray, w: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """+-1 frames x (F, H, W) float32 and +-1 kernels w (K, 5, 5) -> (pooled, arg), both
    (F, H/4, W/4, K): ``relu(max_pool4(conv5x5(x, w, padding=2)))`` as float32 and the first
    argmax phase r*4 + c of each window (uint8). The caller checks that x and w are +-1
    (:func:`all_pm1`); other values would be read as their sign."""
    _check(x, w)
    x = np.ascontiguousarray(x)
    n, h, wd = x.shape
    k_n = w.shape[0]
    pooled = np.empty((n, h // POOL, wd // POOL, k_n), np.float32)
    arg = np.empty((n, h // POOL, wd // POOL, k_n), np.uint8)
    wbits, masks, vm = _weight_bits(np.asarray(w)), _masks(), _valid_masks(h // POOL, wd // POOL, h, wd)
    _run(lambda a, b, _slot: _forward(x, wbits, masks, vm, a, b, pooled, arg), _ranges(n, threads))
    return pooled, arg


def conv_relu_pool_backward(*, x: np.ndarray, w: np.ndarray, grad: np.ndarray, pooled: np.ndarray,
                            arg: np.ndarray, s: np.ndarray | None = None,
                            threads: int = 1) -> tuple[np.ndarray, float]:
    """The gradient of :func:`conv_relu_pool`'s output -> (dw (K, 5, 5) float64, d/d(shift)).

    ``grad`` is the output's gradient as (F, K, H/4, W/4) (any strides); ``pooled``/``arg`` are the
    forward's outputs. With ``s`` (the surrogate derivative of x = sign(v) w.r.t. v, (F, H, W)),
    the second value is sum over windows of gradient x (kernel . s at the argmax phase's taps):
    the gradient w.r.t. a shift added to v (theta0's is its negative); without ``s`` it is 0.
    Sums run in float32 per frame and float64 across frames."""
    _check(x, w)
    x = np.ascontiguousarray(x)
    n, h, wd = x.shape
    k_n = w.shape[0]
    if grad.shape != (n, k_n, h // POOL, wd // POOL):
        raise ValueError(f"grad must be ({n}, {k_n}, {h // POOL}, {wd // POOL}), got {grad.shape}")
    windows = (n, h // POOL, wd // POOL, k_n)
    if pooled.shape != windows or arg.shape != windows or arg.dtype != np.uint8:
        raise ValueError(f"pooled and arg must be conv_relu_pool's outputs {windows} (arg uint8), "
                         f"got {pooled.shape} and {arg.shape} {arg.dtype}")
    if s is not None and s.shape != x.shape:
        raise ValueError(f"s must have x's shape {x.shape}, got {s.shape}")
    need_theta = s is not None
    s = np.ascontiguousarray(s, dtype=np.float32) if need_theta else x
    ranges = _ranges(n, threads)
    dw = np.zeros((len(ranges), k_n, KERNEL, 8))
    ds = np.zeros((len(ranges), k_n, KERNEL, 8))
    grad = grad.astype(np.float32, copy=False)
    _run(lambda a, b, slot: _backward(x, s, need_theta, grad, pooled, arg, a, b, dw, ds, slot), ranges)
    # theta's shift: sum over windows of g * (w_k . s patch) = sum_k w_k . (the g-weighted s patches)
    dshift = float((ds.sum(0)[:, :, :KERNEL] * np.asarray(w, np.float64)).sum()) if need_theta else 0.0
    return dw.sum(0)[:, :, :KERNEL], dshift


def threshold_mosaic(*, pooled: np.ndarray, thr: float, noise: np.ndarray | None = None, sigma: float = 0.0,
                     threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The first layer's epilogue on :func:`conv_relu_pool`'s ``pooled`` (F, hb, wb, 16) -> (z, x):
    z = pooled (+ noise . sigma) - thr as (F, 16, hb, wb) float32 (the model's operations in its
    order, ``noise`` (F, 16, hb, wb) any strides), and x = sign(z) (sign(0) = +1) tiled into the
    (F, 4 hb, 4 wb) mosaic of :func:`pixelrnn.model.to_mosaic`."""
    _require_numba()
    if pooled.ndim != 4 or pooled.shape[3] != POOL * POOL or pooled.dtype != np.float32:
        raise ValueError(f"pooled must be float32 (frames, hb, wb, {POOL * POOL}), got {pooled.dtype} {pooled.shape}")
    n, hb, wb, k_n = pooled.shape
    if noise is not None and noise.shape != (n, k_n, hb, wb):
        raise ValueError(f"noise must be ({n}, {k_n}, {hb}, {wb}), got {noise.shape}")
    z = np.empty((n, k_n, hb, wb), np.float32)
    xm = np.empty((n, POOL * hb, POOL * wb), np.float32)
    nz = np.asarray(noise, dtype=np.float32) if noise is not None else z
    _run(lambda a, b, _slot: _threshold_mosaic(pooled, nz, noise is not None, np.float32(sigma), np.float32(thr),
                                               a, b, z, xm), _ranges(n, threads))
    return z, xm


def threshold_mosaic_backward(*, grad: np.ndarray, sur: np.ndarray, threads: int = 1) -> tuple[np.ndarray, float]:
    """The mosaic's gradient ``grad`` (F, 4 hb, 4 wb) and the quantizer's surrogate derivative at z,
    ``sur`` (F, 16, hb, wb) -> (z's gradient (F, 16, hb, wb), its sum). z's gradient is also the
    gradient of ``pooled`` (laid out as (F, 16, hb, wb)); thr's is minus the sum."""
    _require_numba()
    n, k_n, hb, wb = sur.shape
    if k_n != POOL * POOL or grad.shape != (n, POOL * hb, POOL * wb):
        raise ValueError(f"grad must be ({n}, {POOL * hb}, {POOL * wb}) and sur ({n}, {POOL * POOL}, hb, wb), "
                         f"got {grad.shape} and {sur.shape}")
    g = np.empty((n, k_n, hb, wb), np.float32)
    ranges = _ranges(n, threads)
    total = np.zeros(len(ranges))
    grad, sur = np.asarray(grad, dtype=np.float32), np.asarray(sur, dtype=np.float32)
    _run(lambda a, b, slot: _threshold_mosaic_backward(grad, sur, a, b, g, total, slot), ranges)
    return g, float(total.sum())


def recurrence(*, x: np.ndarray, w_fi: np.ndarray, w_fh: np.ndarray, thr: float, noise: np.ndarray | None = None,
               sigma: float = 1.0, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One gated chain over G steps: +-1 inputs x (B, G, H, W) float32, +-1 5x5 kernels, the gate
    threshold and optional gate normals (B, G, H, W), added times ``sigma`` (float32 products, as
    the model scales them) -> (hs (B, G+1, H, W) with h_0 = +1, zs (B, G,
    H, W) the gates' pre-activations). float32, in :class:`pixelrnn.model._Recurrence`'s order, so
    every gate is the same (the caller checks that x is +-1 with :func:`all_pm1`)."""
    _require_numba()
    if x.ndim != 4 or x.dtype != np.float32 or x.shape[2] % POOL or x.shape[3] % POOL:
        raise ValueError(f"x must be float32 (clips, steps, H, W) with H and W multiples of {POOL}, "
                         f"got {x.dtype} {x.shape}")
    for name, k in (("w_fi", w_fi), ("w_fh", w_fh)):
        if k.shape != (KERNEL, KERNEL):
            raise ValueError(f"{name} must be ({KERNEL}, {KERNEL}), got {k.shape}")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise must have x's shape {x.shape}, got {noise.shape}")
    b, g, h, w = x.shape                        # x and noise may be strided views (no copies)
    hs = np.empty((b, g + 1, h, w), np.float32)
    zs = np.empty((b, g, h, w), np.float32)
    wfi, wfh = _weight_bits(w_fi[None])[:, 0].copy(), _weight_bits(w_fh[None])[:, 0].copy()
    masks, vm = _masks(), _valid_masks(h // POOL, w // POOL, h, w)
    nz = np.asarray(noise, dtype=np.float32) if noise is not None else zs
    _run(lambda a, e, _slot: _recurrence_forward(x, wfi, wfh, masks, vm, nz, noise is not None, np.float32(sigma),
                                                 np.float32(thr), a, e, hs, zs), _ranges(b, threads))
    return hs, zs


def recurrence_backward(*, x: np.ndarray, hs: np.ndarray, zs: np.ndarray, sur: np.ndarray, grad: np.ndarray,
                        keep: tuple[int, ...], w_fi: np.ndarray, w_fh: np.ndarray, need_gx: bool = True,
                        threads: int = 1) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, float]:
    """The gradient of :func:`recurrence`'s kept states ``hs[:, keep]`` (``grad``, (B, R, H, W)) ->
    (x's gradient or None, W_fi's (5, 5), W_fh's (5, 5), thr's), given the forward's hs and zs and
    the gate surrogate's derivative ``sur`` at zs. Sums: float32 per clip, float64 across clips."""
    _require_numba()
    b, g, h, w = zs.shape
    if grad.shape != (b, len(keep), h, w):
        raise ValueError(f"grad must be ({b}, {len(keep)}, {h}, {w}), got {grad.shape}")
    if x.shape != zs.shape or hs.shape != (b, g + 1, h, w) or sur.shape != zs.shape:
        raise ValueError(f"x and sur must be zs's shape {zs.shape} and hs ({b}, {g + 1}, {h}, {w}), "
                         f"got {x.shape}, {sur.shape} and {hs.shape}")
    if any(not 0 <= k <= g for k in keep):
        raise ValueError(f"keep must index hs's {g + 1} states (0..{g}), got {tuple(keep)}")
    x, hs, zs, sur, grad = (np.asarray(a, dtype=np.float32) for a in (x, hs, zs, sur, grad))   # any strides
    gx = np.empty((b, g, h, w), np.float32) if need_gx else zs
    ranges = _ranges(b, threads)
    dw = np.zeros((len(ranges), 2, KERNEL, KERNEL))
    dthr = np.zeros(len(ranges))
    keep_a = np.asarray(keep, np.int64)
    wfi, wfh = (np.ascontiguousarray(k[::-1, ::-1], dtype=np.float32) for k in (w_fi, w_fh))
    _run(lambda a, e, slot: _recurrence_backward(x, hs, zs, sur, grad, keep_a, wfi, wfh, need_gx, gx, a, e,
                                                 dw, dthr, slot), ranges)
    total = dw.sum(0)
    return (gx if need_gx else None), total[0], total[1], float(dthr.sum())
