"""The sensor simulator with a ReadoutLayout: every path computes the layout's readout, identically.

fast (the float64 oracle) == packed (table look-ups) == the instruction-level program, on random
layouts and weights (noise off: levels, output and every binary state); fast == packed with
noise on (the same draws in the same order); the authors' layout exactly as before layouts.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from core.readout_layout import ReadoutLayout
from firmware_sim import fast, packed
from firmware_sim.noise import NoiseModel
from firmware_sim.ppa import SATURATION
from firmware_sim.program import (
    SCAMP5_ANALOG,
    SCAMP5_DIGITAL,
    check_registers,
    clip_cost,
    frame_cost,
    level_thresholds,
    registers_needed,
    run_clips_instruction,
)
from firmware_sim.weights import SensorWeights

pytestmark = pytest.mark.device   # base install only: no torch, no TensorFlow

BINARY = packed.PACKED_STAGES


def _random_layout(rng: np.random.Generator) -> ReadoutLayout:
    t = int(rng.choice([4, 8, 16]))
    n_frames = int(rng.integers(1, min(t, 4) + 1))
    frames = tuple(sorted(int(f) for f in rng.choice(np.arange(1, t + 1), n_frames, replace=False)))
    return ReadoutLayout(frames=frames, channels=int(rng.integers(1, 5)), bits=int(rng.choice([1, 2, 4, 8])),
                         pool=int(rng.choice([1, 2, 4])), timesteps=t)


_DRAWS = np.random.default_rng(20260101)
LAYOUTS = [_random_layout(_DRAWS) for _ in range(15)]


def _id(layout: ReadoutLayout) -> str:
    return f"T{layout.timesteps}-f{'.'.join(map(str, layout.frames))}-K{layout.channels}-b{layout.bits}-p{layout.pool}"


def _clips(rng, n, t, size=64, block=1):
    """Random +-1 clips, constant over block x block squares (blocks make large sums: |o| > 25.6)."""
    low = np.where(rng.random((n, t, size // block, size // block)) < 0.5, -1, 1).astype(np.int8)
    return np.repeat(np.repeat(low, block, axis=2), block, axis=3)


def _weights(rng, layout, thresholds=None):
    weights = SensorWeights.random(rng, layout=layout)
    if thresholds is not None:
        weights = dataclasses.replace(weights, thresh1=thresholds[0], rnn_threshold=thresholds[1])
    return weights


def _assert_same(got, want, stages=BINARY):
    for name in stages:
        assert np.array_equal(got.stages[name], want.stages[name]), name
    assert got.readout.dtype == want.readout.dtype == np.uint8
    assert got.readout.shape == want.readout.shape
    assert np.array_equal(got.readout, want.readout)
    assert got.output.dtype == want.output.dtype == np.float32
    assert np.array_equal(got.output, want.output)


def _assert_program_same(got, want, layout):
    """The program's output is its register: the 8-bit o register saturates at +-25.6 (never
    changing the 8-bit level); below 8 bits it reports 2 v, exact."""
    for name in BINARY:
        assert np.array_equal(got.stages[name], want.stages[name]), name
    assert np.array_equal(got.readout, want.readout)
    expected = np.clip(want.output, -SATURATION, SATURATION) if layout.bits == 8 else want.output
    assert np.array_equal(got.output, expected.astype(np.float32))


# ----- the three paths agree ----------------------------------------------------------------------

@pytest.mark.parametrize("index", range(len(LAYOUTS)), ids=[_id(lay) for lay in LAYOUTS])
def test_fast_packed_and_instruction_paths_agree_without_noise(index):
    layout = LAYOUTS[index]
    rng = np.random.default_rng(1000 + index)
    # every other case: strongly negative gate threshold (h stays +1) and blocky clips: big sums
    thresholds = (float(rng.uniform(0, 3)), -60.0) if index % 2 else None
    weights = _weights(rng, layout, thresholds)
    x = _clips(rng, 2, layout.timesteps, block=8 if index % 2 else 1)
    want = fast.run_clips(x, weights, stages=BINARY)
    assert want.readout.shape == (2, layout.maps, layout.side, layout.side)
    assert want.levels.shape == want.readout.shape and want.output.shape == want.readout.shape
    assert int(want.readout.max()) <= layout.max_level
    _assert_same(packed.run_clips(x, weights, stages=BINARY), want)
    _assert_same(packed.run_clips(x, weights, stages=BINARY, chunk=1, frame_chunk=3), want)
    _assert_program_same(run_clips_instruction(x, weights, stages=BINARY), want, layout)
    # the levels are the layout's quantization of the output, map by map (frame-major)
    assert np.array_equal(layout.quantize(want.output.astype(np.float64)), want.readout)


NOISES = [NoiseModel.authors(), NoiseModel(gate_sigma=0.6), NoiseModel(out_sigma=1.0),
          NoiseModel(conv_sigma=0.6, gate_sigma=0.6, out_sigma=1.0, out_gain=0.8, out_offset=0.3),
          NoiseModel(out_sigma=0.5, out_offset=-0.25, offset_map=np.linspace(-1, 1, 64 * 64).reshape(64, 64))]


@pytest.mark.parametrize("index", range(len(LAYOUTS)), ids=[_id(lay) for lay in LAYOUTS])
def test_fast_equals_packed_with_noise(index):
    """The same draws in the same order: conv, then per frame its gate and, when read out, its
    output (n, K, H, W), so the numbers, not only their statistics, agree."""
    layout = LAYOUTS[index]
    rng = np.random.default_rng(2000 + index)
    weights = _weights(rng, layout, (float(rng.uniform(0, 3)), 0.5))     # a gate that opens and closes
    noise = NOISES[index % len(NOISES)]
    x = _clips(rng, 3, layout.timesteps)
    want = fast.run_clips(x, weights, noise=noise, rng=np.random.default_rng(index), stages=BINARY)
    got = packed.run_clips(x, weights, noise=noise, rng=np.random.default_rng(index), stages=BINARY,
                           chunk=2)
    _assert_same(got, want)
    quiet = fast.run_clips(x, weights, stages=BINARY)
    assert not (np.array_equal(want.output, quiet.output)         # the noise did something
                and np.array_equal(want.stages["7_forget_gate_x"], quiet.stages["7_forget_gate_x"]))


@pytest.mark.parametrize("bits,step,pool", [(4, 0.3, 2), (4, 7.3, 1), (2, 13.0, 4), (1, 1 / 3, 2), (2, 0.1, 1),
                                            (4, 2.0, 2), (8, 0.0, 2), (8, 0.0, 1)])
def test_sums_beyond_the_register_range_and_custom_steps_agree(bits, step, pool):
    """|o| up to 50 (beyond the register's +-25.6), thresholds that are not multiples of a power of
    two or lie beyond +-25.6: the instruction path still equals the fast path."""
    layout = ReadoutLayout(frames=(2, 4), channels=2, bits=bits, pool=pool, step=step, timesteps=4)
    ones = np.ones((5, 5), np.int8)
    rng = np.random.default_rng(bits * 100 + pool)
    # h stays +1 (gate always open), so oh = +-25 inside; oi follows x_t
    weights = SensorWeights(conv1=np.ones((16, 5, 5), np.int8), thresh1=8.0, w_fi=ones, w_fh=ones,
                            w_oi=np.stack([ones, -ones]), w_oh=np.stack([ones, ones]), rnn_threshold=-60.0,
                            timesteps=4, layout=layout)
    x = _clips(rng, 2, 4, block=8)
    want = fast.run_clips(x, weights, stages=BINARY)
    assert np.abs(want.output).max() > SATURATION
    _assert_same(packed.run_clips(x, weights, stages=BINARY), want)
    _assert_program_same(run_clips_instruction(x, weights, stages=BINARY), want, layout)


def test_level_thresholds_are_the_exact_quantization():
    for layout in (ReadoutLayout(bits=4), ReadoutLayout(bits=2, step=0.3), ReadoutLayout(bits=1),
                   ReadoutLayout(bits=4, step=1 / 3)):
        thresholds = level_thresholds(layout)
        assert len(thresholds) == layout.max_level
        values = np.concatenate([np.array(thresholds), np.nextafter(thresholds, -np.inf),
                                 np.linspace(-40, 40, 8001)])
        counted = (values[:, None] >= np.array(thresholds)[None, :]).sum(1)
        assert np.array_equal(counted, layout.quantize(values))


def test_other_sizes_and_the_instruction_path_on_16x16():
    layout = ReadoutLayout(frames=(1, 3), channels=2, bits=2, pool=4, timesteps=3)
    rng = np.random.default_rng(5)
    weights = _weights(rng, layout)
    for size in (16, 32):
        x = _clips(rng, 2, 3, size)
        want = fast.run_clips(x, weights, stages=BINARY)
        assert want.readout.shape == (2, 4, size // 4, size // 4)
        _assert_same(packed.run_clips(x, weights, stages=BINARY), want)
    _assert_program_same(run_clips_instruction(x[..., :16, :16], weights, stages=BINARY),
                         fast.run_clips(x[..., :16, :16], weights, stages=BINARY), layout)


# ----- the authors' layout is what it was ---------------------------------------------------------

def test_authors_layout_is_bit_identical_to_before_layouts():
    """Hashes of results computed before ReadoutLayout existed (same seeds, the authors' noise)."""
    rng = np.random.default_rng(2024)
    weights = SensorWeights.random(rng)
    assert weights.layout == ReadoutLayout(timesteps=16) and weights.layout.is_authors
    assert weights.w_oi.shape == weights.w_oh.shape == (1, 5, 5)
    assert weights.program_hash() == "68a1b46cac07eefc"
    x = np.where(rng.random((2, 6, 64, 64)) < 0.5, -1, 1).astype(np.int8)
    golden = {fast.run_clips: "5bd30b6c2673f212", packed.run_clips: "5bd30b6c2673f212",
              run_clips_instruction: "91ceb1ac43756731"}
    for fn, digest in golden.items():
        res = fn(x, weights, noise=NoiseModel.authors(), rng=np.random.default_rng(7))
        assert res.readout.shape == res.output.shape == (2, 64, 64)
        assert res.levels.shape == (2, 1, 64, 64)
        assert hashlib.sha256(res.readout.tobytes() + res.output.tobytes()).hexdigest()[:16] == digest
    assert (frame_cost(weights)["instructions"], frame_cost(weights, last=True)["instructions"],
            clip_cost(weights)["instructions"]) == (2237, 2291, 35849)


def test_authors_layout_written_explicitly_is_the_same_program():
    rng = np.random.default_rng(3)
    base = SensorWeights.random(rng)
    explicit = dataclasses.replace(base, w_oi=base.w_oi[0], w_oh=base.w_oh[0],
                                   layout=ReadoutLayout(frames=(16,), channels=1, bits=8, pool=1))
    assert explicit.program_hash() == base.program_hash()
    stored = base.to_npz_dict()
    assert "layout" not in stored and stored["w_oi"].shape == stored["w_oh"].shape == (5, 5)
    again = SensorWeights.from_npz_dict(stored)
    assert again.layout.is_authors and again.program_hash() == base.program_hash()
    # the same draws as before layouts existed
    assert SensorWeights.random(np.random.default_rng(9), layout=ReadoutLayout()).program_hash() == \
        SensorWeights.random(np.random.default_rng(9)).program_hash()


# ----- the streaming path --------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [ReadoutLayout(frames=(2, 4, 6), channels=3, bits=4, pool=2, timesteps=6),
                                    ReadoutLayout(frames=(1, 6), channels=2, bits=8, pool=1, timesteps=6),
                                    ReadoutLayout(frames=(6,), timesteps=6)], ids=_id)
