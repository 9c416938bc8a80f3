"""benchmarks/layout_cost.py: the sensor cost of every readout layout the sweeps and default models use."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import AUTHORS_BUNDLES, BUNDLED, REPO

sys.path.insert(0, str(REPO))
from benchmarks.layout_cost import (
    DEFAULT_SPECS,
    MODELS,
    READOUT_DEFAULTS,
    collect,
    describe,
    program_cost,
    spec_programs,
)
from core.errors import InputError
from core.readout_layout import AUTHORS, ReadoutLayout
from edge.models import load_sensor_program
from firmware_sim.program import clip_cost, frame_cost

SCRIPT = REPO / "benchmarks" / "layout_cost.py"
F4_2BIT = ReadoutLayout.every(4, bits=2)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _costs_of(weights) -> tuple[int, int, int]:
    return (frame_cost(weights)["instructions"], frame_cost(weights, last=True)["instructions"],
            clip_cost(weights)["instructions"])


def test_rows_equal_the_cost_of_real_weights_computed_directly():
    """The table's random weights (gate threshold 1.0) cost what the authors' fixture and the default models'
    own weights cost: the count does not depend on the weights' values."""
    authors = load_sensor_program(AUTHORS_BUNDLES / "gesture" / "sensor_weights.npz")
    assert authors.layout == AUTHORS and authors.hidden == 1
    row = program_cost(AUTHORS, 1)
    assert (row["plain"], row["read"], row["window"]["instructions"]) == _costs_of(authors) == (2237, 2291, 35849)
    assert row["window"] == clip_cost(authors)                     # time and energy too
    for task in ("lips", "gesture"):
        sensor = load_sensor_program(BUNDLED / task / "sensor_weights.npz")
        row = program_cost(sensor.layout, sensor.hidden)
        assert (row["plain"], row["read"], row["window"]["instructions"]) == _costs_of(sensor)


def test_readouts_cost_instructions_and_the_window_is_prologue_plus_frames():
    for layout, hidden in ((AUTHORS, 1), (F4_2BIT, 1), (ReadoutLayout.every(2, bits=1, pool=2), 1), (F4_2BIT, 2),
                           (ReadoutLayout.every(4, bits=1, channels=2), 1)):
        c = program_cost(layout, hidden)
        assert c["read"] > c["plain"]
        reads = len(layout.frames)
        assert c["window"]["instructions"] == 2 + hidden + (16 - reads) * c["plain"] + reads * c["read"]
        assert c["window"]["readout_frames"] == reads
    one, four = (program_cost(ReadoutLayout.every(n, bits=1, pool=2), 1)["window"] for n in (1, 4))
    assert one["instructions"] > four["instructions"]
    assert one["time_us"] > four["time_us"] and one["energy_uj"] > four["energy_uj"]
    k1, k2 = (program_cost(ReadoutLayout.every(4, bits=1, channels=k), 1) for k in (1, 2))
    assert k2["read"] > k1["read"] and k2["plain"] == k1["plain"]      # a second map: one more walk, read frames only


def test_registers_grow_with_hidden_maps_not_with_bits():
    """The readout's comparison and bit planes live in the walk's scratch registers: 2 bits need no more
    digital registers than 8; each hidden map needs one more."""
    eight, two = program_cost(ReadoutLayout.every(4), 1), program_cost(F4_2BIT, 1)
    assert (eight["analog"], eight["digital"]) == (two["analog"], two["digital"]) == (6, 10)
    assert program_cost(F4_2BIT, 2)["digital"] == 11


