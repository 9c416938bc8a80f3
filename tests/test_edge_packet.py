"""The readout packet (edge/packet.py) and the link: round trips, sizes, and every rejection counted."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from edge.auth import MAC_BYTES, LinkKey
from edge.link import InprocLink, LinkSpec, UdpReceiver, UdpSender, parse_link
from edge.packet import (
    DEFAULT_LEVEL,
    ENC_1BIT,
    ENC_8BIT,
    HEADER_BYTES,
    OVERHEAD_BYTES,
    PacketDecoder,
    PacketError,
    decode_packet,
    encode_end,
    encode_readout,
)

pytestmark = pytest.mark.device

MODEL = "0123456789abcdef"
OTHER = "fedcba9876543210"


@pytest.fixture
def readout():
    return np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)


def packet(readout, seq=0, **kw):
    return encode_readout(readout, model_id=kw.pop("model_id", MODEL), stream_id=kw.pop("stream_id", 7),
                          seq=seq, **kw)


def recrc(data: bytes) -> bytes:
    """Re-seal a tampered packet with a valid CRC (to reach the checks after the CRC)."""
    body = data[:-4]
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def test_8bit_round_trip_and_size(readout):
    data = packet(readout, seq=3, t_ns=123456789)
    assert len(data) == 4096 + OVERHEAD_BYTES <= 4096 + 64
    p = decode_packet(data, expect_model=MODEL)
    assert (p.kind, p.encoding, p.stream_id, p.seq, p.t_ns, p.model_id, p.shape) == (
        0, ENC_8BIT, 7, 3, 123456789, MODEL, (64, 64))
    assert p.readout.dtype == np.uint8 and np.array_equal(p.readout, readout)


def test_1bit_round_trip_keeps_the_sign_of_o(readout):
    data = packet(readout, encoding=ENC_1BIT)
    assert len(data) == 512 + OVERHEAD_BYTES <= 512 + 64
    p = decode_packet(data)
    want = np.where(readout >= 127, 127 + DEFAULT_LEVEL, 127 - DEFAULT_LEVEL)
    assert p.encoding == ENC_1BIT and np.array_equal(p.readout, want)
    # o = 0 (level 127) is +1: sign(0) = +1
    zero = np.full((64, 64), 127, np.uint8)
    assert (decode_packet(packet(zero, encoding=ENC_1BIT, level=10)).readout == 137).all()


def test_end_packet_round_trip():
    p = decode_packet(encode_end(model_id=MODEL, stream_id=7, seq=5))
    assert p.is_end and p.seq == 5 and p.readout is None


@pytest.mark.parametrize("tamper, reason", [
    (lambda d: d[:-1], "bad_length"),                                # truncated
    (lambda d: d[:20], "short"),
    (lambda d: b"XXXX" + d[4:], "bad_magic"),
    (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "bad_crc"),  # one bit flipped in the payload
    (lambda d: d[:-4] + b"\0\0\0\0", "bad_crc"),
    (lambda d: recrc(d[:4] + b"\x09" + d[5:]), "bad_version"),
    (lambda d: recrc(d[:5] + b"\x07" + d[6:]), "bad_kind"),
    (lambda d: recrc(d[:6] + b"\x04" + d[7:]), "bad_encoding"),
    (lambda d: recrc(d[:32] + struct.pack("!HH", 32, 64) + d[36:]), "bad_length"),
    (lambda d: recrc(d[:32] + struct.pack("!HH", 0, 64) + d[36:]), "bad_shape"),
])
def test_malformed_packets_are_rejected_with_a_counted_reason(readout, tamper, reason):
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(tamper(packet(readout))) is None
    assert dec.rejected == {reason: 1} and dec.malformed == 1 and dec.accepted == 0
    with pytest.raises(PacketError) as info:
        decode_packet(tamper(packet(readout)), expect_model=MODEL)
    assert info.value.reason == reason


def test_wrong_model_shape_stale_and_lost_windows_are_counted(readout):
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(packet(readout, seq=0)) is not None
    assert dec.decode(packet(readout, seq=1, model_id=OTHER)) is None          # another sensor program
    assert dec.decode(packet(readout[:32], seq=1)) is None                     # not the model's shape
    assert dec.decode(packet(readout, seq=0)) is None                          # replayed
    assert dec.decode(packet(readout, seq=3)) is not None                      # 1 and 2 never came
    assert dec.ends == 0
    assert dec.decode(encode_end(model_id=MODEL, stream_id=7, seq=2)) is None  # fewer than accepted: not counted
    end = dec.decode(encode_end(model_id=MODEL, stream_id=7, seq=6))           # 6 sent: 4, 5 missing
    dec.end_lost(end)
    assert dict(dec.rejected) == {"wrong_model": 1, "bad_shape": 1, "stale_seq": 2}
    assert dec.accepted == 2 and dec.lost == 4 and dec.ends == 1
    assert dec.accepted + dec.ends + dec.malformed == 7                        # every packet fed, counted once
    # a new stream (sensor restarted) starts its own sequence
    assert dec.decode(packet(readout, seq=0, stream_id=8)) is not None


def test_encode_validates_its_arguments(readout):
    with pytest.raises(ValueError, match="uint8"):
        packet(readout.astype(np.int16))
    with pytest.raises(ValueError, match="hex"):
        packet(readout, model_id="xyz")
    with pytest.raises(ValueError, match="encoding"):
        packet(readout, encoding=4)
    with pytest.raises(ValueError, match="seq"):
        packet(readout, seq=-1)
    with pytest.raises(ValueError, match="level"):
        packet(readout, encoding=ENC_1BIT, level=0)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=5000))
def test_random_bytes_never_raise(data):
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(data) is None or dec.accepted == 1
    assert dec.malformed + dec.accepted == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4096 + OVERHEAD_BYTES - 1), st.integers(1, 255), st.booleans())
def test_any_corrupted_byte_is_rejected(position, flip, one_bit):
    readout = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    data = bytearray(packet(readout, encoding=ENC_1BIT if one_bit else ENC_8BIT))
    position %= len(data)
    data[position] ^= flip
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(bytes(data)) is None and dec.malformed == 1


def test_parse_link():
    assert parse_link("inproc") == LinkSpec()
    assert parse_link("udp://127.0.0.1:9000") == LinkSpec("udp", "127.0.0.1", 9000)
    for bad in ("udp://localhost:9000", "udp://127.0.0.1", "tcp://127.0.0.1:1", "udp://127.0.0.1:99999", "x"):
        with pytest.raises(InputError):
            parse_link(bad)


def test_links_count_every_byte(readout):
    data = packet(readout)
    with InprocLink() as link:
        link.send(data)
        assert link.recv() == data and link.recv() is None
        assert (link.bytes_out, link.bytes_in, link.packets_out) == (len(data), len(data), 1)
    key = LinkKey.ephemeral()
    with UdpReceiver("127.0.0.1", 0) as rx, UdpSender("127.0.0.1", rx.port, key=key) as tx:
        tx.send(data)
        datagram = rx.recv(timeout=2.0)                           # one packet = one datagram, MAC appended
        assert datagram == data + key.mac(data) and key.open(datagram) == data
        assert rx.recv(timeout=0.0) is None
        assert (tx.bytes_out, rx.bytes_in) == (len(data) + MAC_BYTES, len(data) + MAC_BYTES)
    assert HEADER_BYTES == 40


def test_wire_ids_and_sizes_come_from_the_payload_registry(readout):
    """The encoding byte of each built-in payload is fixed by the format (bundles and hosts depend on it)."""
    from edge.packet import ENC_PRIOR, PAYLOADS, max_payload_bytes, payload_bytes
    from edge.payloads import get_payload, payload_names

    assert (ENC_8BIT, ENC_1BIT, ENC_PRIOR) == (8, 1, 2)
    assert dict(PAYLOADS) == {name: get_payload(name).wire_id for name in payload_names()}
    assert payload_bytes((64, 64), ENC_8BIT) == 4096 and payload_bytes((64, 64), "1bit") == 512
    assert max_payload_bytes((64, 64), ENC_PRIOR) == 2 * 512 + 64
    data = packet(readout, encoding="1bit", level=30)
    assert data[6] == ENC_1BIT and data[7] == 30 and packet(readout)[7] == 0      # 8-bit carries no level
    with pytest.raises(ValueError, match="encoding must be a payload's wire id or name"):
        packet(readout, encoding="nope")


def test_costly_payloads_without_an_expected_shape_are_held_to_64x64(tmp_path):
    """A CRC-valid prior packet claiming a huge readout is refused before decoding when the caller
    gives no shape (the packet fuzzer found a 4096x1 claim costing ~1 s)."""
    import time

    from benchmarks.packet_fuzz import make_prior_file
    from core.prior_coder import load_prior
    from edge.packet import UNCHECKED_MAX_SIDE, PacketError, decode_packet
    from edge.payloads import PRIOR_ID_BYTES

    coder = load_prior(make_prior_file(tmp_path / "p.npz", 0))
    data = bytes.fromhex("5058524e01000232000000010000000000000000000000000123456789abcdef100000010000000f"
                         "597deae3c0d8e5b53bf38e6fffffe01a9c2339")
    assert PRIOR_ID_BYTES == 8 and UNCHECKED_MAX_SIDE == 64
    t0 = time.perf_counter()
    with pytest.raises(PacketError) as err:
        decode_packet(data, coder=coder)
    assert err.value.reason == "bad_shape" and time.perf_counter() - t0 < 0.05
