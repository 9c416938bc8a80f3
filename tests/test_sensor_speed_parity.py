"""The packed path (firmware_sim.packed) against the instruction-level program and the fast path.

Every binary state, the 8-bit readout and ``output`` must be identical, with noise off and on.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim import fast, packed
from firmware_sim.noise import NoiseModel
from firmware_sim.ppa import SATURATION
from firmware_sim.program import run_clips_instruction
from firmware_sim.simulate import binary_input, simulate
from firmware_sim.weights import SensorWeights

pytestmark = pytest.mark.device   # base install only: no torch, no TensorFlow

BINARY = packed.PACKED_STAGES

# (thresh1, rnn_threshold): None keeps the random ones; integers are hit exactly (sign(0) = +1);
# some lie beyond the range of the sums (never / always true).
THRESHOLDS = [None, None, (1.0, 0.0), (0.0, 0.0), (2.0, -1.0), (3.0, 2.0), (5.0, 0.5), (-0.5, -3.0),
              (30.0, 37.0), (-30.0, -51.5), (24.9, 60.0), (25.0, -50.0), (5.0, -26.0), (4.0, 1e-17)]


def _clips(rng, n, t, size, block):
    """Random +-1 clips, constant over block x block squares (blocks make larger conv sums)."""
    low = np.where(rng.random((n, t, size // block, size // block)) < 0.5, -1, 1).astype(np.int8)
    return np.repeat(np.repeat(low, block, axis=2), block, axis=3)


def _weights(rng, thresholds):
    weights = SensorWeights.random(rng)
    if thresholds is not None:
        weights = dataclasses.replace(weights, thresh1=thresholds[0], rnn_threshold=thresholds[1])
    return weights


def _assert_same(got, want, stages):
    for name in stages:
        assert np.array_equal(got.stages[name], want.stages[name]), name
    assert np.array_equal(got.readout, want.readout)
    assert got.output.dtype == want.output.dtype
    assert np.array_equal(got.output, want.output)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), thresholds=st.sampled_from(THRESHOLDS),
       block=st.sampled_from([1, 1, 2, 4, 8]), n=st.integers(1, 5), t=st.integers(1, 6),
       chunk=st.integers(1, 6), frame_chunk=st.integers(1, 9))
def test_packed_equals_fast_path(seed, thresholds, block, n, t, chunk, frame_chunk):
    rng = np.random.default_rng(seed)
    weights = _weights(rng, thresholds)
    x = _clips(rng, n, t, 64, block)
    got = packed.run_clips(x, weights, stages=BINARY, chunk=chunk, frame_chunk=frame_chunk)
    _assert_same(got, fast.run_clips(x, weights, stages=BINARY), BINARY)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), thresholds=st.sampled_from(THRESHOLDS),
       block=st.sampled_from([1, 4, 8]))
def test_packed_equals_instruction_path(seed, thresholds, block):
    rng = np.random.default_rng(seed)
    weights = _weights(rng, thresholds)
    x = _clips(rng, 2, 3, 64, block)
    got = packed.run_clips(x, weights, stages=BINARY)
    want = run_clips_instruction(x, weights, stages=BINARY)
    for name in BINARY:
        assert np.array_equal(got.stages[name], want.stages[name]), name
    assert np.array_equal(got.readout, want.readout)
    # the instruction path's o is the register's (saturated at +-25.6), the same sum otherwise
    assert np.array_equal(np.clip(got.output, -SATURATION, SATURATION).astype(np.float32), want.output)


NOISES = [NoiseModel.authors(), NoiseModel(conv_sigma=0.6), NoiseModel(gate_sigma=0.6),
          NoiseModel(out_sigma=1.0, out_gain=0.8, out_offset=0.3),
          NoiseModel(out_offset=-0.25, offset_map=np.linspace(-1, 1, 64 * 64).reshape(64, 64)),
          NoiseModel(conv_sigma=2.0, gate_sigma=3.0, out_sigma=0.5)]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), noise=st.sampled_from(NOISES),
       thresholds=st.sampled_from(THRESHOLDS), n=st.integers(1, 4), chunk=st.integers(1, 4))
def test_packed_equals_fast_path_with_noise(seed, noise, thresholds, n, chunk):
    """Same draws in the same order (clip by clip: conv, each frame's gate, output) -> identical."""
    rng = np.random.default_rng(seed)
    weights = _weights(rng, thresholds)
    x = _clips(rng, n, 4, 64, 1)
    got = packed.run_clips(x, weights, noise=noise, rng=np.random.default_rng(seed), stages=BINARY,
                           chunk=chunk)
    want = fast.run_clips(x, weights, noise=noise, rng=np.random.default_rng(seed), stages=BINARY)
    _assert_same(got, want, BINARY)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_other_sizes_match(size):
    rng = np.random.default_rng(size)
    weights = SensorWeights.random(rng)
    x = _clips(rng, 3, 3, size, 1)
    got = packed.run_clips(x, weights, stages=BINARY)
    _assert_same(got, fast.run_clips(x, weights, stages=BINARY), BINARY)


def test_analog_stages_and_tiny_frames_fall_back_to_the_fast_path():
    rng = np.random.default_rng(5)
    weights = SensorWeights.random(rng)
    x = _clips(rng, 2, 2, 64, 1)
    assert not packed.supports(x.shape, fast.STAGES)
    _assert_same(packed.run_clips(x, weights, stages=fast.STAGES),
                 fast.run_clips(x, weights, stages=fast.STAGES), fast.STAGES)
    tiny = _clips(rng, 1, 2, 4, 1)                   # 4x4: below the packed path's 8x8
    assert not packed.supports(tiny.shape)
    _assert_same(packed.run_clips(tiny, weights), fast.run_clips(tiny, weights), ())


def test_validation_and_empty_input():
    weights = SensorWeights.random(np.random.default_rng(0))
    x = np.ones((1, 2, 64, 64), np.int8)
    with pytest.raises(ValueError, match=r"\(N, T, H, W\)"):
        packed.run_clips(x[0], weights)
    with pytest.raises(ValueError, match="unknown stage"):
        packed.run_clips(x, weights, stages=("5_nope",))
    with pytest.raises(ValueError, match="rng"):
        packed.run_clips(x, weights, noise=NoiseModel.authors())
    empty = packed.run_clips(np.ones((0, 2, 64, 64), np.int8), weights)
    assert empty.readout.shape == (0, 64, 64) and empty.output.shape == (0, 64, 64)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), noise=st.sampled_from([NoiseModel.off(), NoiseModel.authors()]))
