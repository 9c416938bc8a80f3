"""The learned readout prior on the edge (core/prior_coder.py, core/arith.py, the "prior" packet payload):
torch-free coding, the prior file, the packet round trip and its rejections, and the camera loop."""
from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import AUTHORS_BUNDLES, REPO
from core.arith import quantize_probs
from core.prior_coder import FORMAT, PriorCoder, PriorMismatch, _binary_table, load_prior, prior_shapes, save_prior
from edge.packet import (
    DEFAULT_LEVEL,
    ENC_1BIT,
    ENC_PRIOR,
    OVERHEAD_BYTES,
    PAYLOADS,
    REASONS,
    PacketDecoder,
    PacketError,
    decode_packet,
    encode_readout,
    max_payload_bytes,
)

MODEL = "0123456789abcdef"
# a bundle with the authors' readout (o_16, 8 bit): the 1bit and prior payloads apply to it (the default
# models read out 1-bit levels of their own layouts since issue 12): the fixture the old default gesture became
AUTHORS_BUNDLE = AUTHORS_BUNDLES / "gesture"


def random_prior(seed: int = 0, *, hidden: int = 4, layers: int = 2, kernel: int = 3, num_classes: int = 2,
                 scale: float = 0.5):
    """Random weights in the prior layout (no torch): any weights are a valid prior."""
    meta = {"num_classes": num_classes, "hidden": hidden, "kernel": kernel, "layers": layers}
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0.0, scale, s) for n, s in prior_shapes(meta).items()}, meta


@pytest.fixture(scope="module")
def coder() -> PriorCoder:
    return PriorCoder(*random_prior(0))


@pytest.fixture(scope="module")
def torch_prior():
    torch = pytest.importorskip("torch")
    from pixelrnn.generative import GatedPixelCNN

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(3)
    model = GatedPixelCNN(num_classes=2, hidden=6, num_layers=3, kernel_size=5).eval()
    yield model
    torch.set_num_threads(before)