def test_stream_equals_run_clips(layout):
    rng = np.random.default_rng(11)
    weights = _weights(rng, layout)
    x = _clips(rng, 2, layout.timesteps)
    want = fast.run_clips(x, weights)
    stream = fast.SensorStream(weights)
    got = []
    for clip in x:
        for step, frame in enumerate(clip):
            out = stream.push(frame)
            assert (out is None) == (step < layout.timesteps - 1)
        got.append(out)
    assert got[0].shape == want.readout.shape[1:]
    assert np.array_equal(np.stack(got), want.readout)


# ----- registers and cost ---------------------------------------------------------------------------

def test_every_layout_fits_a_scamp5_element_and_too_many_registers_are_refused():
    for channels in range(1, 5):
        for bits in (1, 2, 4, 8):
            for pool in (1, 2, 4, 8):
                layout = ReadoutLayout(frames=(4,), channels=channels, bits=bits, pool=pool, timesteps=4)
                analog, digital = registers_needed(layout)
                assert len(analog) <= SCAMP5_ANALOG and len(digital) <= SCAMP5_DIGITAL
    with pytest.raises(ValueError, match="needs 8 analog registers, a SCAMP-5 element has 7"):
        check_registers(8, 10)
    with pytest.raises(ValueError, match="needs 15 digital registers, a SCAMP-5 element has 14"):
        check_registers(6, 15)
    check_registers(SCAMP5_ANALOG, SCAMP5_DIGITAL)


