"""The static context table (core/table_coder.py), its payloads ``table`` / ``levels1-table`` and the
``pixelrnn fit-table`` command: exact round trips (random, structured, real), determinism, the table id
and CRC checks, the raw fallback, one-line errors for bad table files, stacked maps, and the payload
through the packet, the host and the camera loop."""
from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import AUTHORS_BUNDLES, BUNDLED, DATA, need

# the sensor programs whose readouts the table coder carries: both default models (1-bit levels of their own
# layouts, 8 maps of 32x32) and the fixture with the authors' readout (one 64x64 8-bit map, sent as its signs)
BUNDLES = {"lips": BUNDLED / "lips", "gesture": BUNDLED / "gesture", "authors": AUTHORS_BUNDLES / "gesture"}
from core.errors import InputError
from core.table_coder import (
    HEADER_BYTES,
    ContextTable,
    TableMismatch,
    WrongTable,
    contexts,
    decode_bits,
    default_taps,
    encode_bits,
    fit_table,
    load_table,
    save_table,
)
from edge.packet import HEADER_BYTES as PACKET_HEADER_BYTES
from edge.packet import OVERHEAD_BYTES, REASONS, PacketDecoder, PacketError, decode_packet, encode_readout
from edge.payloads import PayloadOptions, choose_layout_payload, get_payload, layout_payloads

pytestmark = pytest.mark.device

MODEL = "0123456789abcdef"


