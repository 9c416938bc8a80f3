"""benchmarks/frontier.py: sweep summaries (several per data set are drawn together), the table rows and
the smallest readout that beats the raw-frame linear baseline."""
from __future__ import annotations

import json
import subprocess
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


def _frontier(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "frontier.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _references(path) -> None:
    """A reference_points.py JSON: linear 89% (one fold) and the 3D CNN at 90, 92, 94% test over three seeds."""
    video = {str(s): {"test_accuracy": t, "val_accuracy": t + 0.01} for s, t in zip((0, 1, 2), (0.90, 0.92, 0.94))}
    path.write_text(json.dumps({"results": [{"dataset": "grid", "folds": [
        {"linear": {"test_accuracy": 0.89, "val_accuracy": 0.90}, "video": video}]}]}))


def test_the_frontier_across_rounds_is_read_back_from_the_document(tmp_path):
    """Two rounds written into a document by frontier.py, then read back from it (--from-doc --chosen): per
    readout size the configuration with the best validation across both rounds, tagged with its round's
    section, the authors' readout, and both reference points; the numbers are the tables', to their 0.1."""
    doc, refs, a, b = (tmp_path / n for n in ("R.md", "refs.json", "a.json", "b.json"))
    doc.write_text("# results\n\n<!-- frontier-r1:begin -->\n<!-- frontier-r1:end -->\n\n"
                   "<!-- frontier-r2:begin -->\n<!-- frontier-r2:end -->\n\n<!-- frontier-all:begin -->\n"
                   "<!-- frontier-all:end -->\n")
    _references(refs)
    a.write_text(json.dumps({"rows": [_row("authors", 4096, 65.04), {**_row("f4-2bit", 4096, 95.0), "val_mean": 96.0},
                                      {**_row("f2-1bit-pool2", 1024, 93.0), "val_mean": 95.0}]}))
    b.write_text(json.dumps({"rows": [{**_row("f4-2bit-long", 4096, 94.0), "val_mean": 97.0},      # val-best
                                      {**_row("f2-1bit-pool2-long", 1024, 96.0), "val_mean": 94.0}]}))  # test-best
    for name, summary in (("frontier-r1", a), ("frontier-r2", b)):
        result = _frontier("--sweep", f"grid={summary}", "--references", str(refs), "--section", name,
                           "--write", str(doc))
        assert result.returncode == 0, result.stderr
    for _ in range(2):                     # the second time its own section's rows must not be read back
        result = _frontier("--from-doc", str(doc), "--chosen", "--section", "frontier-all", "--write", str(doc),
                           "--png", str(tmp_path / "all.png"))
        assert result.returncode == 0, result.stderr
        section = doc.read_text().split("<!-- frontier-all:begin -->")[1].split("<!-- frontier-all:end -->")[0]
        rows = [line for line in section.splitlines() if line.startswith("| grid |")]
        assert rows == [
            "| grid | f2-1bit-pool2 [frontier-r1] | 1024 | 64x less | 3 | 95.0 ± 0.5 | 93.0 ± 1.0 |",
            "| grid | authors [frontier-r1] | 4096 | 16x less | 3 | 66.0 ± 0.5 | 65.0 ± 1.0 |",
            "| grid | f4-2bit-long [frontier-r2] | 4096 | 16x less | 3 | 97.0 ± 0.5 | 94.0 ± 1.0 |",
            "| grid | reference: linear on the averaged raw frame | 4096 | 16x less | - | 90.0 | 89.0 |",
            "| grid | reference: 3D CNN on the raw 16x64x64 clip | 65536 | 1x | 3 | 93.0 ± 2.0 | 92.0 ± 2.0 |"]
        assert "Collected" in section and "f2-1bit-pool2 [frontier-r1], 1024 B (93.0%)" in section
        assert (tmp_path / "all.png").stat().st_size > 10_000
    # --supersede frontier-r1: at 1024 and 4096 B (r1 measured both) r2's rows no longer compete
    result = _frontier("--from-doc", str(doc), "--chosen", "--supersede", "frontier-r1", "--doc-sections",
                       "frontier-r1,frontier-r2")
    assert result.returncode == 0, result.stderr
    assert "| grid | f4-2bit [frontier-r1] | 4096 |" in result.stdout and "[frontier-r2]" not in result.stdout
    result = _frontier("--from-doc", str(doc), "--chosen", "--supersede", "frontier-r2", "--doc-sections",
                       "frontier-r1,frontier-r2")
    assert "f4-2bit-long [frontier-r2]" in result.stdout and "f2-1bit-pool2-long [frontier-r2]" in result.stdout
    assert "| grid | f2-1bit-pool2 [frontier-r1]" not in result.stdout
    assert "| grid | authors [frontier-r1] | 4096 |" in result.stdout   # the authors' readout is always drawn
    for args, message in ((("--chosen", "--supersede", "frontier-r7"), "--supersede: no rows read from section "
                                                                        "frontier-r7"),
                          (("--supersede", "frontier-r1"), "--supersede needs --from-doc FILE.md and --chosen")):
        result = _frontier("--from-doc", str(doc), *args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    # one section redrawn: its rows untagged, nothing chosen away
    result = _frontier("--from-doc", str(doc), "--doc-sections", "frontier-r2")
    assert result.returncode == 0 and "Redrawn" in result.stdout, result.stderr
    assert "| grid | f2-1bit-pool2-long | 1024 |" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("--doc-sections", "frontier-r9"), "no frontier section named frontier-r9"),
    (("--doc-sections", "frontier-r1", "--from-doc", "{missing}"), "no such file"),
    (("--doc-sections", "frontier-r1"), "--doc-sections needs --from-doc"),
    ((), "give at least one --sweep"),
])
def test_bad_document_arguments_are_one_line_errors(tmp_path, args, message):
    doc = tmp_path / "R.md"
    doc.write_text("<!-- frontier-r1:begin -->\n| grid | f4 | 4096 | 16x less | 3 | 9x.0 | 90.0 |\n"
                   "<!-- frontier-r1:end -->\n")
    args = [a.format(missing=tmp_path / "missing.md") for a in args]
    if "--from-doc" not in args and message != "--doc-sections needs --from-doc" and args:
        args = ["--from-doc", str(doc), *args]
    result = _frontier(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_several_reference_files_each_give_their_data_sets(tmp_path, capsys):
    from benchmarks.frontier import get_args_parser, main
    grid, cam, summary = tmp_path / "grid.json", tmp_path / "cam.json", tmp_path / "s.json"
    _references(grid)
    cam.write_text(json.dumps({"results": [{"dataset": "cambridge", "folds": [
        {"linear": {"test_accuracy": 0.30, "val_accuracy": 0.40}}, {"linear": {"test_accuracy": 0.32,
                                                                              "val_accuracy": 0.44}}]}]}))
    summary.write_text(json.dumps({"rows": [_row("f2-1bit-pool2", 1024, 63.0)]}))
    args = get_args_parser().parse_args(["--sweep", f"grid={summary}", "--sweep", f"cambridge={summary}",
                                         "--references", str(grid), "--references", str(cam)])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| grid | reference: 3D CNN on the raw 16x64x64 clip | 65536 | 1x | 3 | 93.0 ± 2.0 | 92.0 ± 2.0 |" in out
    assert "| cambridge | reference: linear on the averaged raw frame | 4096 | 16x less | - | 42.0 | 31.0 |" in out
    assert "cambridge: smallest readout beating the raw-frame linear baseline (31.0%)" in out


def test_four_data_sets_are_drawn_two_by_two(tmp_path):
    from PIL import Image

    from benchmarks.frontier import plot
    sweeps = {ds: [_row("authors", 4096, 60.0), _row("f2-1bit-pool2", 1024, 70.0)]
              for ds in ("grid", "cambridge", "avletters_ms", "avletters")}
    plot(sweeps, {}, tmp_path / "four.png")
    plot({"grid": sweeps["grid"]}, {}, tmp_path / "one.png")
    (w4, h4), (w1, h1) = Image.open(tmp_path / "four.png").size, Image.open(tmp_path / "one.png").size
    assert (w4, h4) == (2 * w1, 2 * h1)          # two columns, two rows of the one-panel figure's size