def _layout_weights(**kw) -> SensorWeights:
    layout = ReadoutLayout(timesteps=8, **kw)
    weights = SensorWeights.random(np.random.default_rng(0), layout=layout)
    return dataclasses.replace(weights, thresh1=1.0, rnn_threshold=0.5)     # the same gate constants


def test_cost_counts_the_readout_work_of_the_layout():
    authors = _layout_weights(frames=(8,))
    base = frame_cost(authors)["instructions"]
    for kw in ({"frames": (8,), "channels": 4}, {"frames": (4, 8), "bits": 2, "pool": 4}):
        assert frame_cost(_layout_weights(**kw))["instructions"] == base       # a frame without readout
    read = {k: frame_cost(_layout_weights(frames=(8,), channels=k), last=True)["instructions"] for k in (1, 2, 3, 4)}
    assert read[1] < read[2] < read[3] < read[4]
    assert read[1] == frame_cost(authors, last=True)["instructions"]
    pooled = frame_cost(_layout_weights(frames=(8,), pool=4), last=True)
    assert pooled["instructions"] > read[1] and pooled["per_kind"]["half"] == 2 + 2 * 2
    four_bit = frame_cost(_layout_weights(frames=(8,), bits=4), last=True)
    assert four_bit["per_kind"]["readout_bits"] == 4 and "readout" not in four_bit["per_kind"]
    assert four_bit["per_kind"]["compare"] == 1 + 1 + 15      # thresh1, the gate, 15 levels
    clips = {}
    for frames in ((8,), (4, 8), (2, 4, 6, 8), tuple(range(1, 9))):
        cost = clip_cost(_layout_weights(frames=frames, channels=2), size=16)
        assert cost["readout_frames"] == len(frames)
        assert cost["per_kind"]["readout"] == 2 * len(frames)
        clips[len(frames)] = cost
    assert clips[1]["instructions"] < clips[2]["instructions"] < clips[4]["instructions"] < clips[8]["instructions"]
    assert clips[1]["time_s"] < clips[8]["time_s"] and clips[1]["energy_j"] < clips[8]["energy_j"]
    with pytest.raises(ValueError, match="needs 8"):
        clip_cost(_layout_weights(frames=(8,), channels=2), timesteps=6)