def structured(n: int, shape=(64, 64), seed=0) -> np.ndarray:
    """(n, H, W) maps with a fixed pattern per position plus noise: what a sensor program's readouts look like."""
    rng = np.random.default_rng(seed)
    h, w = shape
    r, c = np.mgrid[:h, :w]
    base = ((r // 4 + c // 8) % 3 == 0)
    flips = rng.random((n, h, w)) < 0.08
    return (base[None] ^ flips).astype(np.uint8)


@pytest.fixture(scope="module")
def table() -> ContextTable:
    return fit_table(structured(200))


@pytest.fixture(scope="module")
def stacked_table() -> ContextTable:
    maps = structured(200, (32, 32), seed=1)
    frames = np.stack([np.roll(maps, k, axis=2) for k in range(8)], axis=1)       # 8 alike maps per window
    return fit_table(frames.reshape(200, 256, 32))


def levels(bits: np.ndarray, level: int = 50) -> np.ndarray:
    return np.where(bits, 127 + level, 127 - level).astype(np.uint8)


def recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("!I", zlib.crc32(data[:-4]) & 0xFFFFFFFF)


def packet(readout, table, encoding="table", level=50) -> bytes:
    return encode_readout(readout, model_id=MODEL, stream_id=1, seq=0, encoding=encoding, level=level, coder=table)


# --- the coder ------------------------------------------------------------------------------------
def test_round_trip_is_exact_and_compresses_structured_maps(table):
    sizes = []
    for bits in structured(20, seed=9):
        payload = encode_bits(bits, table=table)
        back = decode_bits(payload, table=table)
        assert back.dtype == np.uint8 and np.array_equal(back, bits)
        sizes.append(len(payload))
    assert np.mean(sizes) < 0.6 * 512, sizes
    for density in (0.0, 1.0):                            # extremes code exactly too
        bits = np.full((64, 64), density, np.uint8)
        assert np.array_equal(decode_bits(encode_bits(bits, table=table), table=table), bits)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.floats(0.0, 1.0), h=st.integers(1, 6), w=st.integers(1, 5))
def test_random_tables_and_maps_round_trip(seed, p, h, w):
    rng = np.random.default_rng(seed)
    shape = (h, 2 * w)
    train = (rng.random((5, *shape)) < rng.random()).astype(np.uint8)
    taps = default_taps(shape)
    t = fit_table(train, taps=taps)
    bits = (rng.random(shape) < p).astype(np.uint8)
    assert np.array_equal(decode_bits(encode_bits(bits, table=t), table=t), bits)


def test_stacked_maps_round_trip_and_use_the_previous_map(stacked_table):
    assert stacked_table.taps == ("P", "N", "NE", "W") and stacked_table.map_rows == 32
    maps = structured(10, (32, 32), seed=4)
    window = np.stack([np.roll(maps[0], k, axis=1) for k in range(8)]).reshape(256, 32)
    payload = encode_bits(window, table=stacked_table)
    assert np.array_equal(decode_bits(payload, table=stacked_table), window)
    ctx = contexts(window, taps=stacked_table.taps, map_rows=32)
    assert (ctx[:32] >> 3 == 0).all()                     # the first map has no previous map: P reads 0
    assert np.array_equal(ctx[32:64] >> 3, window[:32])   # map 1's P tap is map 0's co-located pixel
    assert (ctx[32, :] & 0b110 == 0).all()                # no N / NE across the map boundary


def test_determinism_integer_table_and_stable_ids(table, tmp_path):
    assert table.freq0.dtype == np.uint16 and table.freq0.min() >= 2 and table.freq0.max() <= 2**16 - 2
    again = fit_table(structured(200))
    assert again.table_id == table.table_id and len(table.table_id) == 8
    path = save_table(tmp_path / "t.npz", table=table)
    loaded, twice = load_table(path), load_table(path)
    assert loaded.table_id == twice.table_id == table.table_id and np.array_equal(loaded.freq0, table.freq0)
    bits = structured(1, seed=5)[0]
    assert encode_bits(bits, table=loaded) == encode_bits(bits, table=table)
    # pinned: integer coding gives these bytes on every machine (a change here breaks old sensors' packets)
    tiny = fit_table(structured(30, (8, 8), seed=3))
    code = encode_bits(structured(1, (8, 8), seed=7)[0], table=tiny)
    assert tiny.table_hash == "79204b4d12408c7a" and hashlib.sha256(code).hexdigest()[:16] == "a02511fd304f54f5"


def test_wrong_table_and_crc_are_caught(table, stacked_table):
    bits = structured(1, seed=6)[0]
    payload = encode_bits(bits, table=table)
    other = fit_table(structured(50, seed=11))
    with pytest.raises(WrongTable, match="coded with table"):
        decode_bits(payload, table=other)
    tampered = payload[:HEADER_BYTES + 5] + bytes([payload[HEADER_BYTES + 5] ^ 0x10]) + payload[HEADER_BYTES + 6:]
    with pytest.raises(TableMismatch):
        decode_bits(tampered, table=table)
    with pytest.raises(ValueError, match="shorter than its 12-byte header"):
        decode_bits(payload[:5], table=table)
    with pytest.raises(ValueError, match="codes 64x64 maps"):
        encode_bits(np.zeros((256, 32), np.uint8), table=table)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="even width"):
        fit_table(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="end with W"):
        fit_table(np.zeros((3, 4, 4), np.uint8), taps=("W", "N"))
    with pytest.raises(ValueError, match="unknown tap"):
        fit_table(np.zeros((3, 4, 4), np.uint8), taps=("X", "W"))
    with pytest.raises(ValueError, match="0 and 1 only"):
        fit_table(np.full((3, 4, 4), 2, np.uint8))
    with pytest.raises(ValueError, match="table must be"):
        encode_bits(np.zeros((4, 4), np.uint8), table="t.npz")


