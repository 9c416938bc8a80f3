"""benchmarks/frontier.py: sweep summaries (several per data set are drawn together), the table rows and
the smallest readout that beats the raw-frame linear baseline."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("torch")        # frontier.py reads sweep summaries with pixelrnn.sweep (the training package)

from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO))
from benchmarks.frontier import load_sweeps, plot_title, smallest_beating, table  # noqa: E402
from core.errors import InputError  # noqa: E402


def _row(config: str, nbytes: int, test: float, seeds: int = 3) -> dict:
    return {"config": config, "seeds": seeds, "readout_bytes": nbytes, "val_mean": test + 1, "val_std": 0.5,
            "test_mean": test, "test_std": 1.0}


def test_two_sweeps_of_one_data_set_are_drawn_together(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": [_row("f4-2bit", 4096, 95.0), {"config": "unfinished", "seeds": 0}]}))
    b.write_text(json.dumps({"rows": [_row("f2-1bit-pool2", 1024, 93.0)]}))
    sweeps = load_sweeps([f"grid={a}", f"grid={b}"])
    assert [r["config"] for r in sweeps["grid"]] == ["f4-2bit", "f2-1bit-pool2"]     # the unfinished one left out
    text = table(sweeps, {})
    assert text.index("f2-1bit-pool2 | 1024") < text.index("f4-2bit | 4096")          # by bytes
    assert smallest_beating(sweeps["grid"], 89.0)["config"] == "f2-1bit-pool2"
    assert smallest_beating(sweeps["grid"], 94.0)["config"] == "f4-2bit"
    assert smallest_beating(sweeps["grid"], 96.0) is None


def test_the_smallest_readout_is_the_one_validation_chose_at_its_size():
    """Within one readout size the configuration with the best validation accuracy is reported, even when
    another of that size reads higher on test (choosing by test would be choosing on the test split)."""
    rows = [{**_row("val-best", 1024, 60.0), "val_mean": 80.0},
            {**_row("test-best", 1024, 65.0), "val_mean": 75.0},
            {**_row("bigger", 4096, 70.0), "val_mean": 70.0}]
    assert smallest_beating(rows, 55.0)["config"] == "val-best"
    assert smallest_beating(rows, 62.0)["config"] == "bigger"      # not test-best: validation passed it over
    assert smallest_beating(rows, 75.0) is None
    tie = [{**_row("steady", 1024, 50.0), "val_mean": 80.0, "val_std": 0.5},
           {**_row("spread", 1024, 70.0), "val_mean": 80.0, "val_std": 3.0}]
    assert smallest_beating(tie, 40.0)["config"] == "steady"          # a tie goes to the smaller spread
    assert smallest_beating(tie, 60.0) is None
    # the same tie in floats that differ in the last bits (three seeds' per-clip accuracies averaged in another
    # order): still a tie, and still the smaller spread
    mean = (48.07692307692308 + 53.84615384615385 + 51.92307692307693) / 3
    assert mean != (50.0 + 53.84615384615385 + 50.0) / 3
    tie = [{**_row("spread", 2048, 47.1), "val_mean": mean, "val_std": 2.9},
           {**_row("steady", 2048, 50.8), "val_mean": (50.0 + 53.84615384615385 + 50.0) / 3, "val_std": 2.2}]
    assert smallest_beating(tie, 40.0)["config"] == "steady"
    assert smallest_beating(list(reversed(tie)), 40.0)["config"] == "steady"


def test_a_bad_sweep_argument_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="DATASET=SUMMARY.json"):
        load_sweeps(["grid"])
    with pytest.raises(InputError, match="no such file"):
        load_sweeps([f"grid={tmp_path / 'missing.json'}"])


def test_the_plot_names_the_red_square_only_where_one_is_drawn():
    with_authors = [_row("authors", 4096, 65.0), _row("f4-2bit", 4096, 95.0)]
    assert plot_title("grid", with_authors) == "grid (red square: the authors' readout)"
    assert plot_title("avletters_ms", [_row("f2-1bit-pool2", 1024, 38.6)]) == "avletters_ms"
    assert "red square" in plot_title("cambridge", [_row("authors-warm", 4096, 40.0)])     # any authors' start
