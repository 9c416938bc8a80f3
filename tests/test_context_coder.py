"""The JBIG-style context model (core/context_coder.py) and the ``context`` readout payload: exact round
trips, determinism, the template's causality and map boundaries, compression on structured and real
bits, corrupted payloads rejected, and the payload through the packet encoder/decoder and the registry."""
from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest

from conftest import BUNDLED, DATA, REF, need
from core.context_coder import (
    HEADER_BYTES,
    MODEL_ID,
    ContextMismatch,
    contexts,
    decode_bits,
    encode_bits,
    stacked_rows,
)
from core.errors import InputError
from edge.packet import HEADER_BYTES as PACKET_HEADER_BYTES
from edge.packet import (
    OVERHEAD_BYTES,
    REASONS,
    PacketDecoder,
    PacketError,
    decode_packet,
    encode_readout,
)
from edge.payloads import PayloadOptions, get_payload, payload_names

pytestmark = pytest.mark.device

MODEL = "0123456789abcdef"
SHAPES = ((1, 1), (3, 5), (64, 64), (256, 64), (2, 7), (7, 1), (96, 32))
DENSITIES = (0.0, 1.0, 0.05, 0.5)


def random_bits(shape, p, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < p).astype(np.uint8)


def round_trip(bits: np.ndarray, map_rows=None) -> bytes:
    payload = encode_bits(bits, map_rows=map_rows)
    back = decode_bits(payload, shape=bits.shape, map_rows=map_rows)
    assert back.dtype == np.uint8 and back.shape == bits.shape and np.array_equal(back, bits)
    return payload


def blob_map(size: int = 64) -> np.ndarray:
    """A very structured map: a filled disc and a bar (what a smooth feature map looks like)."""
    r, c = np.mgrid[:size, :size]
    return (((r - 24) ** 2 + (c - 30) ** 2 < 15 ** 2) | ((r > 48) & (c > 8) & (c < 56))).astype(np.uint8)


# --- the coder ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", DENSITIES)
def test_round_trip_is_exact_on_random_maps(shape, p):
    bits = random_bits(shape, p, seed=shape[0] * 7 + shape[1])
    round_trip(bits)
    rows = stacked_rows(shape)
    if rows != shape[0]:                        # (256, 64), (96, 32): stacked maps
        round_trip(bits, map_rows=rows)


def test_inputs_of_any_integer_or_bool_dtype_code_alike():
    bits = random_bits((16, 16), 0.3)
    payload = encode_bits(bits)
    assert encode_bits(bits.astype(bool)) == encode_bits(bits.astype(np.int64)) == payload


# (payload bytes, sha256 prefix) of the two maps below: a change here breaks sensor/host compatibility
PINNED = [(438, "0953368aae4802a7"), (1282, "166d5235145608df")]