# --- the table file -------------------------------------------------------------------------------
def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_bad_table_files_are_one_line_errors(table, tmp_path):
    good = save_table(tmp_path / "good.npz", table=table)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "nofreq.npz", format=np.array("pixelrnn.edge.table/v1"), shape=np.array([64, 64]))
    with np.load(good) as d:
        content = {k: d[k] for k in d.files}
    np.savez(tmp_path / "shape.npz", **{**content, "freq0": content["freq0"][:10]})
    np.savez(tmp_path / "zero.npz", **{**content, "freq0": np.zeros_like(content["freq0"])})
    np.savez(tmp_path / "tag.npz", **{**content, "format": np.array("pixelrnn.edge.prior/v1")})
    cases = {"missing.npz": "table file not found", "junk.npz": "not a readable .npz",
             "nofreq.npz": "no 'taps' array", "shape.npz": "damaged table file: freq0 must be uint16 of shape",
             "zero.npz": "damaged table file: freq0 must lie in", "tag.npz": "is not a table file of format"}
    for name, match in cases.items():
        with pytest.raises(InputError, match=match) as info:
            load_table(tmp_path / name)
        assert "fit-table" in one_line(info.value)
        with pytest.raises(InputError) as info:                      # the payload's own door: one line too
            PayloadOptions(name="table", file=tmp_path / name).open()
        one_line(info.value)
    with pytest.raises(InputError, match="must end in .npz"):
        save_table(tmp_path / "t.txt", table=table)
    with pytest.raises(InputError, match="payload table needs the table file"):
        PayloadOptions(name="table")


# --- the payloads ---------------------------------------------------------------------------------
def test_table_payloads_in_the_registry(table, tmp_path):
    codec, layered = get_payload("table"), get_payload("levels1-table")
    assert codec is get_payload(6) and layered is get_payload(34)
    assert codec.fallback == "1bit" and layered.fallback == "levels1" and codec.uses_level and not layered.uses_level
    assert codec.size_range((64, 64)) == (HEADER_BYTES, 512) and layered.max_level == 1
    assert {"no_table", "wrong_table", "bad_table_decode"} <= set(REASONS)
    state = PayloadOptions(name="table", file=save_table(tmp_path / "t.npz", table=table)).open()
    assert set(state.states) == {6, 34} and state.states[34].table_id == table.table_id   # one file, both payloads
    with pytest.raises(InputError, match="fitted on 64x64 readouts, this sensor sends 256x32"):
        state.check_shape((256, 32))


def test_table_packet_reproduces_the_1bit_readout_and_host_checks_the_table(table):
    readout = levels(structured(1, seed=8)[0], level=30)
    data = packet(readout, table, level=30)
    assert data[6] == 6 and len(data) < OVERHEAD_BYTES + 0.7 * 512
    want = decode_packet(packet(readout, None, encoding="1bit", level=30)).readout
    got = decode_packet(data, expect_model=MODEL, expect_shape=(64, 64), states={"table": table})
    assert np.array_equal(got.readout, want)
    other = fit_table(structured(50, seed=12))
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64), states={"table": other})
    at = PACKET_HEADER_BYTES + HEADER_BYTES + 3
    tampered = recrc(data[:at] + bytes([data[at] ^ 0x08]) + data[at + 1:])
    assert dec.decode(data) is None                                      # another table: never decoded
    good = PacketDecoder(expect_model=MODEL, shape=(64, 64), states={"table": table})
    assert good.decode(tampered) is None and good.decode(data) is not None
    bare = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert bare.decode(data) is None
    assert dec.rejected == {"wrong_table": 1} and good.rejected == {"bad_table_decode": 1}
    assert bare.rejected == {"no_table": 1}


def test_table_falls_back_to_raw_bits_when_not_shorter(table):
    noise = levels((np.random.default_rng(2).random((64, 64)) < 0.5).astype(np.uint8))
    data = packet(noise, table)
    assert data[6] == 1 and len(data) == OVERHEAD_BYTES + 512     # marked by the header: the 1bit payload
    assert np.array_equal(decode_packet(data).readout, decode_packet(packet(noise, None, encoding="1bit")).readout)
    noise_maps = np.random.default_rng(3).integers(0, 2, (256, 32), dtype=np.uint8)
    data = encode_readout(noise_maps, model_id=MODEL, stream_id=1, seq=0, encoding="levels1-table",
                          coder=fit_table(structured(20, (256, 32))))
    assert data[6] == get_payload("levels1").wire_id and np.array_equal(decode_packet(data).readout, noise_maps)