def stripes(h: int = 16, w: int = 16) -> np.ndarray:
    """A structured 1-bit readout (diagonal stripes + a block) as uint8 levels around 127."""
    r, c = np.mgrid[:h, :w]
    bits = ((r + c) // 3) % 2 == 0
    bits[2:6, 3:9] = True
    return np.where(bits, 180, 60).astype(np.uint8)


def recrc(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


# --- coder and prior file -------------------------------------------------------------------------
def test_readout_coder_and_loaded_prior_give_identical_payloads(torch_prior, tmp_path):
    from pixelrnn.generative.readout_coder import ReadoutCoder

    ref = ReadoutCoder(torch_prior)
    path = ref.save(tmp_path / "prior.npz")
    loaded = load_prior(path)
    assert loaded.prior_hash == ref.prior_hash and len(ref.prior_hash) == 16
    assert loaded.prior_id == bytes.fromhex(ref.prior_hash)[:8]
    rng = np.random.default_rng(1)
    for bits in ((stripes() >= 127), rng.integers(0, 2, (9, 23)), np.zeros((1, 1), np.uint8)):
        payload = ref.encode(bits)
        assert loaded.encode(bits) == payload                                 # same bytes on both sides
        assert payload[:4] == struct.pack("!I", zlib.crc32(bits.astype(np.uint8).tobytes()))
        assert np.array_equal(loaded.decode(payload, shape=bits.shape), bits.astype(np.uint8))
        assert np.array_equal(ref.decode(loaded.encode(bits), shape=bits.shape), bits.astype(np.uint8))
    assert load_prior(ReadoutCoder(torch_prior, precision_bits=12).save(tmp_path / "p12.npz")).precision_bits == 12


def test_stepper_runs_on_the_numpy_core(torch_prior):
    """GatedStepper (torch-side sampling) delegates to the same numpy core the edge coder runs."""
    import torch

    from core.prior_coder import GatedPriorNet, GatedPriorSteps
    from pixelrnn.generative.gated import gated_prior_arrays, gated_prior_meta

    model = copy.deepcopy(torch_prior).double()
    stepper = model.stepper(batch=1, image_shape=(5, 6))
    assert isinstance(stepper._steps, GatedPriorSteps)
    steps = GatedPriorNet(gated_prior_arrays(model), gated_prior_meta(model)).steps(batch=1, width=6)
    x = np.random.default_rng(2).integers(0, 2, (1, 5, 6))
    for i in range(30):
        r, c = divmod(i, 6)
        assert np.array_equal(stepper.logits(torch.from_numpy(x), r, c).numpy(), steps.logits(x, r, c))
    arrays32 = gated_prior_arrays(copy.deepcopy(torch_prior).float())
    assert arrays32["head.b2"].dtype == np.float32                                # the model's dtype
    with pytest.raises(ValueError, match="dtype float32, expected float64"):
        PriorCoder(arrays32, gated_prior_meta(model))


@pytest.mark.device
def test_binary_table_equals_quantize_probs():
    rng = np.random.default_rng(4)
    logits = np.concatenate([rng.normal(0, 3, (3000, 2)), rng.normal(0, 40, (500, 2)),
                             np.array([[0.0, 0.0], [800.0, -800.0], [-1e-300, 1e-300], [5.0, 5.0 + 1e-15]])])
    for bits in (16, 12, 30):
        for z in logits:
            e = np.exp(z - z.max())
            f = quantize_probs(e / e.sum(), precision_bits=bits).tolist()
            assert _binary_table(z, 1 << bits) == [0, f[0], 1 << bits], (z, bits)


@pytest.mark.device
def test_prior_mismatch_and_corruption_are_detected(coder):
    bits = stripes() >= 127
    payload = coder.encode(bits)
    other = PriorCoder(*random_prior(1))
    with pytest.raises(PriorMismatch, match="another prior"):
        other.decode(payload, shape=bits.shape)
    with pytest.raises(PriorMismatch):
        coder.decode(payload[:4] + bytes([payload[4] ^ 0x40]) + payload[5:], shape=bits.shape)
    with pytest.raises(PriorMismatch):
        coder.decode(payload, shape=(16, 15))                   # another shape: other symbols
    with pytest.raises(ValueError, match="shorter"):
        coder.decode(payload[:3], shape=bits.shape)
    assert issubclass(PriorMismatch, ValueError)


@pytest.mark.device
def test_prior_hash_covers_arrays_meta_and_precision(tmp_path):
    arrays, meta = random_prior(0)
    a = PriorCoder(arrays, meta)
    assert PriorCoder({k: v.copy() for k, v in arrays.items()}, dict(meta)).prior_hash == a.prior_hash
    assert PriorCoder(arrays, meta, precision_bits=15).prior_hash != a.prior_hash
    tweaked = dict(arrays, **{"layer1.out_b": arrays["layer1.out_b"] + 1e-12})
    assert PriorCoder(tweaked, meta).prior_hash != a.prior_hash
    assert load_prior(a.save(tmp_path / "a.npz")).prior_hash == a.prior_hash


def bad_file(tmp_path, name: str, edit) -> str:
    arrays, meta = random_prior(0)
    path = save_prior(tmp_path / "good.npz", arrays, meta)
    with np.load(path, allow_pickle=False) as d:
        content = {k: d[k] for k in d.files}
    edit(content)
    out = tmp_path / name
    np.savez(out, **content)
    return out


@pytest.mark.device
@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("format"), "no format tag"),
    (lambda c: c.update(format=np.array("something/v9")), "format 'something/v9'"),
    (lambda c: c.pop("meta.hidden"), "lacks meta.hidden"),
    (lambda c: c.update({"meta.layers": np.array(3)}), "missing 'layer2.v_w'"),
    (lambda c: c.pop("layer1.h_w"), "missing 'layer1.h_w'"),
    (lambda c: c.update(extra=np.zeros(3)), "unexpected 'extra'"),
    (lambda c: c.update({"head.w2": np.zeros((4, 3))}), "'head.w2' has shape (4, 3), expected (4, 2)"),
    (lambda c: c.update({"layer0.v_b": c["layer0.v_b"].astype(np.float32)}), "dtype float32, expected float64"),
    (lambda c: c["layer0.v_b"].__setitem__(0, np.nan), "NaN"),
    (lambda c: c.update({"meta.kernel": np.array(4)}), "must be odd"),
    (lambda c: c.update({"meta.precision_bits": np.array(0)}), "precision_bits"),
])
def test_load_prior_rejects_bad_files_in_one_line(tmp_path, edit, message):
    with pytest.raises(ValueError) as info:
        load_prior(bad_file(tmp_path, "bad.npz", edit))
    text = str(info.value)
    assert message in text and "\n" not in text and "bad.npz" in text, text


