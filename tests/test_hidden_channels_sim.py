"""Hidden channels in the sensor simulator (issue 12): H binary hidden maps, each a gated chain.

Property-based over random configurations (H in 1..3, K in 1..2, random readout layouts and
thresholds, random and blocky clips): fast == packed (whole clips and PackedStream) ==
fast.SensorStream == the instruction-level program on every binary state (with a chain axis for
H > 1) and the readout, with noise off; fast == packed with noise on (the same draws, chain 0's
gate normals first). H = 1 is today's program: the same hash, arrays and ``.npz`` whichever way
it is written. The register budget of a SCAMP-5 element caps H, refused in one line naming the
bank. numpy only (the base install runs these).
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.readout_layout import ReadoutLayout
from firmware_sim import fast, packed
from firmware_sim.noise import NoiseModel
from firmware_sim.ppa import SATURATION
from firmware_sim.program import (
    SCAMP5_ANALOG,
    SCAMP5_DIGITAL,
    check_hidden_fits,
    clip_cost,
    frame_cost,
    max_hidden,
    registers_needed,
    run_clips_instruction,
)
from firmware_sim.weights import SensorWeights

pytestmark = pytest.mark.device   # base install only: no torch, no TensorFlow

BINARY = packed.PACKED_STAGES


def _clips(rng, n, t, block=1):
    """Random +-1 clips, constant over block x block squares (blocks make large sums: |o| > 25.6)."""
    low = np.where(rng.random((n, t, 64 // block, 64 // block)) < 0.5, -1, 1).astype(np.int8)
    return np.repeat(np.repeat(low, block, axis=2), block, axis=3)


@st.composite
def configs(draw):
    """(layout, hidden, thresholds or None, block) of a random sensor program."""
    t = draw(st.sampled_from([3, 4, 6]))
    frames = tuple(sorted(draw(st.sets(st.integers(1, t), min_size=1, max_size=3))))
    layout = ReadoutLayout(frames=frames, channels=draw(st.integers(1, 2)), bits=draw(st.sampled_from([1, 2, 4, 8])),
                           pool=draw(st.sampled_from([1, 2, 4])), timesteps=t)
    hidden = draw(st.integers(1, 3))
    # None: the random thresholds; else a strongly negative gate threshold (every h stays +1), so
    # with blocky clips the chains' sums add up to |o| near 25 (H + 1)
    gate = draw(st.sampled_from([None, -60.0]))
    return layout, hidden, gate, draw(st.sampled_from([1, 8]))


def _weights(rng, layout, hidden, gate=None) -> SensorWeights:
    weights = SensorWeights.random(rng, layout=layout, hidden=hidden)
    if gate is not None:
        weights = dataclasses.replace(weights, rnn_threshold=gate)
    return weights


def _assert_same(got, want, stages=BINARY):
    for name in stages:
        assert got.stages[name].shape == want.stages[name].shape, name
        assert np.array_equal(got.stages[name], want.stages[name]), name
    assert np.array_equal(got.readout, want.readout)
    assert np.array_equal(got.output, want.output)


def _stream(stream, clips):
    out = []
    for clip in clips:
        for step, frame in enumerate(clip):
            levels = stream.push(frame)
            assert (levels is None) == (step < len(clip) - 1)
        out.append(levels)
    return np.stack(out)


@settings(max_examples=20, deadline=None)
@given(cfg=configs(), seed=st.integers(0, 2**32 - 1))
def test_every_path_agrees_on_states_and_readouts_without_noise(cfg, seed):
    layout, hidden, gate, block = cfg
    rng = np.random.default_rng(seed)
    weights = _weights(rng, layout, hidden, gate)
    assert weights.hidden == hidden
    x = _clips(rng, 2, layout.timesteps, block)
    want = fast.run_clips(x, weights, stages=BINARY)
    states = (2, layout.timesteps, 64, 64) if hidden == 1 else (2, layout.timesteps, hidden, 64, 64)
    assert want.stages["4_hidden"].shape == want.stages["7_forget_gate_x"].shape == states
    _assert_same(packed.run_clips(x, weights, stages=BINARY), want)
    _assert_same(packed.run_clips(x, weights, stages=BINARY, chunk=1, frame_chunk=3), want)
    got = run_clips_instruction(x, weights, stages=BINARY)
    for name in BINARY:
        assert np.array_equal(got.stages[name], want.stages[name]), name
    assert np.array_equal(got.readout, want.readout)
    # the program's output is its register: 8 bit, the o register (saturated beyond +-25.6); below,
    # o / 2**s doubled back, exact
    expected = np.clip(want.output, -SATURATION, SATURATION) if layout.bits == 8 else want.output
    assert np.array_equal(got.output, expected.astype(np.float32))
    assert np.array_equal(_stream(fast.SensorStream(weights), x), want.readout)
    assert np.array_equal(_stream(packed.PackedStream(weights), x), want.readout)


NOISES = [NoiseModel.authors(), NoiseModel(gate_sigma=0.6),
          NoiseModel(conv_sigma=0.6, gate_sigma=0.6, out_sigma=1.0, out_gain=0.8, out_offset=0.3)]


@settings(max_examples=12, deadline=None)
@given(cfg=configs(), seed=st.integers(0, 2**32 - 1), noise=st.sampled_from(NOISES))
def test_fast_and_packed_draw_the_same_noise(cfg, seed, noise):
    layout, hidden, gate, block = cfg
    rng = np.random.default_rng(seed)
    weights = _weights(rng, layout, hidden, gate)
    x = _clips(rng, 3, layout.timesteps, block)
    want = fast.run_clips(x, weights, noise=noise, rng=np.random.default_rng(seed), stages=BINARY)
    _assert_same(packed.run_clips(x, weights, noise=noise, rng=np.random.default_rng(seed), stages=BINARY), want)
    # the streams (the packed one runs the fast one under noise) draw per frame, in their own order
    a = _stream(fast.SensorStream(weights, noise=noise, rng=np.random.default_rng(seed)), x)
    b = _stream(packed.PackedStream(weights, noise=noise, rng=np.random.default_rng(seed)), x)
    assert np.array_equal(a, b)


def test_gate_noise_of_chain_zero_is_drawn_first():
    """With gate noise only, chain 0 of an H = 2 program sees the normals an H = 1 program of the
    same kernels sees (its draws come first in every frame): its hidden maps are the same, while
    chain 1's are its own."""
    rng = np.random.default_rng(5)
    two = SensorWeights.random(rng, layout=ReadoutLayout(frames=(1,), timesteps=1), hidden=2)
    one = dataclasses.replace(two, w_fi=two.w_fi[0], w_fh=two.w_fh[0], w_oh=two.w_oh[:, 0],
                              rnn_threshold=two.rnn_threshold[0])
    two = dataclasses.replace(two, layout=ReadoutLayout(frames=(4,), timesteps=4), timesteps=4)
    one = dataclasses.replace(one, layout=ReadoutLayout(frames=(4,), timesteps=4), timesteps=4)
    x = _clips(rng, 1, 4)
    noise = NoiseModel(gate_sigma=2.0)
    a = fast.run_clips(x, one, noise=noise, rng=np.random.default_rng(1), stages=("4_hidden",))
    b = fast.run_clips(x, two, noise=noise, rng=np.random.default_rng(1), stages=("4_hidden",))
    assert np.array_equal(b.stages["4_hidden"][:, :2, 0], a.stages["4_hidden"][:, :2])   # frames 0, 1
    assert not np.array_equal(b.stages["4_hidden"][:, :, 1], a.stages["4_hidden"])


