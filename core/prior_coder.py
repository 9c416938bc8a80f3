"""Lossless coding of 1-bit (or K-level) readouts under a learned Gated PixelCNN prior, numpy only.

The sensor sends one H x W readout per window (64 x 64 1-bit readouts are 512 raw bytes). A small
Gated PixelCNN (``pixelrnn.generative.gated.GatedPixelCNN``) trained on readouts gives
p(x_i | x_<i) for every pixel in raster order; an arithmetic coder (:mod:`core.arith`) under that
distribution spends about ``-log2 p(x)`` bits on the whole readout. This module is the torch-free
half: the edge device (numpy, no torch) loads a prior file and codes with it.

Pieces:

* :class:`GatedPriorNet` / :class:`GatedPriorSteps` -- the cached next-pixel logits of a Gated
  PixelCNN (vertical stack once per row, horizontal stack one column per pixel) on plain numpy
  weight matrices. The *only* implementation of that math: ``GatedStepper`` (sampling, torch
  side) builds the same matrices from a torch model (``gated_prior_arrays``) and delegates here.
* :func:`save_prior` / :func:`load_prior` -- the prior file: an ``.npz`` with a format tag, the
  integer metadata and the float64 weight matrices (see :func:`prior_shapes` for names/shapes).
* :class:`PriorCoder` -- ``encode(bits) -> payload``, ``decode(payload, shape=) -> bits``.

Payload: a 4-byte big-endian CRC32 of the raw symbols (uint8, row-major), then the arithmetic
code. The decoder recomputes the CRC over what it decoded, so a payload decoded with another prior
(or another floating-point stack, see below) raises :class:`PriorMismatch` instead of returning a
wrong readout.

Encoder and decoder must build bit-identical frequency tables, so both run one procedure,
:meth:`PriorCoder._code`: a float64 :class:`GatedPriorSteps` with batch size 1 stepping in raster
order, a float64 softmax, the quantisation of :func:`core.arith.quantize_probs` (for K = 2 a
scalar transcription of it that gives identical tables, see :func:`_binary_table`), then the coder.
The batch size is fixed at 1 because matrix-product kernels choose their blocking and summation
order by matrix size. Bit-identical float results are guaranteed only for the same numpy/BLAS
build and CPU kernel dispatch: encoder and decoder on different machines should run the same
build (the symbol CRC catches the case where they do not agree).

Cost: the coder is sequential, one numpy step of the prior plus one arithmetic-coder step per pixel.
A 64x64 window with a hidden=16, 4-layer prior takes about 0.15 s to encode and as long to decode
on one desktop core (float64, numpy only); it scales with H * W * layers. The decoder spends that
before it can check the CRC, so the packet layer checks shape and length first.
"""
from __future__ import annotations

import hashlib
import math
import struct
import zipfile
import zlib
from itertools import accumulate
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from core.arith import ArithmeticDecoder, ArithmeticEncoder, check_precision_bits, quantize_probs

FORMAT = "pixelrnn.edge.prior/v1"              # the format tag stored in prior files
HASH_TAG = b"pixelrnn.core.prior_coder/v1"
META_KEYS = ("num_classes", "hidden", "kernel", "layers")
LAYER_KEYS = ("v_w", "v_b", "h_w", "h_b", "link_w", "link_b", "out_w", "out_b")
HEAD_KEYS = ("head.w1", "head.b1", "head.w2", "head.b2")
CRC_BYTES = 4
DEFAULT_PRECISION_BITS = 16
MAX_SYMBOLS = 256                               # symbols are decoded as uint8
_FORMAT_KEY = "format"
_META_PREFIX = "meta."


class PriorMismatch(ValueError):
    """A payload whose decoded symbols fail its CRC: coded with another prior (or on a floating-point
    stack that rounds differently), or corrupted. Never a silently wrong readout."""


