"""core.readout_layout: sizes, the quantization and its inverse, the bit packing, validation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.constants import IW, ZERO_LEVEL
from core.readout_layout import AUTHORS, BITS, DEFAULT_STEP, POOLS, ReadoutLayout
from firmware_sim.encoding import encode_analog

pytestmark = pytest.mark.device   # numpy only


def test_the_authors_layout():
    assert AUTHORS == ReadoutLayout() and AUTHORS.is_authors
    assert AUTHORS.shape == (1, 64, 64) and AUTHORS.payload_bytes == 4096 and AUTHORS.step == 1 / IW
    assert ReadoutLayout(frames=(8,), timesteps=8).is_authors
    for other in (ReadoutLayout(frames=(8, 16)), ReadoutLayout(channels=2), ReadoutLayout(bits=4),
                  ReadoutLayout(pool=2), ReadoutLayout(frames=(8,))):
        assert not other.is_authors
    assert "o at frame(s) 16 x 1 channel(s), 64x64, 8 bit: 4096 B/window" == AUTHORS.describe()


def test_sizes():
    lay = ReadoutLayout.every(4, timesteps=16, channels=3, bits=2, pool=4)
    assert lay.frames == (4, 8, 12, 16) and lay.maps == 12 and lay.side == 16
    assert lay.shape == (12, 16, 16) and lay.payload_bits == 12 * 16 * 16 * 2 and lay.payload_bytes == 768
    assert ReadoutLayout.every(0, timesteps=8).frames == (8,)
    assert ReadoutLayout(bits=1, pool=8, frames=(1,)).payload_bytes == 8
    assert ReadoutLayout(bits=1, pool=8, frames=(1, 3, 5)).payload_bits == 192
    assert "(mean of 4x4)" in lay.describe() and "768 B/window" in lay.describe()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("pool", POOLS)
def test_pack_unpack_round_trip(bits, pool):
    lay = ReadoutLayout(frames=(3, 5, 8), channels=2, bits=bits, pool=pool, timesteps=8)
    rng = np.random.default_rng(bits * 10 + pool)
    levels = rng.integers(0, 2 ** bits, size=lay.shape, dtype=np.uint8)
    levels.flat[0], levels.flat[-1] = lay.max_level, 0
    payload = lay.pack(levels)
    assert isinstance(payload, bytes) and len(payload) == lay.payload_bytes
    back = lay.unpack(payload)
    assert back.dtype == np.uint8 and back.shape == lay.shape and np.array_equal(back, levels)


def test_pack_is_msb_first_and_pads_with_zero_bits():
    lay = ReadoutLayout(frames=(1,), bits=2, pool=8, timesteps=1)             # 64 levels, 16 bytes
    levels = np.zeros(lay.shape, np.uint8)
    levels.flat[0], levels.flat[1], levels.flat[63] = 3, 1, 2
    payload = lay.pack(levels)
    assert payload[0] == 0b11010000 and payload[-1] == 0b00000010
    one = ReadoutLayout(frames=(1, 2, 3), bits=1, pool=8, channels=1, timesteps=3)
    assert one.payload_bytes == 24
    bits = np.zeros(one.shape, np.uint8)
    bits[0, 0, 0] = 1
    assert one.pack(bits)[0] == 0x80


def test_pack_and_unpack_refuse_wrong_input():
    lay = ReadoutLayout(bits=4, pool=2)
    with pytest.raises(ValueError, match=r"uint8 \(1, 32, 32\)"):
        lay.pack(np.zeros((1, 32, 32), np.int16))
    with pytest.raises(ValueError, match=r"uint8 \(1, 32, 32\)"):
        lay.pack(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="level 16 does not fit 4 bit"):
        lay.pack(np.full((1, 32, 32), 16, np.uint8))
    with pytest.raises(ValueError, match="has 511 bytes, the layout needs 512"):
        lay.unpack(bytes(511))


def test_8bit_quantize_is_the_adc():
    o = np.concatenate([np.linspace(-60, 60, 24001), [-12.7, -12.71, 12.8, 12.9, 0.0, -0.0, -0.05, 0.0999]])
    assert np.array_equal(AUTHORS.quantize(o), encode_analog(o))
    assert list(AUTHORS.quantize(np.array([-12.71, -12.7, 0.0, 12.79, 12.8, 50.0]))) == [0, 0, 127, 254, 255, 255]
    levels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(AUTHORS.dequantize(levels), ((levels.astype(np.float32) - ZERO_LEVEL) / IW))
    assert AUTHORS.dequantize(levels).dtype == np.float32
    # dequantize gives each level's lower edge in float32 (as decode_analog): only near its level
    back = AUTHORS.quantize(AUTHORS.dequantize(levels).astype(np.float64)).astype(int)
    assert np.abs(back - levels).max() <= 1


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_quantize_edges(bits):
    lay = ReadoutLayout(bits=bits)
    s, z, top = DEFAULT_STEP[bits], 2 ** (bits - 1), 2 ** bits - 1
    assert lay.step == s and lay.zero == z and lay.max_level == top
    edges = (np.arange(top + 1) - z) * s                            # level m starts at (m - z) * step
    assert np.array_equal(lay.quantize(edges), np.arange(top + 1))
    assert np.array_equal(lay.quantize(edges - 1e-9), np.maximum(np.arange(top + 1) - 1, 0))
    assert lay.quantize(np.array([-1e9]))[0] == 0 and lay.quantize(np.array([1e9]))[0] == top
    assert lay.quantize(np.array([-0.0]))[0] == z                    # sign(0) = +1: o >= 0 is level z
    # dequantize: the centre of each level's bin, and back again
    centres = lay.dequantize(np.arange(top + 1, dtype=np.uint8))
    assert np.allclose(centres, (np.arange(top + 1) - z + 0.5) * s)
    assert np.array_equal(lay.quantize(centres.astype(np.float64)), np.arange(top + 1))


def test_one_bit_is_the_sign():
    lay = ReadoutLayout(bits=1)
    o = np.array([-50.0, -1e-9, -0.0, 0.0, 1e-9, 50.0])
    assert list(lay.quantize(o)) == [0, 0, 1, 1, 1, 1]
    assert list(lay.dequantize(np.array([0, 1], np.uint8))) == [-4.0, 4.0]


def test_custom_step():
    lay = ReadoutLayout(bits=4, step=0.5)
    assert list(lay.quantize(np.array([-4.01, -4.0, -0.01, 0.0, 3.49, 3.5, 9.0]))) == [0, 0, 7, 8, 14, 15, 15]


def test_pool_maps_is_the_block_mean():
    rng = np.random.default_rng(0)
    o = rng.integers(-50, 51, size=(2, 3, 64, 64)).astype(np.float64)
    assert ReadoutLayout().pool_maps(o) is o
    for pool in (2, 4, 8):
        got = ReadoutLayout(pool=pool).pool_maps(o)
        assert got.shape == (2, 3, 64 // pool, 64 // pool)
        want = np.array([[[[o[a, b, i * pool:(i + 1) * pool, j * pool:(j + 1) * pool].mean()
                            for j in range(64 // pool)] for i in range(64 // pool)]
                          for b in range(3)] for a in range(2)])
        assert np.allclose(got, want, rtol=0, atol=1e-12)


def test_dict_round_trip():
    for lay in (AUTHORS, ReadoutLayout.every(2, timesteps=8, channels=4, bits=1, pool=8),
                ReadoutLayout(frames=(1, 5), bits=4, step=0.3, timesteps=5)):
        d = lay.to_dict()
        assert json.loads(json.dumps(d)) == d and isinstance(d["frames"], list)
        assert ReadoutLayout.from_dict(json.loads(json.dumps(d))) == lay
    assert ReadoutLayout.from_dict({"frames": [4], "timesteps": 4}).is_authors


@pytest.mark.parametrize("kwargs,message", [
    ({"timesteps": 0}, r"timesteps must be an integer 1..1024"),
    ({"timesteps": 10 ** 9}, r"timesteps must be an integer 1..1024"),
    ({"timesteps": 16.0}, r"timesteps must be an integer 1..1024"),
    ({"timesteps": True}, r"timesteps must be an integer 1..1024"),
    ({"frames": 16}, "non-empty list of integers"),
    ({"channels": True}, r"channels must be an integer in 1..4"),
    ({"bits": True}, r"bits must be one of"),
    ({"step": None, "bits": 4}, "step must be a number 0..1000"),
    ({"frames": (4.0,)}, "non-empty list of integers"),
    ({"frames": (True,)}, "non-empty list of integers"),
    ({"frames": (0,)}, r"increasing, each in 1..16 \(timesteps\), got \[0\]"),
    ({"frames": (17,)}, r"each in 1..16"),
    ({"frames": (8, 4)}, r"increasing.*got \[8, 4\]"),
    ({"frames": (4, 4)}, r"increasing.*got \[4, 4\]"),
    ({"channels": 0}, r"channels must be an integer in 1..4, got 0"),
    ({"channels": 5}, r"channels must be an integer in 1..4, got 5"),
    ({"channels": 2.0}, r"channels must be an integer in 1..4"),
    ({"bits": 3}, r"bits must be one of \(1, 2, 4, 8\), got 3"),
    ({"bits": "8"}, r"bits must be one of"),
    ({"pool": 3}, r"pool must be one of \(1, 2, 4, 8\), got 3"),
    ({"pool": 16}, r"pool must be one of"),
    ({"step": -1.0}, "step must be a number 0..1000"),
    ({"step": float("nan")}, "step must be a number 0..1000"),
    ({"step": float("inf"), "bits": 4}, "step must be a number 0..1000"),
    ({"step": 1e9, "bits": 2}, "step must be a number 0..1000"),    # (its level thresholds took minutes)
    ({"step": 0.2}, "the 8-bit readout is the sensor's ADC"),
])
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReadoutLayout(**kwargs)


def test_every_and_from_dict_validation():
    with pytest.raises(ValueError, match="readout_every=3 must divide timesteps=16"):
        ReadoutLayout.every(3)
    with pytest.raises(ValueError, match="readout_every must be an integer >= 0"):
        ReadoutLayout.every(-1)
    with pytest.raises(ValueError, match="must be a mapping, got list"):
        ReadoutLayout.from_dict([16])
    with pytest.raises(ValueError, match=r"unknown readout layout keys \['frame'\]"):
        ReadoutLayout.from_dict({"frame": [16]})
    with pytest.raises(ValueError, match="frames must be a list"):
        ReadoutLayout.from_dict({"frames": 16})


def test_numpy_integers_are_stored_as_python_ints_and_frames_default_to_the_last():
    import json
    layout = ReadoutLayout(frames=(np.int64(4), np.int64(8)), channels=np.int64(2), bits=np.int64(2),
                           pool=np.int64(2), timesteps=8)
    json.dumps(layout.to_dict())           # plain Python numbers, so the manifest can hold it
    assert ReadoutLayout(timesteps=8).frames == (8,) and ReadoutLayout(timesteps=8).is_authors


def test_a_huge_window_is_refused_before_its_frames_are_built():
    """A damaged checkpoint saying timesteps=1e9 with readout_every=2 once built a 5e8-entry tuple
    (killed for memory); the bound is checked first."""
    with pytest.raises(ValueError, match=r"timesteps must be an integer 1..1024"):
        ReadoutLayout.every(2, timesteps=10 ** 9)