def test_every_chain_reaches_the_readout():
    """Flipping one kernel of any chain changes the readout (the chains are mixed by W_oh only)."""
    rng = np.random.default_rng(8)
    layout = ReadoutLayout(frames=(2, 4), channels=2, bits=8, timesteps=4)
    weights = SensorWeights.random(rng, layout=layout, hidden=3)
    x = _clips(rng, 2, 4)
    base = fast.run_clips(x, weights).readout
    for j in range(3):
        for name in ("w_fi", "w_fh"):
            kernels = getattr(weights, name).copy()
            kernels[j] *= -1
            assert not np.array_equal(fast.run_clips(x, dataclasses.replace(weights, **{name: kernels})).readout,
                                      base), (name, j)
        w_oh = weights.w_oh.copy()
        w_oh[:, j] *= -1
        assert not np.array_equal(fast.run_clips(x, dataclasses.replace(weights, w_oh=w_oh)).readout, base), j


# ----- H = 1 is today's program ----------------------------------------------------------------------

def test_one_hidden_map_is_the_program_it_always_was():
    rng = np.random.default_rng(17)
    for layout in (None, ReadoutLayout(frames=(2, 4), channels=2, bits=4, pool=2, timesteps=4)):
        base = SensorWeights.random(np.random.default_rng(3), layout=layout)
        assert SensorWeights.random(np.random.default_rng(3), layout=layout, hidden=1).program_hash() == \
            base.program_hash()
        assert base.hidden == 1 and base.w_fi.shape == (5, 5) and isinstance(base.rnn_threshold, float)
        # H = 1 written with a chain axis everywhere is the same program, stored the same way
        explicit = dataclasses.replace(base, w_fi=base.w_fi[None], w_fh=base.w_fh[None],
                                       w_oh=base.w_oh[:, None], rnn_threshold=[base.rnn_threshold])
        assert explicit.w_fi.shape == (5, 5) and explicit.w_oh.shape == base.w_oh.shape
        assert explicit.program_hash() == base.program_hash()
        a, b = base.to_npz_dict(), explicit.to_npz_dict()
        assert sorted(a) == sorted(b) and "rnn_thresholds" not in a
        for key in a:
            assert a[key].shape == b[key].shape and a[key].tobytes() == b[key].tobytes(), key
        x = _clips(rng, 1, base.timesteps)
        assert np.array_equal(fast.run_clips(x, explicit, stages=BINARY).stages["4_hidden"],
                              fast.run_clips(x, base, stages=BINARY).stages["4_hidden"])
    assert base.fi_kernels.shape == (1, 5, 5) and base.oh_kernels.shape == (2, 1, 5, 5)
    assert base.gate_thresholds == (base.rnn_threshold,)