# --- metadata and array layout --------------------------------------------------------------------
def check_meta(meta) -> dict[str, int]:
    """``{num_classes, hidden, kernel, layers}`` (extra keys ignored) -> a dict of plain ints."""
    if not isinstance(meta, dict):
        raise ValueError(f"prior meta must be a dict with keys {', '.join(META_KEYS)}, got {type(meta).__name__}")
    out = {}
    for key, minimum in zip(META_KEYS, (2, 1, 3, 1)):
        value = meta.get(key)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"prior meta {key!r} must be an int >= {minimum}, got {value!r}")
        out[key] = int(value)
    if out["kernel"] % 2 == 0:
        raise ValueError(f"prior meta 'kernel' must be odd, got {out['kernel']}")
    return out


def prior_shapes(meta) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight array of a prior with this metadata (K classes, hidden h,
    kernel k, p = k // 2). Layer i (``layer{i}.``), input channels C = 1 for layer 0, else h;
    R = taps = p for layer 0 (strictly above / left), p + 1 later (the centre row / tap too):

    ``v_w`` (R*k*C, 2h) masked k x k vertical conv as an im2col matrix, rows ordered (row, column,
    channel); ``v_b`` (2h,); ``h_w`` (taps*C, 2h) masked 1 x k horizontal conv, rows (tap, channel);
    ``h_b`` (2h,); ``link_w`` (2h, 2h) the 1x1 vertical-to-horizontal link (in, out); ``link_b``
    (2h,); ``out_w`` (h, h) the horizontal 1x1 output (in, out); ``out_b`` (h,). Head (ReLU - 1x1 -
    ReLU - 1x1): ``head.w1`` (h, h), ``head.b1`` (h,), ``head.w2`` (h, K), ``head.b2`` (K,).
    """
    m = check_meta(meta)
    k, h, p = m["kernel"], m["hidden"], m["kernel"] // 2
    shapes = {}
    for i in range(m["layers"]):
        c_in = 1 if i == 0 else h
        taps = p if i == 0 else p + 1
        shapes.update({f"layer{i}.v_w": (taps * k * c_in, 2 * h), f"layer{i}.v_b": (2 * h,),
                       f"layer{i}.h_w": (taps * c_in, 2 * h), f"layer{i}.h_b": (2 * h,),
                       f"layer{i}.link_w": (2 * h, 2 * h), f"layer{i}.link_b": (2 * h,),
                       f"layer{i}.out_w": (h, h), f"layer{i}.out_b": (h,)})
    shapes.update({"head.w1": (h, h), "head.b1": (h,), "head.w2": (h, m["num_classes"]),
                   "head.b2": (m["num_classes"],)})
    return shapes


def check_arrays(arrays, meta, *, dtype=None) -> dict[str, np.ndarray]:
    """Validate the weight arrays against ``meta``: exactly the names of :func:`prior_shapes`, those
    shapes, one floating dtype (``dtype`` if given), finite. Returns C-contiguous copies."""
    if not isinstance(arrays, dict):
        raise ValueError(f"prior arrays must be a dict of numpy arrays, got {type(arrays).__name__}")
    shapes = prior_shapes(meta)
    missing = [n for n in shapes if n not in arrays]
    if missing:
        raise ValueError(f"prior arrays are missing {missing[0]!r} ({len(missing)} missing); "
                         f"build them with gated_prior_arrays(model) for this meta")
    extra = sorted(set(arrays) - set(shapes))
    if extra:
        raise ValueError(f"prior arrays have unexpected {extra[0]!r} ({len(extra)} unexpected): the meta "
                         f"(layers, kernel) does not match the arrays")
    out, dtypes = {}, set()
    for name, shape in shapes.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray):
            raise ValueError(f"prior array {name!r} must be a numpy array, got {type(a).__name__}")
        if a.dtype not in (np.float32, np.float64) or (dtype is not None and a.dtype != dtype):
            want = np.dtype(dtype).name if dtype is not None else "float32 or float64"
            raise ValueError(f"prior array {name!r} has dtype {a.dtype}, expected {want}")
        if a.shape != shape:
            raise ValueError(f"prior array {name!r} has shape {a.shape}, expected {shape} for the meta "
                             f"(hidden, kernel, num_classes)")
        if not np.isfinite(a).all():
            raise ValueError(f"prior array {name!r} has NaN or infinite values")
        dtypes.add(a.dtype)
        out[name] = np.array(a, copy=True, order="C")
    if len(dtypes) > 1:
        raise ValueError(f"prior arrays mix dtypes {sorted(d.name for d in dtypes)}: use one")
    return out


# --- the numeric core -----------------------------------------------------------------------------
def _np_gate(pre: np.ndarray, half: int) -> np.ndarray:
    """Gated activation on the last axis, tanh(a) * sigmoid(b), sigmoid(b) = (1 + tanh(b / 2)) / 2."""
    return np.tanh(pre[..., :half]) * (0.5 + 0.5 * np.tanh(0.5 * pre[..., half:]))


class GatedPriorNet:
    """The weights of a Gated PixelCNN as numpy matrices (:func:`prior_shapes`), float32 or float64;
    :meth:`steps` starts the cached stepping over one batch of images.

    Per pixel, sigmoid(b) = (1 + tanh(b/2)) / 2 with the factors 1/2 folded into the weights here
    (exact: scaling by a power of two commutes with rounding), so the gate is one tanh over the 2h
    pre-activations.
    """

    def __init__(self, arrays: dict, meta: dict) -> None:
        self.meta = check_meta(meta)
        self.arrays = check_arrays(arrays, self.meta)
        a = self.arrays
        self.num_classes, self.hidden = self.meta["num_classes"], self.meta["hidden"]
        self.kernel, self.num_layers = self.meta["kernel"], self.meta["layers"]
        self.pad = self.kernel // 2
        self.dtype = a["head.b2"].dtype
        h = self.hidden
        half_b = np.concatenate([np.ones(h), np.full(h, 0.5)]).astype(self.dtype)
        self._half_b = half_b
        # pre-activation columns: gate half a unchanged, half b halved (the tanh form of sigmoid)
        self._layers = []
        for i in range(self.num_layers):
            n = f"layer{i}."
            self._layers.append({
                "first": i == 0, "taps": self.pad if i == 0 else self.pad + 1,
                "c_in": 1 if i == 0 else h,
                "v_w": a[n + "v_w"], "v_b": a[n + "v_b"],
                "h_w": a[n + "h_w"] * half_b, "link_w": a[n + "link_w"] * half_b,
                "link_b": a[n + "link_b"] + a[n + "h_b"],       # h_conv's bias joins the link's
                "out_w": a[n + "out_w"] * self.dtype.type(0.5), "out_b": a[n + "out_b"]})
        self._head = tuple(a[k] for k in HEAD_KEYS)
        # model.encode: x * (2 / (K - 1)) - 1, in the weights' dtype, tabulated per symbol value
        scale = self.dtype.type(2.0 / (self.num_classes - 1))
        self._levels = np.arange(self.num_classes).astype(self.dtype) * scale - self.dtype.type(1.0)

    def steps(self, *, batch: int, width: int, cond_v=None, cond_h=None) -> "GatedPriorSteps":
        """Stepping state for ``batch`` images of ``width`` columns (any height). ``cond_v`` /
        ``cond_h``: None, or per layer the (batch, 2h) conditioning projections added to the
        vertical / horizontal pre-activations (a conditional model's ``cond_v(vec)``, ``cond_h(vec)``)."""
        return GatedPriorSteps(self, batch=batch, width=width, cond_v=cond_v, cond_h=cond_h)


class GatedPriorSteps:
    """Cached next-pixel logits of one batch, in raster order (see ``GatedStepper`` for the scheme).

    * Vertical stack: its features at row r see input rows < r only, so at ``c == 0`` every layer's
      ``v_pre`` for row r is computed once from a rolling buffer of the rows it needs (image rows
      r-p .. r-1 for layer 0, the previous layer's gated rows r-p .. r for later ones), as one
      im2col matrix product per layer. The 1x1 link of row r, the horizontal conv's bias and the
      conditioning projection become one (W, B, 2h) table per layer.
    * Horizontal stack: the features at (r, c) see row r's horizontal features at columns <= c
      only, so each pixel computes just the new column of every layer from the 1 x k kernel's left
      taps: O(layers * k) work per pixel, then the output head on that one pixel.

    :meth:`logits` must be called for (0, 0), (0, 1), ... strictly in raster order (not checked
    here: the callers do). It reads only pixels before (r, c) of ``x`` (rows < r when a row starts,
    pixel (r, c-1) at each step), so its output is a pure function of the past pixels.
    """

    def __init__(self, net: GatedPriorNet, *, batch: int, width: int, cond_v=None, cond_h=None) -> None:
        for name, value in (("batch", batch), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        B, W, p, h, dt = int(batch), int(width), net.pad, net.hidden, net.dtype
        self.net, self.batch, self.width = net, B, W
        cond_v = self._check_cond("cond_v", cond_v, net, B)
        cond_h = self._check_cond("cond_h", cond_h, net, B)
        self._vertical, self._horizontal = [], []
        for i, lay in enumerate(net._layers):
            link_b = np.broadcast_to(lay["link_b"], (B, 2 * h))
            if cond_h is not None:
                link_b = link_b + cond_h[i]
            self._vertical.append({
                "v_w": lay["v_w"], "v_b": lay["v_b"], "link_w": lay["link_w"],
                "cond_v": None if cond_v is None else cond_v[i][:, None, :],
                "link_b": (link_b * net._half_b)[:, None, :],
                # rolling input rows, zero-padded p columns left and right
                "v_in": np.zeros((B, lay["taps"], W + 2 * p, lay["c_in"]), dtype=dt)})
            self._horizontal.append((lay["first"], lay["taps"], lay["h_w"], lay["out_w"], lay["out_b"],
                                     np.zeros((B, W + p, h), dtype=dt)))  # output row, p zero columns left
        self._links = [None] * len(self._vertical)       # (W, B, 2h) per layer, current row
        # the encoded current image row, p zero columns on the left: horizontal layer 0's input
        self._x_row = np.zeros((B, W + p, 1), dtype=dt)

    @staticmethod
    def _check_cond(name, cond, net, batch):
        if cond is None:
            return None
        cond = list(cond)
        want = (batch, 2 * net.hidden)
        if len(cond) != net.num_layers or any(
                not isinstance(c, np.ndarray) or c.shape != want or c.dtype != net.dtype for c in cond):
            raise ValueError(f"{name} must be {net.num_layers} arrays of shape {want} and dtype {net.dtype}")
        return cond

    def _start_row(self, x: np.ndarray, r: int) -> None:
        """Vertical stack for row r (reads image rows < r only) -> per-layer link tables."""
        p, W, hidden = self.net.pad, self.width, self.net.hidden
        # layer 0 reads image rows r-p .. r-1 (none yet at r = 0); layer i > 0 reads rows r-p .. r
        # of layer i-1's gated output, whose row r is computed just before
        new_row = self.net._levels[x[:, r - 1, :]][:, :, None] if r > 0 else None
        last = len(self._vertical) - 1
        for i, lay in enumerate(self._vertical):
            v_in = lay["v_in"]
            if new_row is not None:   # roll the buffer up one row, append the new row
                v_in[:, :-1] = v_in[:, 1:].copy()
                v_in[:, -1, p:p + W, :] = new_row
            B = v_in.shape[0]
            # (B, rows, W, C, k) -> (B, W, rows, k, C) -> (B, W, rows*k*C)
            cols = sliding_window_view(v_in, 2 * p + 1, axis=2).transpose(0, 2, 1, 4, 3).reshape(B, W, -1)
            v_pre = cols @ lay["v_w"] + lay["v_b"]
            link = v_pre @ lay["link_w"] + lay["link_b"]              # (B, W, 2h)
            self._links[i] = np.ascontiguousarray(link.transpose(1, 0, 2))
            if i < last:                                              # the last layer's v is unused
                if lay["cond_v"] is not None:
                    v_pre = v_pre + lay["cond_v"]
                new_row = _np_gate(v_pre, hidden)                     # layer i+1's input row r

    def logits(self, x: np.ndarray, r: int, c: int) -> np.ndarray:
        """Logits (B, K) of p(x[:, r, c] | pixels before (r, c)); ``x`` is a (B, H, W) integer array
        with values in [0, K) whose pixels before (r, c) are final."""
        p, hidden = self.net.pad, self.net.hidden
        if c == 0:
            self._start_row(x, r)
        else:
            self._x_row[:, p + c - 1, 0] = self.net._levels[x[:, r, c - 1]]
        below = self._x_row
        B = below.shape[0]
        h = None
        for (first, taps, h_w, out_w, out_b, out), link in zip(self._horizontal, self._links):
            t = np.tanh(below[:, c:c + taps].reshape(B, -1) @ h_w + link[c])
            h = (t[:, :hidden] * (1.0 + t[:, hidden:])) @ out_w + out_b      # h_out(gate(h_pre))
            if not first:
                h += below[:, p + c]                                          # residual
            out[:, p + c] = h
            below = out
        w1, b1, w2, b2 = self.net._head
        a = np.maximum(h, 0.0) @ w1 + b1
        return np.maximum(a, 0.0) @ w2 + b2


# --- frequency tables -----------------------------------------------------------------------------
def _binary_table(logits: np.ndarray, total: int) -> list[int]:
    """K = 2: the cumulative table of ``quantize_probs(softmax(logits))`` by the same float64
    operations in the same order, on Python floats (about 10x less overhead than the array code;
    ``tests/test_edge_prior.py`` checks it against ``quantize_probs``)."""
    e0, e1 = np.exp(logits - logits.max()).tolist()     # the softmax's exp stays numpy's
    s = e0 + e1
    p0, p1 = e0 / s, e1 / s
    s = p0 + p1                                          # quantize_probs renormalises
    spare = float(total - 2)
    x0, x1 = (p0 / s) * spare, (p1 / s) * spare
    b0, b1 = math.floor(x0), math.floor(x1)
    f0, f1 = b0 + 1, b1 + 1
    left = total - f0 - f1                               # 0, 1 or 2
    if left == 2:
        f0 += 1
    elif left == 1 and not (x1 - b1) > (x0 - b0):        # the larger fraction; ties: symbol 0
        f0 += 1
    return [0, f0, total]


def _table(logits: np.ndarray, bits: int) -> list[int]:
    """Any K: softmax, :func:`quantize_probs`, cumulate."""
    e = np.exp(logits - logits.max())
    freqs = quantize_probs(e / e.sum(), precision_bits=bits)
    # freqs are valid by construction: cumulate without cumulative()'s checks
    return list(accumulate(freqs.tolist(), initial=0))


def check_symbols(symbols, num_classes: int) -> np.ndarray:
    """An (H, W) integer or bool array with values in [0, K) -> int64 copy; ValueError otherwise."""
    if not isinstance(symbols, np.ndarray):
        raise ValueError(f"symbols must be a numpy array, got {type(symbols).__name__}")
    if symbols.ndim != 2 or symbols.size == 0:
        raise ValueError(f"symbols must be a non-empty (H, W) array, got shape {symbols.shape}")
    if symbols.dtype.kind not in "iub":
        raise ValueError(f"symbols must have an integer (or bool) dtype, got {symbols.dtype}")
    if int(symbols.min()) < 0 or int(symbols.max()) >= num_classes:
        raise ValueError(f"symbol values must lie in [0, {num_classes})")
    return symbols.astype(np.int64)


def check_shape(shape) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2 or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 1 for n in shape):
        raise ValueError(f"shape must be (height, width) with positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1])


def symbols_crc(symbols: np.ndarray) -> int:
    """CRC32 of (H, W) symbols as uint8 bytes, row-major."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype=np.uint8).tobytes()) & 0xFFFFFFFF


# --- the coder ------------------------------------------------------------------------------------
class PriorCoder:
    """Lossless coder of (H, W) symbol arrays in [0, K) under an unconditional Gated PixelCNN prior
    given as float64 numpy arrays (:func:`prior_shapes`) and its metadata. Any H, W.

    ``encode(symbols) -> bytes`` (4-byte CRC32 of the symbols + arithmetic code; the shape is not
    stored), ``decode(payload, shape=) -> (H, W) uint8`` (raises :class:`PriorMismatch` if the CRC
    fails), :attr:`prior_hash` (the prior's identity), :meth:`save` (the prior file).
    """

    def __init__(self, arrays: dict, meta: dict, *, precision_bits: int = DEFAULT_PRECISION_BITS) -> None:
        meta = check_meta(meta)
        if meta["num_classes"] > MAX_SYMBOLS:
            raise ValueError(f"num_classes must be <= {MAX_SYMBOLS} (symbols are decoded as uint8), "
                             f"got {meta['num_classes']}")
        self.precision_bits = check_precision_bits(precision_bits)
        if meta["num_classes"] > 1 << self.precision_bits:
            raise ValueError(f"precision_bits={precision_bits} is too small for K={meta['num_classes']} symbols")
        self._net = GatedPriorNet(check_arrays(arrays, meta, dtype=np.float64), meta)
        self.num_classes = meta["num_classes"]
        self.meta = dict(meta)
        self._hash = self._compute_hash()

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the float64 weight arrays."""
        return {k: v.copy() for k, v in self._net.arrays.items()}

    def _compute_hash(self) -> str:
        h = hashlib.sha256(HASH_TAG)
        for name in sorted(self._net.arrays):
            a = self._net.arrays[name]
            h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(a.tobytes())
        meta = ",".join(f"{k}={self.meta[k]}" for k in META_KEYS)
        h.update(f"\0{meta}\0K={self.num_classes}\0precision_bits={self.precision_bits}".encode())
        return h.hexdigest()[:16]

    @property
    def prior_hash(self) -> str:
        """16 hex chars: sha256 over a tag, the arrays (sorted names, dtypes, shapes, bytes), the
        metadata, K and precision_bits. Encoder and decoder must agree on it."""
        return self._hash

    @property
    def prior_id(self) -> bytes:
        """:attr:`prior_hash` as 8 bytes (what a readout packet carries)."""
        return bytes.fromhex(self._hash)[:8]

    def _code(self, shape: tuple[int, int], code_symbol) -> np.ndarray:
        """Step the prior over an (H, W) readout in raster order; for every pixel build the
        frequency table and let ``code_symbol(cum, r, c) -> symbol`` code it (encoder: write the
        known symbol; decoder: read it). The one procedure both directions run."""
        height, width = shape
        bits, total = self.precision_bits, 1 << self.precision_bits
        steps = self._net.steps(batch=1, width=width)
        logits_at = steps.logits
        binary = self.num_classes == 2
        x = np.zeros((1, height, width), dtype=np.int64)
        for r in range(height):
            row = x[0, r]
            for c in range(width):
                logits = logits_at(x, r, c)[0]                     # float64 (K,)
                cum = _binary_table(logits, total) if binary else _table(logits, bits)
                row[c] = code_symbol(cum, r, c)
        return x[0].astype(np.uint8)

    def encode(self, symbols: np.ndarray) -> bytes:
        """Compress an (H, W) integer array with values in [0, K) -> CRC32 + arithmetic code."""
        sym = check_symbols(symbols, self.num_classes)
        enc = ArithmeticEncoder(precision_bits=self.precision_bits)
        flat = sym.ravel().tolist()
        width = sym.shape[1]

        def put(cum, r, c):
            s = flat[r * width + c]
            enc.encode(s, cum)
            return s

        self._code(sym.shape, put)
        return struct.pack("!I", symbols_crc(sym)) + enc.finish()

    def decode(self, payload: bytes, *, shape: tuple[int, int]) -> np.ndarray:
        """Decompress a payload of :meth:`encode` -> (H, W) uint8; :class:`PriorMismatch` if the
        decoded symbols fail the payload's CRC (another prior, or a corrupted payload)."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
        shape = check_shape(shape)
        payload = bytes(payload)
        if len(payload) < CRC_BYTES:
            raise ValueError(f"payload of {len(payload)} bytes is shorter than its {CRC_BYTES}-byte symbol CRC")
        (crc,) = struct.unpack_from("!I", payload)
        dec = ArithmeticDecoder(payload[CRC_BYTES:], precision_bits=self.precision_bits)
        out = self._code(shape, lambda cum, r, c: dec.decode(cum))
        if symbols_crc(out) != crc:
            raise PriorMismatch(f"decoded readout fails its CRC: the payload was coded with another prior "
                                f"(this one is {self.prior_hash}) or is corrupted")
        return out

    def save(self, path) -> Path:
        """Write this prior (arrays, meta, precision_bits) as a prior file; see :func:`save_prior`."""
        return save_prior(path, self._net.arrays, dict(self.meta, precision_bits=self.precision_bits))


# --- the prior file -------------------------------------------------------------------------------
def save_prior(path, arrays: dict, meta: dict) -> Path:
    """Write a prior file (``.npz``, atomically): the format tag, the metadata (``num_classes``,
    ``hidden``, ``kernel``, ``layers`` and optionally ``precision_bits``, default 16) and the float64
    arrays of :func:`prior_shapes`. Validates everything first (ValueError)."""
    from core.atomic import atomic_open

    bits = check_precision_bits(meta.get("precision_bits", DEFAULT_PRECISION_BITS)) if isinstance(meta, dict) \
        else DEFAULT_PRECISION_BITS
    coder = PriorCoder(arrays, meta, precision_bits=bits)    # every check the loader will make
    path = Path(path)
    if not path.absolute().parent.is_dir():
        raise ValueError(f"cannot write the prior to {path}: folder {path.absolute().parent} does not exist")
    content = {_FORMAT_KEY: np.array(FORMAT)}
    for key in META_KEYS:
        content[_META_PREFIX + key] = np.array(coder.meta[key], dtype=np.int64)
    content[_META_PREFIX + "precision_bits"] = np.array(bits, dtype=np.int64)
    content.update(coder._net.arrays)
    with atomic_open(path, "wb", shared=True) as fh:
        np.savez(fh, **content)
    return path


def load_prior(path) -> PriorCoder:
    """Read a prior file written by :func:`save_prior` -> :class:`PriorCoder`. Every problem is a
    one-line ValueError naming the file and what is wrong."""
    path = Path(path)
    hint = "write one with ReadoutCoder(model).save(path) or core.prior_coder.save_prior"
    if not path.is_file():
        raise ValueError(f"prior file not found: {path} ({hint})")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a plain .npy array, not an .npz archive")
        with data:
            content = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a readable prior file ({reason}; {hint})") from None
    tag = content.pop(_FORMAT_KEY, None)
    if tag is None or tag.shape != () or tag.dtype.kind != "U" or str(tag) != FORMAT:
        found = ("no format tag" if tag is None else
                 f"format {str(tag)[:60]!r}" if tag.dtype.kind == "U" else "a bad format tag")
        raise ValueError(f"{path} is not a prior file: {found}, expected {FORMAT!r} ({hint})")
    meta = {}
    for key in META_KEYS + ("precision_bits",):
        value = content.pop(_META_PREFIX + key, None)
        if value is None:
            raise ValueError(f"{path}: prior file lacks {_META_PREFIX + key} ({hint})")
        if value.shape != () or value.dtype.kind not in "iu":
            raise ValueError(f"{path}: {_META_PREFIX + key} must be an integer scalar, got {value.dtype} {value.shape}")
        meta[key] = int(value)
    try:
        return PriorCoder(content, meta, precision_bits=meta["precision_bits"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