def test_coding_is_deterministic_and_pinned():
    """The same bytes on every run and every machine (integer arithmetic only): the payload of a fixed
    map is pinned, so a change of template or estimator (a new MODEL_ID) cannot slip in unnoticed."""
    r, c = np.mgrid[:64, :64]
    bits = ((r * r + 3 * c + (r * c) // 5) % 7 < 3).astype(np.uint8)
    a, b = encode_bits(bits), encode_bits(bits.copy())
    assert a == b and a[0] == MODEL_ID == 1
    assert struct.unpack_from("!I", a, 1)[0] == zlib.crc32(bits.tobytes()) & 0xFFFFFFFF
    stacked = np.concatenate([bits, bits[::-1], bits[:, ::-1]])[:, :64]
    s = encode_bits(stacked, map_rows=64)
    assert s == encode_bits(stacked.copy(), map_rows=64)
    assert (len(a), hashlib.sha256(a).hexdigest()[:16]) == PINNED[0]
    assert (len(s), hashlib.sha256(s).hexdigest()[:16]) == PINNED[1]



def test_structured_map_codes_far_below_the_1bit_payload():
    bits = blob_map()
    payload = round_trip(bits)
    assert len(payload) < 80, len(payload)               # vs 512 B packed; random bits cost ~512 B
    assert len(round_trip(np.zeros((64, 64), np.uint8))) <= HEADER_BYTES + 4
    assert len(round_trip(np.ones((64, 64), np.uint8))) <= HEADER_BYTES + 4
    noise = random_bits((64, 64), 0.5)
    assert 500 <= len(round_trip(noise)) <= 540          # incompressible: about the raw 512 B
    # stacked maps that repeat: the previous map predicts the next one
    maps = np.concatenate([bits] * 4)
    stacked = len(round_trip(maps, map_rows=64))
    assert stacked < len(round_trip(maps)) and stacked < len(payload) + 40


def test_contexts_are_causal_and_never_cross_a_map_boundary():
    bits = random_bits((12, 5), 0.5, seed=3)             # 3 maps of 4 x 5 (odd width too)
    rows = 4
    base = contexts(bits, map_rows=rows).ravel()
    assert (base[:20] < 16).all() and (base[20:] >= 64).all()          # first map: no reference bits
    first_rows = contexts(bits, map_rows=rows).reshape(3, 4, 5)[:, 0]
    assert not (first_rows & 0b1110).any()               # NW, N, NE of a map's top row: 0, not the map above
    assert not (contexts(bits, map_rows=rows).reshape(3, 4, 5)[:, :, 0] & 0b1001).any()   # left edge: NW, W = 0
    for i in range(bits.size):                           # a pixel changes no context at or before itself
        flipped = bits.copy().ravel()
        flipped[i] ^= 1
        ctx = contexts(flipped.reshape(bits.shape), map_rows=rows).ravel()
        assert np.array_equal(ctx[:i + 1], base[:i + 1]), i
    # one map: its contexts ignore how it would be split
    assert np.array_equal(contexts(bits), contexts(bits, map_rows=12))


def test_stacked_rows_rule():
    assert stacked_rows((256, 32)) == 32 and stacked_rows((64, 64)) == 64 and stacked_rows((128, 64)) == 64
    assert stacked_rows((3, 5)) == 3 and stacked_rows((7, 5)) == 7 and stacked_rows((1, 1)) == 1


@pytest.mark.parametrize("bad, message", [
    (lambda: encode_bits([[0, 1]]), "numpy array"),
    (lambda: encode_bits(np.zeros((2, 2, 2), np.uint8)), r"\(H, W\)"),
    (lambda: encode_bits(np.full((2, 2), 2, np.uint8)), "0 and 1"),
    (lambda: encode_bits(np.zeros((2, 2), np.float32)), "dtype"),
    (lambda: encode_bits(np.zeros((6, 2), np.uint8), map_rows=4), "does not divide"),
    (lambda: encode_bits(np.zeros((6, 2), np.uint8), map_rows=0), "positive int"),
    (lambda: decode_bits(b"\x01\0\0\0\0", shape=(0, 4)), "shape"),
    (lambda: decode_bits("text", shape=(2, 2)), "bytes"),
    (lambda: decode_bits(b"\x01\0\0", shape=(2, 2)), "shorter"),
    (lambda: decode_bits(b"\x02" + bytes(8), shape=(2, 2)), "model 2"),
])
def test_bad_arguments_are_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_corrupted_payloads_are_rejected_never_decoded_wrong():
    bits = blob_map() ^ random_bits((64, 64), 0.05, seed=1)
    payload = round_trip(bits)
    rng = np.random.default_rng(0)
    rejected = 0
    for trial in range(60):
        data = bytearray(payload)
        pos = int(rng.integers(1, len(data)))            # the CRC or the code
        data[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            back = decode_bits(bytes(data), shape=bits.shape)
        except ContextMismatch:
            rejected += 1
        else:
            assert np.array_equal(back, bits), trial     # (a flip the code never reads) the right bits or nothing
    assert rejected >= 55
    with pytest.raises(ContextMismatch, match="CRC"):
        decode_bits(payload[:HEADER_BYTES + 20], shape=bits.shape)        # truncated code
    with pytest.raises(ContextMismatch):
        decode_bits(payload, shape=bits.shape, map_rows=32)               # decoded as another map split


# --- the payload ----------------------------------------------------------------------------------
def levels(bits: np.ndarray) -> np.ndarray:
    """8-bit readout levels whose signs are ``bits`` (o = 0 reads as 127: a 1)."""
    rng = np.random.default_rng(5)
    return np.where(bits == 1, rng.integers(127, 256, bits.shape), rng.integers(0, 127, bits.shape)).astype(np.uint8)


def packet(readout, *, encoding="context", seq=0, level=50) -> bytes:
    return encode_readout(readout, model_id=MODEL, stream_id=9, seq=seq, encoding=encoding, level=level)


def recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("!I", zlib.crc32(data[:-4]) & 0xFFFFFFFF)


def test_context_payload_in_the_registry():
    codec = get_payload("context")
    assert codec is get_payload(3) and codec.wire_id == 3 and "context" in payload_names()
    assert codec.variable and codec.fallback == "1bit" and codec.open_state is None and codec.uses_level
    assert codec.size_range((64, 64)) == (HEADER_BYTES, 512) and "B per 64x64" in codec.help
    assert codec.size_range((1, 1)) == (1, 1)            # always falls back: a well-formed range all the same
    tiny = recrc(packet(np.full((1, 1), 200, np.uint8))[:6] + b"\x03" + packet(np.full((1, 1), 200, np.uint8))[7:])
    with pytest.raises(PacketError) as info:
        decode_packet(tiny)
    assert info.value.reason == "bad_context_decode"
    assert "bad_context_decode" in REASONS
    state = PayloadOptions(name="context").open()
    assert state.state is None and state.states == {}
    with pytest.raises(InputError, match="takes no file"):
        PayloadOptions(name="context", file="prior.npz")


@pytest.mark.parametrize("shape", [(64, 64), (3, 5), (1, 1), (256, 32)])
def test_context_packet_reproduces_the_1bit_readout(shape):
    bits = np.tile(blob_map(32), (8, 1)) if shape == (256, 32) else blob_map(max(shape))[:shape[0], :shape[1]]
    readout = levels(bits)
    data = packet(readout, level=30)
    want = decode_packet(packet(readout, encoding="1bit", level=30)).readout
    got = decode_packet(data, expect_model=MODEL, expect_shape=shape)
    assert np.array_equal(got.readout, want) and got.nbytes == len(data)
    if shape[0] * shape[1] >= 64:                        # worth coding: the context payload, smaller
        assert data[6] == 3 and len(data) < OVERHEAD_BYTES + (shape[0] * shape[1] + 7) // 8
    else:                                                # a 1x1 or 3x5 map: its code is not shorter
        assert data[6] == 1


def test_context_falls_back_to_1bit_when_not_shorter():
    noise = levels(random_bits((64, 64), 0.5, seed=2))
    data = packet(noise)
    assert data[6] == 1 and len(data) == OVERHEAD_BYTES + 512
    assert np.array_equal(decode_packet(data).readout, decode_packet(packet(noise, encoding="1bit")).readout)


def test_corrupted_context_packets_are_rejected_with_their_reason():
    good = packet(levels(blob_map()))
    at = PACKET_HEADER_BYTES                             # the payload: model id, CRC32 of the bits, code
    assert good[6] == 3 and good[at] == MODEL_ID
    tampered = recrc(good[:at + 10] + bytes([good[at + 10] ^ 0x40]) + good[at + 11:])     # a code byte
    other_model = recrc(good[:at] + b"\x07" + good[at + 1:])
    for data in (tampered, other_model):
        with pytest.raises(PacketError) as info:
            decode_packet(data, expect_shape=(64, 64))
        assert info.value.reason == "bad_context_decode"
    short = recrc(good[:36] + struct.pack("!I", 3) + good[at:at + 3] + bytes(4))         # below the header
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(good) is not None
    for data in (tampered, short, good[:-1] + bytes([good[-1] ^ 1])):
        assert dec.decode(data) is None
    assert dec.rejected == {"bad_context_decode": 1, "bad_length": 1, "bad_crc": 1}


# --- real readout bits ----------------------------------------------------------------------------
def test_real_scamp5_readouts_round_trip_and_compress():
    """REAL SCAMP-5 readouts (o_16 of the authors' gesture program, 64x64 at rows/cols 128:192)."""
    with np.load(need(REF / "scamp5_readouts_cambridge810.npz"), allow_pickle=False) as d:
        crops = d["readouts"][:24, 128:192, 128:192]
    sizes = []
    for readout in crops:
        bits = (readout >= 127).astype(np.uint8)
        sizes.append(len(round_trip(bits)))
        data = packet(readout)
        assert np.array_equal(decode_packet(data, expect_shape=(64, 64)).readout,
                              decode_packet(packet(readout, encoding="1bit")).readout)
    assert np.mean(sizes) < 480, sizes                   # 454 B; vs 512 B packed (a learned prior: ~390 B)


def test_real_grid_multimap_readouts_round_trip_and_compress():
    """The bundled lips model's readout (8 maps of 32x32, 1 bit) of real GRID clips, simulated
    torch-free from its sensor program: the stacked maps code far below their 1,024 packed bytes."""
    from edge.models import load_sensor_program
    from firmware_sim.simulate import simulate

    with np.load(need(DATA / "grid_s1_digits.npz"), allow_pickle=False) as d:
        frames = d["frames"][::100][:8]
    weights = load_sensor_program(BUNDLED / "lips" / "sensor_weights.npz")
    readout = simulate(weights=weights, frames=frames, stages=()).readout
    assert readout.shape[1:] == (8, 32, 32) and readout.max() <= 1
    sizes = []
    for maps in readout:
        bits = maps.reshape(256, 32)
        sizes.append(len(round_trip(bits, map_rows=stacked_rows(bits.shape))))
    assert np.mean(sizes) < 0.65 * 1024, sizes


# -- a readout layout's 1-bit levels under the context model (levels1-context) ------------------
def test_choose_layout_payload_maps_context_to_the_layout_variant():
    from core.readout_layout import ReadoutLayout
    from edge.payloads import choose_layout_payload, layout_payloads

    one = ReadoutLayout.every(2, timesteps=16, bits=1, pool=2)
    two = ReadoutLayout.every(2, timesteps=16, bits=2, pool=2)
    authors = ReadoutLayout.every(0, timesteps=16)
    assert choose_layout_payload(one, "context") == choose_layout_payload(one, "levels1-context") == "levels1-context"
    assert choose_layout_payload(one, "8bit") == "levels1"
    assert layout_payloads(one)[:2] == ("levels1", "levels1-context") and layout_payloads(two) == ("levels2",)
    with pytest.raises(InputError, match="sent as levels2"):
        choose_layout_payload(two, "context")
    with pytest.raises(InputError, match="1-bit readouts; this model reads out the authors'"):
        choose_layout_payload(authors, "levels1-context")
    assert choose_layout_payload(authors, "context") == "context"


def test_levels1_context_round_trip_and_fallback():
    codec = get_payload("levels1-context")
    rng = np.random.default_rng(3)
    smooth = np.repeat(np.repeat(rng.integers(0, 2, (8 * 4, 4), dtype=np.uint8), 8, 0), 8, 1)   # 8 maps 32x32
    packet = encode_readout(smooth, model_id="00" * 8, stream_id=1, seq=0, encoding="levels1-context")
    got = decode_packet(packet, expect_model="00" * 8, expect_shape=(256, 32))
    assert got.encoding == codec.wire_id and np.array_equal(got.readout, smooth)
    assert len(packet) - PACKET_HEADER_BYTES < get_payload("levels1").size(smooth.shape) // 4
    noise = rng.integers(0, 2, (256, 32), dtype=np.uint8)           # incompressible: levels1 instead
    packet = encode_readout(noise, model_id="00" * 8, stream_id=1, seq=0, encoding="levels1-context")
    got = decode_packet(packet, expect_model="00" * 8, expect_shape=(256, 32))
    assert got.encoding == get_payload("levels1").wire_id and np.array_equal(got.readout, noise)
    with pytest.raises(ValueError, match="carries levels 0..1"):
        encode_readout(smooth * 2, model_id="00" * 8, stream_id=1, seq=0, encoding="levels1-context")


def test_bundled_lips_model_decides_the_same_with_context_coded_levels(bundled_models):
    """The bundled lips model (8 maps of 32x32, 1 bit) over the camera loop: --payload context sends
    its levels context-coded, the host decodes the same levels (same logits, window by window) from
    far fewer bytes than levels1's 1,024."""
    from edge import CameraLoop, CameraLoopOptions

    runs = {}
    for payload in ("8bit", "context"):
        got = []
        with CameraLoop.create_from_options(CameraLoopOptions(bundle_path=bundled_models / "lips", payload=payload,
                                                              max_frames=64)) as loop:
            result = loop.run("test", on_decision=got.append)
        runs[payload] = (result.summary, [d.logits for d in got])
    (plain, plain_logits), (ctx, ctx_logits) = runs["8bit"], runs["context"]
    assert plain["payload"] == "levels1" and ctx["payload"] == "levels1-context"
    assert len(plain_logits) == len(ctx_logits) == 4 and plain_logits == ctx_logits
    assert ctx["malformed"] == {} and ctx["drops"]["lost_windows"] == 0
    assert ctx["bytes"]["payload_per_window"] < 0.8 * plain["bytes"]["payload_per_window"] == 0.8 * 1024