# ----- noise on the instruction path (statistics: its draws are its own) ---------------------------

def test_instruction_path_output_noise_is_pooled():
    """x = +1, h = +1: inside the border oi = 25, oh = -25, o = 0; the output noise N(0, 1) per pixel,
    averaged over 2x2 blocks, has std 1/2; the 8-bit level is floor(127 + 10 o)."""
    ones = np.ones((5, 5), np.int8)
    layout = ReadoutLayout(frames=(1,), channels=2, pool=2, timesteps=1)
    weights = SensorWeights(conv1=np.ones((16, 5, 5), np.int8), thresh1=0.0, w_fi=ones, w_fh=ones,
                            w_oi=np.stack([ones, ones]), w_oh=np.stack([-ones, -ones]), timesteps=1,
                            layout=layout)
    x = np.ones((4, 1, 64, 64), np.int8)
    res = run_clips_instruction(x, weights, noise=NoiseModel(out_sigma=1.0), rng=np.random.default_rng(4))
    inner = res.output[:, :, 1:-1, 1:-1].astype(np.float64)
    assert abs(inner.mean()) < 0.03 and abs(inner.std() - 0.5) < 0.03
    assert np.abs(res.readout.astype(int) - layout.quantize(res.output.astype(np.float64))).max() <= 1
    want = fast.run_clips(x, weights, noise=NoiseModel(out_sigma=1.0), rng=np.random.default_rng(4))
    assert abs(want.output[:, :, 1:-1, 1:-1].std() - 0.5) < 0.03