def test_levels1_table_packets_and_the_layout_choice(stacked_table):
    from core.readout_layout import ReadoutLayout

    window = np.stack([np.roll(structured(1, (32, 32), seed=13)[0], k, axis=1) for k in range(8)]).reshape(256, 32)
    data = encode_readout(window, model_id=MODEL, stream_id=1, seq=0, encoding="levels1-table", coder=stacked_table)
    assert data[6] == 34 and data[7] == 0 and len(data) - OVERHEAD_BYTES < 0.6 * 1024
    got = decode_packet(data, expect_shape=(256, 32), states={"levels1-table": stacked_table})
    assert np.array_equal(got.readout, window)
    leveled = recrc(data[:7] + b"\x05" + data[8:])
    with pytest.raises(PacketError) as info:
        decode_packet(leveled, expect_shape=(256, 32), states={"levels1-table": stacked_table})
    assert info.value.reason == "bad_encoding"
    one = ReadoutLayout.every(2, timesteps=16, bits=1, pool=2)
    authors = ReadoutLayout.every(0, timesteps=16)
    assert choose_layout_payload(one, "table") == choose_layout_payload(one, "levels1-table") == "levels1-table"
    assert "levels1-table" in layout_payloads(one) and choose_layout_payload(authors, "table") == "table"
    with pytest.raises(InputError, match="1-bit readouts; this model reads out the authors'.*table"):
        choose_layout_payload(authors, "levels1-table")


# --- real readouts, the command and the camera loop -----------------------------------------------
@pytest.fixture(scope="module")
def grid_readouts():
    """Real GRID clips through the sensor programs of BUNDLES (torch-free): lips and gesture (8 maps of
    32x32, 1 bit) and authors (the authors' 64x64 8-bit readout)."""
    from edge.models import load_sensor_program
    from firmware_sim.simulate import simulate

    with np.load(need(DATA / "grid_s1_digits.npz"), allow_pickle=False) as d:
        frames, labels = d["frames"][:120], d["labels"][:120]
    out = {}
    for name, bundle in BUNDLES.items():
        weights = load_sensor_program(bundle / "sensor_weights.npz")
        out[name] = (simulate(weights=weights, frames=frames, stages=()).readout, weights.program_hash())
    return out, labels


def test_real_readouts_round_trip_and_compress(grid_readouts):
    out, _ = grid_readouts
    lips, gesture = (out[name][0].reshape(-1, 256, 32) for name in ("lips", "gesture"))
    signs = (out["authors"][0] >= 127).astype(np.uint8)
    for bits, raw in ((lips, 1024), (gesture, 1024), (signs, 512)):
        t = fit_table(bits[:100])
        sizes = []
        for b in bits[100:]:
            payload = encode_bits(b, table=t)
            assert np.array_equal(decode_bits(payload, table=t), b)
            sizes.append(len(payload))
        assert np.mean(sizes) < 0.9 * raw, (raw, sizes)


def test_fit_table_command(grid_readouts, tmp_path):
    from edge.fit_table import main

    out, labels = grid_readouts
    readouts, program = out["lips"]
    src = tmp_path / "r.npz"
    np.savez(src, readout=readouts, labels=labels, program_hash=np.array(program))
    assert main(["--readouts", str(src), "--out", str(tmp_path / "t.npz")]) == 0
    t = load_table(tmp_path / "t.npz")
    assert t.shape == (256, 32) and t.program_hash == program and t.windows < len(readouts)   # no test fold
    assert main(["--readouts", str(src), "--out", str(tmp_path / "u.npz"), "--folds", "train+val"]) == 0
    assert load_table(tmp_path / "u.npz").windows > t.windows
    np.savez(tmp_path / "two.npz", readout=readouts * 3, labels=labels)
    np.savez(tmp_path / "nolabels.npz", readout=readouts)
    for argv in (["--readouts", str(tmp_path / "nope.npz")], ["--readouts", str(tmp_path / "two.npz")],
                 ["--readouts", str(tmp_path / "nolabels.npz")],
                 ["--readouts", str(src), "--out", str(tmp_path / "no" / "t.npz")]):
        argv = argv + ([] if "--out" in argv else ["--out", str(tmp_path / "x.npz")])
        assert main(argv) == 2
    assert not (tmp_path / "x.npz").exists()