def test_simulate_fast_path_equals_the_old_fast_path(seed, noise):
    """Through simulate(): the front end's table equals binarize(), then the packed path."""
    rng = np.random.default_rng(seed)
    weights = SensorWeights.random(rng)
    frames = rng.integers(0, 256, size=(3, weights.timesteps, 64, 64), dtype=np.uint8)
    assert np.array_equal(binary_input(frames, weights, binarized_input=False),
                          weights.frontend.binarize(frames))
    got = simulate(weights=weights, frames=frames, noise=noise, seed=seed, stages=())
    want = fast.run_clips(weights.frontend.binarize(frames), weights, noise=noise,
                          rng=np.random.default_rng(seed))
    _assert_same(got, want, ())


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), thresholds=st.sampled_from(THRESHOLDS), block=st.sampled_from([1, 2, 4]),
       size=st.sampled_from([8, 16, 64]))
def test_packed_stream_equals_the_fast_stream_and_the_batch(seed, thresholds, block, size):
    """The camera loop's frame-by-frame stage (packed.PackedStream) gives, window after window, the
    levels of fast.SensorStream and of the whole-clip packed path: identical, noise off."""
    rng = np.random.default_rng(seed)
    weights = _weights(rng, thresholds)
    clips = _clips(rng, 2, weights.timesteps, size, block)
    batch = packed.run_clips(clips, weights).readout
    for stream in (packed.PackedStream(weights), fast.SensorStream(weights)):
        out = [r for clip in clips for frame in clip if (r := stream.push(frame)) is not None]
        assert len(out) == 2 and np.array_equal(np.stack(out), batch), type(stream).__name__


def test_packed_stream_with_noise_is_the_fast_stream_and_checks_shapes():
    """Noise on: the draws are the fast stream's, per frame in its order (it runs that stream).
    A side that is not a multiple of 4, or a shape change inside a window, is a clear error."""
    rng = np.random.default_rng(5)
    weights = _weights(rng, None)
    clips = _clips(rng, 1, weights.timesteps, 16, 1)
    ours = packed.PackedStream(weights, noise=NoiseModel.authors(), rng=np.random.default_rng(1))
    theirs = fast.SensorStream(weights, noise=NoiseModel.authors(), rng=np.random.default_rng(1))
    a = [ours.push(f) for f in clips[0]][-1]
    b = [theirs.push(f) for f in clips[0]][-1]
    assert a is not None and np.array_equal(a, b)
    stream = packed.PackedStream(weights)
    with pytest.raises(ValueError, match="multiples of 4"):
        stream.push(clips[0, 0][:14, :14])
    stream.push(clips[0, 0])
    with pytest.raises(ValueError, match="mid-window"):
        stream.push(clips[0, 1][:8, :8])