def test_weights_of_several_hidden_maps_validate_and_round_trip():
    rng = np.random.default_rng(2)
    layout = ReadoutLayout(frames=(3,), channels=2, timesteps=3)
    w = SensorWeights.random(rng, layout=layout, hidden=3)
    assert w.w_fi.shape == w.w_fh.shape == (3, 5, 5) and w.w_oh.shape == (2, 3, 5, 5)
    assert isinstance(w.rnn_threshold, tuple) and len(w.gate_thresholds) == 3
    stored = w.to_npz_dict()
    assert stored["rnn_thresholds"].shape == (3,) and stored["scalars"][1] == w.gate_thresholds[0]
    buf = io.BytesIO()
    np.savez(buf, **stored)
    buf.seek(0)
    with np.load(buf) as data:
        again = SensorWeights.from_npz_dict(data)
    assert again.program_hash() == w.program_hash() and again.gate_thresholds == w.gate_thresholds
    # another hidden map's threshold is another program
    moved = dataclasses.replace(w, rnn_threshold=(w.gate_thresholds[0], w.gate_thresholds[1], 99.0))
    assert moved.program_hash() != w.program_hash()
    # one number is every chain's threshold
    assert dataclasses.replace(w, rnn_threshold=0.5).gate_thresholds == (0.5, 0.5, 0.5)
    bad = [(dict(w_fh=w.w_fh[:2]), "same number of hidden maps"),
           (dict(w_oh=w.w_oh[:, 0]), r"w_oh must have shape \(K, 3, 5, 5\)"),
           (dict(rnn_threshold=(1.0, 2.0)), "3 numbers"),
           (dict(rnn_threshold=(1.0, float("nan"), 2.0)), "finite"),
           (dict(w_fi=np.ones((3, 4, 5), np.int8)), r"\(H, 5, 5\)")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message) as info:
            dataclasses.replace(w, **change)
        assert "\n" not in str(info.value)
    missing = {k: v for k, v in stored.items() if k != "rnn_thresholds"}
    with pytest.raises((KeyError, ValueError)):
        SensorWeights.from_npz_dict(missing)
    with pytest.raises(ValueError, match="one threshold per hidden map"):
        SensorWeights.from_npz_dict(dict(stored, rnn_thresholds=np.zeros(2)))