def test_fit_table_is_a_pixelrnn_subcommand(tmp_path, capsys):
    """``pixelrnn fit-table``: bad input is one line on stderr and exit code 2 (core.cli)."""
    from core.cli import commands
    from core.cli import main as cli

    if "fit-table" not in {ep.name for ep in commands()}:
        pytest.skip("the installed entry points predate fit-table: pip install -e . again")
    assert cli(["fit-table", "--readouts", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "t.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pixelrnn fit-table: error: readouts file not found") and "\n" not in err


def test_camera_loop_sends_table_coded_readouts(grid_readouts, tmp_path):
    """Both bundled models and the authors' readout over the camera loop: --payload table (with its file as
    --prior) decides exactly as the uncoded payload does; a table fitted on another layout is refused in one
    line."""
    from edge import CameraLoop, CameraLoopOptions

    out, labels = grid_readouts
    files = {}
    for name, (readouts, program) in out.items():
        bits = readouts.reshape(len(readouts), -1, readouts.shape[-1]) if readouts.ndim == 4 else readouts >= 127
        files[name] = save_table(tmp_path / f"{name}.npz", table=fit_table(bits.astype(np.uint8), program_hash=program))
    for name, plain_payload, used in (("lips", "8bit", "levels1-table"), ("gesture", "8bit", "levels1-table"),
                                      ("authors", "1bit", "table")):
        runs = {}
        for payload, prior in ((plain_payload, None), ("table", files[name])):
            got = []
            with CameraLoop.create_from_options(CameraLoopOptions(bundle_path=BUNDLES[name], payload=payload,
                                                                  prior=prior, roi="center", max_frames=48)) as loop:
                result = loop.run("test", on_decision=got.append)
            runs[payload] = (result.summary, [d.logits for d in got])
        (plain, plain_logits), (coded, coded_logits) = runs[plain_payload], runs["table"]
        assert coded["payload"] == used and coded["malformed"] == {} and len(coded_logits) == 3
        assert coded_logits == plain_logits                  # the same levels reach the decoder
        assert coded["bytes"]["payload_per_window"] <= plain["bytes"]["payload_per_window"]   # never above raw
        assert coded[used]["table_hash"] == load_table(files[name]).table_hash
    with pytest.raises(InputError, match="fitted on 64x64 readouts, this sensor sends 256x32"):
        with CameraLoop.create_from_options(CameraLoopOptions(task="lips", payload="table", prior=files["authors"],
                                                              roi="center", max_frames=16)) as loop:
            loop.run("test", on_decision=lambda d: None)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300), k=st.integers(2, 5))
def test_encode_all_writes_what_encode_writes(seed, n, k):
    """core.arith's batch call (the table encoder's) gives the bytes of one encode call per symbol."""
    from core.arith import ArithmeticDecoder, ArithmeticEncoder

    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, 2**16), size=(n, k - 1)), axis=1)
    cums = np.concatenate([np.zeros((n, 1), np.int64), cuts, np.full((n, 1), 2**16)], axis=1)
    ok = (np.diff(cums, axis=1) > 0).all(axis=1)
    cums = cums[ok]
    symbols = rng.integers(0, k, len(cums))
    one, batch = ArithmeticEncoder(precision_bits=16), ArithmeticEncoder(precision_bits=16)
    for s, cum in zip(symbols.tolist(), cums.tolist()):
        one.encode(s, cum)
    batch.encode_all(symbols, cums)
    data = batch.finish()
    assert data == one.finish() and batch.num_symbols == len(cums)
    dec = ArithmeticDecoder(data, precision_bits=16)
    assert [dec.decode(cum) for cum in cums.tolist()] == symbols.tolist()
    with pytest.raises(ValueError, match="empty or invalid range"):
        ArithmeticEncoder(precision_bits=16).encode_all([0], [[0, 0, 2**16]])