# ----- SensorWeights with a layout -------------------------------------------------------------------

def test_weights_layout_validation_and_storage():
    rng = np.random.default_rng(1)
    layout = ReadoutLayout(frames=(4, 8), channels=2, bits=4, pool=2, timesteps=8)
    w = SensorWeights.random(rng, layout=layout)
    assert w.w_oi.shape == (2, 5, 5) and w.channels == 2 and w.timesteps == 8
    with pytest.raises(ValueError, match=r"timesteps=8.*timesteps=16"):
        dataclasses.replace(w, timesteps=16)
    with pytest.raises(ValueError, match=r"channels=2.*K=1"):
        dataclasses.replace(w, w_oi=w.w_oi[0], w_oh=w.w_oh[0])
    with pytest.raises(ValueError, match="K=2 output kernel pairs"):
        dataclasses.replace(w, layout=None)
    with pytest.raises(ValueError, match="same number of output kernels"):
        dataclasses.replace(w, w_oh=w.w_oh[:1])
    with pytest.raises(ValueError, match=r"\(K, 5, 5\) or \(5, 5\)"):
        dataclasses.replace(w, w_oi=np.ones((2, 3, 3), np.int8))
    with pytest.raises(ValueError, match="ReadoutLayout"):
        dataclasses.replace(w, layout={"frames": [8]})
    # the layout is part of the program
    other = dataclasses.replace(w, layout=dataclasses.replace(layout, bits=2))
    assert len({w.program_hash(), other.program_hash(),
                dataclasses.replace(w, w_oi=w.w_oi[:1], w_oh=w.w_oh[:1],
                                    layout=ReadoutLayout(frames=(8,), timesteps=8)).program_hash()}) == 3
    stored = w.to_npz_dict()
    assert stored["w_oi"].shape == (2, 5, 5) and stored["layout"].dtype == np.uint8
    again = SensorWeights.from_npz_dict(stored)
    assert again.layout == layout and again.program_hash() == w.program_hash()
    assert np.array_equal(again.w_oi, w.w_oi) and np.array_equal(again.w_oh, w.w_oh)
    bad = dict(stored, layout=np.frombuffer(b"{nope", np.uint8))
    with pytest.raises(ValueError, match="not valid JSON"):
        SensorWeights.from_npz_dict(bad)
    with pytest.raises(ValueError, match="unknown readout layout keys"):
        SensorWeights.from_npz_dict(dict(stored, layout=np.frombuffer(b'{"nope": 1}', np.uint8)))


def test_npz_file_round_trip(tmp_path):
    layout = ReadoutLayout.every(4, timesteps=16, channels=3, bits=1, pool=8)
    w = SensorWeights.random(np.random.default_rng(2), layout=layout)
    np.savez(tmp_path / "w.npz", **w.to_npz_dict())
    with np.load(tmp_path / "w.npz", allow_pickle=False) as data:
        again = SensorWeights.from_npz_dict(data)
    assert again.layout == layout and again.program_hash() == w.program_hash()


def test_clips_must_fit_the_layout():
    w = _layout_weights(frames=(4, 8), channels=2)
    with pytest.raises(ValueError, match="clips have 6 frames"):
        fast.run_clips(np.ones((1, 6, 64, 64), np.int8), w)
    with pytest.raises(ValueError, match="clips have 6 frames"):
        packed.run_clips(np.ones((1, 6, 64, 64), np.int8), w)
    with pytest.raises(ValueError, match="clips have 6 frames"):
        run_clips_instruction(np.ones((1, 6, 64, 64), np.int8), w)
    pooled = _layout_weights(frames=(8,), pool=8)
    with pytest.raises(ValueError, match="pools 8x8"):
        fast.run_clips(np.ones((1, 8, 12, 12), np.int8), pooled)
    empty = packed.run_clips(np.ones((0, 8, 64, 64), np.int8), w)
    assert empty.readout.shape == empty.output.shape == (0, 4, 64, 64)
    # the authors' layout reads out the last frame of a clip of any length, as always
    assert fast.run_clips(np.ones((1, 3, 64, 64), np.int8), SensorWeights.random(np.random.default_rng(0))
                          ).readout.shape == (1, 64, 64)