def test_a_bundles_sensor_program_of_several_hidden_maps_loads_and_runs(tmp_path):
    """The camera loop's loader (edge.models.load_sensor_program: the bundle's scalar checks, then
    SensorWeights) takes an H > 1 program, and PackedStream runs it as the whole-clip path does."""
    from edge.models import load_sensor_program

    rng = np.random.default_rng(4)
    w = SensorWeights.random(rng, layout=ReadoutLayout(frames=(4, 8), channels=2, bits=2, pool=2, timesteps=8),
                             hidden=2)
    path = tmp_path / "sensor_weights.npz"
    np.savez(path, **w.to_npz_dict())
    loaded = load_sensor_program(path)
    assert loaded.hidden == 2 and loaded.program_hash() == w.program_hash()
    x = _clips(rng, 2, 8)
    assert np.array_equal(_stream(packed.PackedStream(loaded), x), fast.run_clips(x, w).readout)


# ----- registers, refusals and cost ----------------------------------------------------------------------

def test_each_hidden_map_costs_one_digital_register_and_too_many_are_refused():
    for channels in (1, 4):
        for bits in (1, 2, 4, 8):
            for pool in (1, 2, 8):
                layout = ReadoutLayout(frames=(4,), channels=channels, bits=bits, pool=pool, timesteps=4)
                top = max_hidden(layout)
                assert top >= 2
                one = registers_needed(layout)
                for hidden in range(1, top + 1):
                    analog, digital = registers_needed(layout, hidden=hidden)
                    assert analog == one[0] and len(digital) == len(one[1]) + hidden - 1
                    assert len(analog) <= SCAMP5_ANALOG and len(digital) <= SCAMP5_DIGITAL
                    check_hidden_fits(layout, hidden)
                assert len(registers_needed(layout, hidden=top + 1)[1]) == SCAMP5_DIGITAL + 1
                with pytest.raises(ValueError) as info:
                    check_hidden_fits(layout, top + 1)
                text = str(info.value)
                assert "\n" not in text and f"{top + 1} hidden maps" in text
                assert f"needs {SCAMP5_DIGITAL + 1} digital registers, a SCAMP-5 element has {SCAMP5_DIGITAL}" in text
                assert f"at most {top} hidden channels" in text
    layout = ReadoutLayout(frames=(4,), timesteps=4)
    weights = SensorWeights.random(np.random.default_rng(0), layout=layout, hidden=max_hidden(layout) + 1)
    with pytest.raises(ValueError, match="digital registers"):
        run_clips_instruction(_clips(np.random.default_rng(0), 1, 4), weights)
    with pytest.raises(ValueError, match="positive integer"):
        check_hidden_fits(layout, 0)


def test_frame_cost_grows_with_the_hidden_maps():
    layout = ReadoutLayout(frames=(8,), channels=2, timesteps=8)
    costs = {}
    for hidden in (1, 2, 3):
        weights = dataclasses.replace(SensorWeights.random(np.random.default_rng(0), layout=layout, hidden=hidden),
                                      thresh1=1.0, rnn_threshold=0.5)
        costs[hidden] = (frame_cost(weights)["instructions"], frame_cost(weights, last=True)["instructions"],
                         clip_cost(weights, size=16)["instructions"])
    # a frame without readout: one more walk, gate and update per hidden map, the same each time
    assert costs[1][0] < costs[2][0] < costs[3][0]
    assert costs[3][0] - costs[2][0] == costs[2][0] - costs[1][0]
    for hidden in (1, 2, 3):
        assert costs[hidden][1] > costs[hidden][0]
    assert costs[1][2] < costs[2][2] < costs[3][2]