def test_spec_settings_and_bundles_give_the_programs(tmp_path):
    spec = tmp_path / "sweep_x.yaml"
    spec.write_text("study: x\nbase: {dataset: grid, readout_bits: 2, init_from: \"runs/none/seed{seed}/model.pt\"}\n"
                    "configs:\n  plain: {}\n  f4: {readout_every: 4}\n  f4-h2: {readout_every: 4, hidden_channels: 2}\n"
                    "seeds: [0]\n")
    assert spec_programs(spec) == {"plain": (ReadoutLayout(bits=2), 1), "f4": (F4_2BIT, 1), "f4-h2": (F4_2BIT, 2)}
    programs = collect([spec], MODELS)
    assert programs[(F4_2BIT, 1)] == {"sweep_x.yaml": ["f4"]}
    lips = load_sensor_program(BUNDLED / "lips" / "sensor_weights.npz")
    assert list(programs[(lips.layout, 1)])[:2] == ["default lips model", "default gesture model"]
    assert describe(F4_2BIT) == "every 4th frame x 1 map, 2 bit, 64x64"
    assert describe(lips.layout) == "every 2nd frame x 1 map, 1 bit, 32x32 (2x2 mean)"
    assert describe(AUTHORS) == "last frame x 1 map, 8 bit, 64x64 (the authors')"
    assert describe(ReadoutLayout(frames=(3, 6, 9, 12, 15), bits=4, pool=4, channels=3)) == \
        "every 3rd frame x 3 maps, 4 bit, 16x16 (4x4 mean)"
    assert describe(ReadoutLayout(frames=(1, 16), bits=1, step=2.0)) == "frames 1,16 x 1 map, 1 bit, step 2, 64x64"


def test_a_program_that_does_not_fit_is_a_one_line_error(tmp_path):
    spec = tmp_path / "sweep_big.yaml"
    spec.write_text("study: big\nconfigs:\n  h6: {hidden_channels: 6}\nseeds: [0]\n")
    with pytest.raises(InputError, match="'h6'.*15 digital registers, a SCAMP-5 element has 14"):
        spec_programs(spec)
    spec.write_text("study: big\nconfigs:\n  f3: {readout_every: 3}\nseeds: [0]\n")
    with pytest.raises(InputError, match="must divide timesteps"):
        spec_programs(spec)


def test_the_readout_settings_are_those_the_sweep_trains():
    """The script reads specs without the training package; here ``pixelrnn.sweep`` builds every first-stage
    point and its TrainConfig says the same layout and H (second stages need their first stage's runs)."""
    pytest.importorskip("torch")
    from dataclasses import fields

    from pixelrnn.sweep import load_spec
    from pixelrnn.train_config import TrainConfig

    assert READOUT_DEFAULTS == {f.name: f.default for f in fields(TrainConfig) if f.name in READOUT_DEFAULTS}
    checked = 0
    for path in sorted(REPO.glob(DEFAULT_SPECS)):
        if "{seed}" in path.read_text():
            continue
        spec, ours = load_spec(path), spec_programs(path)
        for name in spec.configs:
            cfg = spec.train_config(name, spec.seeds[0], Path("."), fold=spec.folds[0] if spec.folds else None)
            assert ours[name] == (cfg.layout(16), cfg.hidden_channels), (path.name, name)
            checked += 1
    assert checked > 20


def test_the_script_writes_its_section(tmp_path):
    spec = tmp_path / "sweep_one.yaml"
    spec.write_text("study: one\nconfigs:\n  f4-2bit: {readout_every: 4, readout_bits: 2}\nseeds: [0]\n")
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n\nkept\n")
    proc = _run("--specs", str(spec), "--write", str(doc))
    assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    assert text.startswith("# Doc\n\nkept\n")
    assert "## Sensor cost of the readout layouts (issue 12)" in text
    section = text.split("<!-- layout-cost:begin -->")[1].split("<!-- layout-cost:end -->")[0]
    assert "Measured " in section and "Command: `python benchmarks/layout_cost.py --specs" in section
    rows = [line for line in section.splitlines() if line.startswith("| every")]
    assert len(rows) == 2                      # the default models' program and the spec's
    assert "| every 4th frame x 1 map, 2 bit, 64x64 | 1 | 4,096 | 6 | 10 | 2,237 | 2,302 | 36,055 |" in section
    assert rows[0].endswith("| default lips model; default gesture model |")
    assert rows[1].endswith("| sweep_one.yaml: f4-2bit |")


@pytest.mark.parametrize("specs", ["no_such_dir/sweep_*.yaml", "configs/sweep_missing.yaml"])
def test_specs_that_match_nothing_exit_2_in_one_line(tmp_path, specs):
    doc = tmp_path / "doc.md"
    proc = _run("--specs", specs, "--write", str(doc))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("layout_cost: error: --specs") and "matches no file" in proc.stderr
    assert not doc.exists()
