"""The instruction-level path: each PPA instruction, and the program against the fast path (oracle)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim import fast
from firmware_sim.encoding import encode_analog
from firmware_sim.noise import NoiseModel
from firmware_sim.ppa import PPA, SATURATION, CostModel
from firmware_sim.program import clip_cost, frame_cost, run_clips_instruction
from firmware_sim.weights import SensorWeights

pytestmark = pytest.mark.device


def _array(batch=None, h=4, w=5):
    return PPA(height=h, width=w, analog=("A", "B", "C"), digital=("D0", "D1", "D2"), batch=batch)


def _set_analog(ppa, name, values):
    """Put arbitrary values in a register without instructions (test helper)."""
    ppa.inject(name, np.asarray(values, np.float64) - ppa.peek(name))


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# ----- primitives ---------------------------------------------------------------------------

def _np_shift(values, direction):
    """Reference: contents moved one element toward ``direction``; zeros enter at the far edge."""
    zrow, zcol = np.zeros_like(values[..., :1, :]), np.zeros_like(values[..., :, :1])
    return {"north": lambda: np.concatenate([values[..., 1:, :], zrow], axis=-2),
            "south": lambda: np.concatenate([zrow, values[..., :-1, :]], axis=-2),
            "west": lambda: np.concatenate([values[..., :, 1:], zcol], axis=-1),
            "east": lambda: np.concatenate([zcol, values[..., :, :-1]], axis=-1)}[direction]()


@pytest.mark.parametrize("batch", [None, 2])
def test_shift_moves_one_element_with_zero_fill(batch):
    ppa = _array(batch)
    values = np.random.default_rng(0).integers(1, 9, ppa.shape).astype(np.float64)
    bits = values % 3 == 0
    _set_analog(ppa, "A", values)
    ppa.sense("D0", bits)
    for direction in ("north", "south", "east", "west"):
        ppa.shift("B", "A", direction)
        np.testing.assert_array_equal(ppa.peek("B"), _np_shift(values, direction))
        ppa.shift("D1", "D0", direction)
        np.testing.assert_array_equal(ppa.peek_bits("D1"), _np_shift(bits, direction))
    np.testing.assert_array_equal(ppa.peek("A"), values)        # source untouched
    ppa.shift("A", "A", "north")                               # in place
    np.testing.assert_array_equal(ppa.peek("A"), _np_shift(values, "north"))
    assert ppa.counts["shift_analog"] == 5 and ppa.counts["shift_digital"] == 4


def test_digital_shift_fills_zero_bits():
    ppa = _array()
    ppa.d_set("D0")
    ppa.shift("D1", "D0", "north")
    bits = ppa.peek_bits("D1")
    assert not bits[-1].any() and bits[:-1].all()
    ppa.shift("D1", "D0", "east")
    bits = ppa.peek_bits("D1")
    assert not bits[:, 0].any() and bits[:, 1:].all()


def test_every_analog_write_saturates():
    ppa = _array()
    ppa.load("A", 30.0)
    assert np.all(ppa.peek("A") == SATURATION) and SATURATION == 25.6
    ppa.load("A", -100.0)
    assert np.all(ppa.peek("A") == -SATURATION)
    ppa.load("A", 20.0)
    ppa.add("B", "A", "A")
    assert np.all(ppa.peek("B") == 25.6)
    ppa.neg("C", "B")
    ppa.sub("C", "C", "A")
    assert np.all(ppa.peek("C") == -25.6)
    ppa.load("C", 1.0)
    ppa.d_set("D0")
    for _ in range(30):
        ppa.add_or_sub("B", "C", "D0")
    assert np.all(ppa.peek("B") == 25.6)
    ppa.inject("B", 5.0)
    assert np.all(ppa.peek("B") == 25.6)
    ppa.load("A", 12.5)
    assert np.all(ppa.peek("A") == 12.5)             # in range: exact


def test_compare_is_greater_or_equal_so_sign_of_zero_is_plus_one():
    ppa = _array(h=1, w=3)
    _set_analog(ppa, "A", [[1.0, 2.0, 3.0]])
    ppa.load("B", 2.0)
    ppa.compare("D0", "A", "B")
    np.testing.assert_array_equal(ppa.peek_bits("D0"), [[False, True, True]])
    ppa.load("A", 0.0)
    ppa.load("B", 0.0)
    ppa.compare("D0", "A", "B")
    assert ppa.peek_bits("D0").all()


@pytest.mark.parametrize("sign", [1, -1])
def test_add_or_sub_is_xnor_of_weight_sign_and_bit(sign):
    ppa = _array(h=1, w=4)
    ppa.load("A", 10.0)
    ppa.load("B", 1.5)
    ppa.load_pattern("D0", col=(0, 1))             # bits 1, 0, 1, 0
    ppa.add_or_sub("A", "B", "D0", sign=sign)
    bit_sign = np.array([[1, -1, 1, -1]])
    np.testing.assert_array_equal(ppa.peek("A"), 10.0 + 1.5 * sign * bit_sign)
    with pytest.raises(ValueError, match="sign"):
        ppa.add_or_sub("A", "B", "D0", sign=0)


def test_flag_gates_analog_writes_only():
    ppa = _array(h=2, w=2)
    ppa.load_pattern("D0", row=(0, 1))             # row 0 set
    ppa.where("D0")
    ppa.load("A", 7.0)
    ppa.d_set("D1")                                # digital: not gated
    np.testing.assert_array_equal(ppa.peek("A"), [[7.0, 7.0], [0.0, 0.0]])
    assert ppa.peek_bits("D1").all()
    ppa.all()
    ppa.load("A", 3.0)
    assert np.all(ppa.peek("A") == 3.0)


def test_max_and_digital_logic():
    ppa = _array(h=1, w=4)
    _set_analog(ppa, "A", [[-2.0, 0.0, 3.0, -0.5]])
    ppa.load("B", 0.0)
    ppa.max("C", "A", "B")
    np.testing.assert_array_equal(ppa.peek("C"), [[0.0, 0.0, 3.0, 0.0]])
    ppa.load_pattern("D0", col=(0, 1))             # 1 0 1 0
    ppa.load_pattern("D1", col=(0, 2))             # 1 1 0 0
    ppa.d_and("D2", "D0", "D1")
    np.testing.assert_array_equal(ppa.peek_bits("D2"), [[1, 0, 0, 0]])
    ppa.d_or("D2", "D0", "D1")
    np.testing.assert_array_equal(ppa.peek_bits("D2"), [[1, 1, 1, 0]])
    ppa.d_xor("D2", "D0", "D1")
    np.testing.assert_array_equal(ppa.peek_bits("D2"), [[0, 1, 1, 0]])
    ppa.d_not("D2", "D2")
    np.testing.assert_array_equal(ppa.peek_bits("D2"), [[1, 0, 0, 1]])
    ppa.d_copy("D1", "D2")
    np.testing.assert_array_equal(ppa.peek_bits("D1"), [[1, 0, 0, 1]])
    ppa.d_clear("D1")
    assert not ppa.peek_bits("D1").any()


def test_counters_count_every_instruction_and_nothing_else():
    ppa = _array(batch=3)
    ppa.load("A", 1.0)
    ppa.load("B", 2.0)
    ppa.add("C", "A", "B")
    ppa.d_set("D0")
    ppa.where("D0")
    ppa.all()
    ppa.peek("A")
    ppa.peek_bits("D0")
    ppa.inject("A", 0.5)
    ppa.readout("A")
    assert ppa.counts == {"load": 2, "add": 1, "d_set": 1, "where": 1, "all": 1, "readout": 1}
    assert ppa.total == 7 == sum(ppa.counts.values())     # per array instruction, not per batch element
    ppa.reset_counts()
    assert ppa.total == 0 and ppa.counts == {}


def test_readout_is_encode_analog_and_saturation_never_changes_it():
    o = np.linspace(-50.0, 50.0, 4001).reshape(1, -1)
    ppa = PPA(height=1, width=o.shape[1], analog=("O",), digital=())
    _set_analog(ppa, "O", o)
    assert np.abs(ppa.peek("O")).max() == SATURATION
    np.testing.assert_array_equal(ppa.readout("O"), encode_analog(o))


def test_bad_arguments_are_rejected():
    ppa = _array()
    with pytest.raises(ValueError, match="digital register"):
        ppa.load("D0", 1.0)
    with pytest.raises(ValueError, match="analog register"):
        ppa.d_set("A")
    with pytest.raises(ValueError, match="not a register"):
        ppa.copy("A", "nope")
    with pytest.raises(ValueError, match="direction"):
        ppa.shift("B", "A", "up")
    with pytest.raises(ValueError, match="shape"):
        ppa.sense("D0", np.ones((3, 3)))
    with pytest.raises(ValueError, match="distinct"):
        PPA(height=2, width=2, analog=("A",), digital=("A",))
    with pytest.raises(ValueError, match="height"):
        PPA(height=0, width=2, analog=("A",), digital=())


# ----- the program against the fast path -----------------------------------------------------

def _clips(rng, n, t, size, block):
    low = np.where(rng.random((n, t, size // block, size // block)) < 0.5, -1, 1).astype(np.int8)
    return np.repeat(np.repeat(low, block, axis=2), block, axis=3)


def _assert_same_as_fast(x, weights):
    got = run_clips_instruction(x, weights, stages=fast.STAGES)
    want = fast.run_clips(x, weights, stages=fast.STAGES)
    for name in fast.STAGES:
        assert np.array_equal(got.stages[name], want.stages[name]), name
    assert np.array_equal(got.readout, want.readout)
    assert np.array_equal(got.output, np.clip(want.output, -SATURATION, SATURATION).astype(np.float32))


THRESHOLDS = [None, (1.0, 0.0), (0.0, 0.0), (2.0, -1.0), (3.0, 2.0), (30.0, 37.0), (-30.0, -51.5),
              (24.9, 60.0), (5.0, -26.0)]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), thresholds=st.sampled_from(THRESHOLDS),
       block=st.sampled_from([1, 1, 4, 8]))
def test_instruction_path_equals_fast_path(seed, thresholds, block):
    rng = np.random.default_rng(seed)
    weights = SensorWeights.random(rng)
    if thresholds is not None:
        weights = dataclasses.replace(weights, thresh1=thresholds[0], rnn_threshold=thresholds[1])
    _assert_same_as_fast(_clips(rng, 3, 4, 64, block), weights)


def test_integer_thresholds_hit_sign_of_zero_and_match():
    """Integer thresholds that pre-activations hit exactly: sign(0) must be +1 on both paths."""
    rng = np.random.default_rng(7)
    weights = dataclasses.replace(SensorWeights.random(rng), thresh1=5.0)
    x = _clips(rng, 3, 4, 64, 1)
    _, pooled, x_t = fast.cnn_stage(x[:, 0], weights, NoiseModel.off(), None)
    assert np.any(pooled == 5)                      # pooled values exactly on thresh1
    fi = fast.binary_conv(x_t, weights.w_fi[None])[:, 0]
    fh = fast.binary_conv(np.ones_like(x_t), weights.w_fh[None])[:, 0]
    pre = (fi + fh).astype(int)
    threshold = float(np.bincount(pre.ravel() + 50).argmax() - 50)   # the most common value
    assert np.mean(pre == threshold) > 0.02          # gate pre-activations exactly on it (frame 0)
    _assert_same_as_fast(x, dataclasses.replace(weights, rnn_threshold=threshold))


@pytest.mark.parametrize("threshold", [1e-17, -1e-17, 0.5, 26.0, 30.5, 37.0, 49.0, 50.0, 50.5, 75.0,
                                       -26.0, -37.0, -49.5, -50.0, -80.0])
def test_gate_thresholds_near_integers_and_beyond_the_register_range_match(threshold):
    """fi + fh spans [-50, 50] here, so the gate comparand saturates for large thresholds, and a
    threshold just off an integer must still compare like the exact sum does."""
    rng = np.random.default_rng(11)
    sign = 1 if threshold >= 0 else -1
    ones = np.ones((5, 5), np.int8)
    weights = SensorWeights(conv1=np.ones((16, 5, 5), np.int8), thresh1=8.0, w_fi=sign * ones,
                            w_fh=sign * ones, w_oi=ones, w_oh=ones, rnn_threshold=threshold)
    x = _clips(rng, 2, 4, 64, 8)
    x[0] = 1                                         # x_t = +1, h_0 = +1: fi + fh = +-50 inside
    _assert_same_as_fast(x, weights)
    gate = fast.run_clips(x, weights, stages=("7_forget_gate_x",)).stages["7_forget_gate_x"]
    if -50 < threshold <= 50:                        # fi + fh >= -50 always holds
        assert 0 < np.mean(gate == 255) < 1          # the threshold is inside the data's range


def test_small_array_and_chunking_match_fast_path():
    rng = np.random.default_rng(3)
    weights = SensorWeights.random(rng)
    x = _clips(rng, 3, 3, 16, 1)
    _assert_same_as_fast(x, weights)
    a = run_clips_instruction(x, weights, chunk=2, stages=("4_hidden",))
    b = run_clips_instruction(x, weights, chunk=64, stages=("4_hidden",))
    assert np.array_equal(a.readout, b.readout) and np.array_equal(a.stages["4_hidden"], b.stages["4_hidden"])


def test_run_clips_instruction_validates_arguments():
    weights = SensorWeights.random(np.random.default_rng(0))
    x = np.ones((1, 2, 64, 64), np.int8)
    with pytest.raises(ValueError, match=r"\(N, T, H, W\)"):
        run_clips_instruction(x[0], weights)
    with pytest.raises(ValueError, match="unknown stage"):
        run_clips_instruction(x, weights, stages=("5_nope",))
    with pytest.raises(ValueError, match="-1/\\+1"):
        run_clips_instruction(np.zeros_like(x), weights)
    with pytest.raises(ValueError, match="square frames"):
        run_clips_instruction(np.ones((1, 2, 64, 48), np.int8), weights)
    with pytest.raises(ValueError, match="rng"):
        run_clips_instruction(x, weights, noise=NoiseModel.authors())
    with pytest.raises(ValueError, match="chunk"):
        run_clips_instruction(x, weights, chunk=0)
    empty = run_clips_instruction(np.ones((0, 2, 64, 64), np.int8), weights)
    assert empty.readout.shape == (0, 64, 64)


# ----- noise statistics ------------------------------------------------------------------------

def _constant_weights(**kw) -> SensorWeights:
    ones = np.ones((5, 5), np.int8)
    base = dict(conv1=np.ones((16, 5, 5), np.int8), thresh1=0.0, w_fi=ones, w_fh=-ones, w_oi=ones,
                w_oh=-ones, rnn_threshold=0.0)
    base.update(kw)
    return SensorWeights(**base)


def test_conv_noise_gives_the_normal_cdf_at_a_known_pre_activation():
    # All-ones input and kernels: every pooled value is 25; P(25 + N(0, 0.6^2) >= 24.7) = Phi(0.5).
    weights = _constant_weights(thresh1=24.7)
    x = np.ones((2, 2, 64, 64), np.int8)
    res = run_clips_instruction(x, weights, noise=NoiseModel(conv_sigma=0.6), rng=np.random.default_rng(1),
                                stages=("2_conv1post", "3_thresholded_quantized"))
    assert np.all(res.stages["2_conv1post"] == encode_analog(25.0))
    frac = np.mean(res.stages["3_thresholded_quantized"] == 255)
    assert abs(frac - _phi(0.3 / 0.6)) < 0.02      # 16384 samples: std 0.004


def test_gate_and_output_noise_statistics():
    # x_t = +1 everywhere, h_0 = +1: inside the border fi = 25, fh = -25 (gate pre-activation 0),
    # oi = 25, oh = -25 (o = 0). P(0 + N(0, 0.6^2) >= -0.3) = Phi(0.5); o ~ 0.5 + N(0, 1).
    weights = _constant_weights(rnn_threshold=-0.3)
    noise = NoiseModel(gate_sigma=0.6, out_sigma=1.0, out_offset=0.5)
    x = np.ones((4, 1, 64, 64), np.int8)
    res = run_clips_instruction(x, weights, noise=noise, rng=np.random.default_rng(2),
                                stages=("3_thresholded_quantized", "7_forget_gate_x"))
    assert np.all(res.stages["3_thresholded_quantized"] == 255)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    gate = res.stages["7_forget_gate_x"][:, 0][inner]
    assert abs(np.mean(gate == 255) - _phi(0.5)) < 0.02           # 14400 samples: std 0.004
    o = res.output[inner].astype(np.float64)
    assert abs(o.mean() - 0.5) < 0.05 and abs(o.std() - 1.0) < 0.05


# ----- cost --------------------------------------------------------------------------------------

def test_cost_per_frame_follows_the_documented_model():
    weights = SensorWeights.random(np.random.default_rng(0))
    cost = frame_cost(weights)
    n = cost["instructions"]
    assert n > 0 and n == sum(cost["per_kind"].values())
    assert cost["time_s"] == pytest.approx(n / 10e6, rel=1e-12)
    assert cost["energy_j"] == pytest.approx(n * 64 * 64 * 1.9e-12, rel=1e-12)
    assert cost["time_us"] == pytest.approx(cost["time_s"] * 1e6)
    kinds = cost["per_kind"]
    # The derivation in program.py: 16 conv1 kernels + fi, fh; 24 shifts per walked plane.
    assert kinds["add_or_sub"] == 16 * 25 + 2 * 25
    assert kinds["shift_digital"] == 16 * 2 * 24 + 2 * 90 + 3 * 24
    assert kinds["shift_analog"] == 16 * 6
    assert "readout" not in kinds

    last = frame_cost(weights, last=True)
    assert last["per_kind"]["readout"] == 1
    assert last["per_kind"]["add_or_sub"] == 16 * 25 + 4 * 25
    clip = clip_cost(weights, timesteps=16)
    assert clip["instructions"] == 3 + 15 * n + last["instructions"]

    slow = frame_cost(weights, cost_model=CostModel(clock_hz=1e6, energy_per_pe_op_j=1e-12))
    assert slow["time_s"] == pytest.approx(n / 1e6) and slow["energy_j"] == pytest.approx(n * 4096e-12)
    with pytest.raises(ValueError, match="clock_hz"):
        CostModel(clock_hz=0)