@pytest.mark.device
def test_load_prior_rejects_non_prior_files(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    np.savez(tmp_path / "obj.npz", format=np.array([{"a": 1}], dtype=object))
    for name, message in (("missing.npz", "not found"), ("text.npz", "not a readable prior file"),
                          ("plain.npy", "plain .npy"), ("obj.npz", "not a readable prior file")):
        with pytest.raises(ValueError) as info:
            load_prior(tmp_path / name)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        save_prior(tmp_path / "no" / "dir.npz", *random_prior(0))
    with np.load(save_prior(tmp_path / "ok.npz", *random_prior(0)), allow_pickle=False) as d:
        assert str(d["format"]) == FORMAT and d["layer0.v_w"].dtype == np.float64


@pytest.mark.device
def test_k_level_prior_round_trip():
    coder = PriorCoder(*random_prior(5, num_classes=5, kernel=5, layers=1))
    symbols = np.random.default_rng(5).integers(0, 5, (7, 9))
    assert np.array_equal(coder.decode(coder.encode(symbols), shape=(7, 9)), symbols)
    with pytest.raises(ValueError, match="symbol"):
        coder.encode(symbols + 1)


@pytest.mark.device
def test_edge_modules_import_and_code_without_torch(tmp_path):
    path = save_prior(tmp_path / "p.npz", *random_prior(0))
    code = f"""
import sys
sys.modules["torch"] = None
import numpy as np
import core.arith, core.prior_coder, edge.packet, edge.sensor_stage, edge.host, edge.pipeline
coder = core.prior_coder.load_prior({str(path)!r})
bits = np.random.default_rng(0).integers(0, 2, (8, 8))
assert (coder.decode(coder.encode(bits), shape=(8, 8)) == bits).all()
print(coder.prior_hash)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == load_prior(path).prior_hash


# --- packets --------------------------------------------------------------------------------------
def prior_packet(readout, coder, seq=0, **kw):
    return encode_readout(readout, model_id=MODEL, stream_id=7, seq=seq, encoding=ENC_PRIOR, coder=coder, **kw)


@pytest.mark.device
def test_prior_packet_reproduces_the_1bit_readout(coder):
    readout = stripes()
    data = prior_packet(readout, coder, level=30)
    want = decode_packet(encode_readout(readout, model_id=MODEL, stream_id=7, seq=0, encoding=ENC_1BIT, level=30))
    p = decode_packet(data, expect_model=MODEL, coder=coder)
    assert p.encoding == ENC_PRIOR and np.array_equal(p.readout, want.readout)
    assert set(np.unique(p.readout)) <= {127 - 30, 127 + 30} and p.nbytes == len(data)
    assert data[OVERHEAD_BYTES - 4:OVERHEAD_BYTES + 4] == coder.prior_id            # payload starts with the id
    assert PAYLOADS["prior"] == ENC_PRIOR == 2
    assert {"no_prior", "wrong_prior", "bad_prior_decode"} <= set(REASONS)
    # zero readout (o = 0 is +1) and a tiny one
    assert (decode_packet(prior_packet(np.full((3, 5), 127, np.uint8), coder), coder=coder).readout
            == 127 + DEFAULT_LEVEL).all()


@pytest.mark.device
def test_prior_packet_rejections_are_counted(coder):
    readout = stripes()
    good = prior_packet(readout, coder)
    other = PriorCoder(*random_prior(1))
    length = struct.unpack_from("!I", good, 36)[0]
    # tamper with the arithmetic-coded bytes (after the id and the symbol CRC), re-seal the packet CRC
    pos = OVERHEAD_BYTES - 4 + 8 + 4 + 2
    tampered = recrc(good[:pos] + bytes([good[pos] ^ 0x10]) + good[pos + 1:])
    too_long = max_payload_bytes((16, 16), ENC_PRIOR) + 1
    long_packet = recrc(good[:36] + struct.pack("!I", too_long) + good[40:-4] + bytes(too_long - length) + b"\0" * 4)
    short_packet = recrc(good[:36] + struct.pack("!I", 11) + good[40:51] + b"\0" * 4)
    cases = [(good, None, "no_prior"), (good, other, "wrong_prior"), (tampered, coder, "bad_prior_decode"),
             (long_packet, coder, "bad_length"), (short_packet, coder, "bad_length")]
    for data, host_coder, reason in cases:
        dec = PacketDecoder(expect_model=MODEL, shape=(16, 16), coder=host_coder)
        assert dec.decode(data) is None, reason
        assert dec.rejected == {reason: 1} and dec.accepted == 0
        with pytest.raises(PacketError) as info:
            decode_packet(data, coder=host_coder)
        assert info.value.reason == reason
    dec = PacketDecoder(expect_model=MODEL, shape=(16, 16), coder=coder)
    assert dec.decode(good) is not None and dec.accepted == 1
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64), coder=coder)     # checked before decoding
    assert dec.decode(good) is None and dec.rejected == {"bad_shape": 1}


@pytest.mark.device
def test_prior_that_codes_too_long_falls_back_to_1bit():
    arrays, meta = random_prior(0, scale=0.0)
    arrays["head.b2"] = np.array([30.0, -30.0])               # "always 0", sure of it: 1s cost 16 bits
    sure = PriorCoder(arrays, meta)
    ones = np.full((16, 16), 200, np.uint8)
    data = prior_packet(ones, sure)
    assert data[6] == ENC_1BIT and len(data) == 32 + OVERHEAD_BYTES
    assert (decode_packet(data, coder=sure).readout == 127 + DEFAULT_LEVEL).all()
    zeros = prior_packet(np.zeros((16, 16), np.uint8), sure)   # what it expects: a few bytes
    assert zeros[6] == ENC_PRIOR and len(zeros) <= OVERHEAD_BYTES + 8 + 4 + 2


@pytest.mark.device
def test_prior_encoding_needs_a_binary_coder(coder):
    with pytest.raises(ValueError, match="needs a coder"):
        prior_packet(stripes(), None)
    with pytest.raises(ValueError, match="2 levels"):
        prior_packet(stripes(), PriorCoder(*random_prior(0, num_classes=3)))
    with pytest.raises(ValueError, match="variable size"):
        from edge.packet import payload_bytes
        payload_bytes((64, 64), ENC_PRIOR)


# --- the camera loop ------------------------------------------------------------------------------
def run_main(argv, capsys):
    from edge.run_camera import main

    code = main([str(a) for a in argv], source=None)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    """A random prior in the file format (no torch: the camera loop's correctness does not depend on the
    weights; the torch side's files are checked against load_prior above)."""
    return save_prior(tmp_path_factory.mktemp("prior") / "readout_prior.npz", *random_prior(0, hidden=4, layers=1))


@pytest.mark.device
def test_camera_loop_prior_payload_matches_1bit(prior_file, capsys, tmp_path):
    assert (AUTHORS_BUNDLE / "manifest.json").is_file(), f"no fixture bundle at {AUTHORS_BUNDLE}"
    common = ["--source", "test", "--headless", "--max-frames", 32, "--model", AUTHORS_BUNDLE]
    runs = {}
    for payload in ("1bit", "prior"):
        out = tmp_path / f"{payload}.jsonl"
        extra = ["--prior", prior_file] if payload == "prior" else []
        code, stdout, stderr = run_main(common + ["--payload", payload, "--json-out", out, *extra], capsys)
        assert code == 0, stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        runs[payload] = (lines[:-1], lines[-1]["summary"], stderr)
    keys = ("window", "class", "label", "score", "logits")
    one, prior = runs["1bit"][0], runs["prior"][0]
    assert len(one) == 2 and [{k: w[k] for k in keys} for w in one] == [{k: w[k] for k in keys} for w in prior]
    s = runs["prior"][1]
    sizes = [w["bytes"] for w in prior]
    assert s["payload"] == "prior" and s["malformed"] == {} and s["decisions"] == 2
    assert s["bytes"]["per_window"] == pytest.approx(np.mean(sizes), abs=0.05)           # the real mean
    assert s["bytes"]["payload_per_window"] == pytest.approx(np.mean(sizes) - OVERHEAD_BYTES, abs=0.05)
    assert s["bytes"]["sent"] == sum(sizes) + OVERHEAD_BYTES                               # + the end packet
    assert all(OVERHEAD_BYTES + 12 <= b <= OVERHEAD_BYTES + max_payload_bytes((64, 64), ENC_PRIOR) for b in sizes)
    assert s["prior"]["prior_hash"] == load_prior(prior_file).prior_hash and s["prior"]["fallback_1bit_windows"] == 0
    assert s["latency_ms"]["encode"]["n"] == 2 and s["latency_ms"]["packet_decode"]["n"] == 2
    assert "payload prior" in runs["prior"][2]
    assert runs["1bit"][1]["bytes"]["payload_per_window"] == 512
    # the same over UDP to a host process, which loads its own copy of the prior
    out = tmp_path / "udp.jsonl"
    code, _, stderr = run_main(common + ["--payload", "prior", "--prior", prior_file, "--link", "udp://127.0.0.1:0",
                                         "--json-out", out], capsys)
    assert code == 0, stderr
    udp = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: w[k] for k in keys} for w in udp[:-1]] == [{k: w[k] for k in keys} for w in one]
    assert udp[-1]["summary"]["malformed"] == {}


@pytest.mark.device
def test_prior_flag_errors_are_one_line(prior_file, capsys, tmp_path):
    assert (AUTHORS_BUNDLE / "manifest.json").is_file(), f"no fixture bundle at {AUTHORS_BUNDLE}"
    (tmp_path / "junk.npz").write_bytes(b"junk")
    common = ["--source", "test", "--headless", "--max-frames", 16, "--model", AUTHORS_BUNDLE]
    for extra, message in ((["--payload", "prior"], "--payload prior needs --prior FILE.npz"),
                           (["--payload", "prior", "--prior", tmp_path / "none.npz"], "--prior: prior file not found"),
                           (["--payload", "prior", "--prior", tmp_path / "junk.npz"], "not a readable prior file"),
                           (["--payload", "1bit", "--prior", prior_file], "--prior is only used with --payload prior")):
        code, stdout, stderr = run_main(common + extra, capsys)
        assert code == 2, (extra, stderr)
        assert stderr.count("\n") == 1 and message in stderr and stdout == "", stderr
