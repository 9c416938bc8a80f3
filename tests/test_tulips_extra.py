"""benchmarks/tulips_extra.py: Tulips1 as an extra test of GRID-trained models, on the bundled lips model and
the real Tulips1 and GRID clips."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import DATA, REPO, need  # noqa: E402

sys.path.insert(0, str(REPO))
from benchmarks import tulips_extra  # noqa: E402

LIPS = REPO / "pixelrnn" / "models" / "lips.pt"


def _run(*argv: str) -> int:
    return tulips_extra.main(tulips_extra.get_args_parser().parse_args(list(argv)))


@pytest.fixture(scope="module")
def lips_run(tmp_path_factory):
    need(DATA / "pixelrnn_ref" / "tulips_test10.npz")
    need(DATA / "grid_s1_digits.npz")
    out = tmp_path_factory.mktemp("tulips")
    doc = out / "R.md"
    doc.write_text("# R\n\n<!-- tulips-extra:begin -->\nold\n<!-- tulips-extra:end -->\ntail\n")
    rc = _run("--model", f"lips={LIPS}", "--data-dir", str(DATA), "--write", str(doc),
              "--json-out", str(out / "t.json"))
    return rc, doc.read_text(), json.loads((out / "t.json").read_text())


def test_the_simulator_figures_agree_with_pytorch(lips_run):
    """The Tulips1 and GRID figures (firmware_sim) equal the PyTorch model's on the same clips: an independent
    path, exact (binary states, integer readout levels)."""
    from pixelrnn.checkpoint import load_model
    from pixelrnn.data import load_dataset, split
    from pixelrnn.report import torch_readout

    rc, _, out = lips_run
    assert rc == 0
    (row,) = out["rows"]
    model = load_model(LIPS)
    tulips, grid = load_dataset("tulips", data_dir=DATA), load_dataset("grid", data_dir=DATA)
    with torch.no_grad():
        t = model.decode(torch.from_numpy(torch_readout(model, tulips.frames))).numpy()
        test = split(grid)["test"]
        g = model.decode(torch.from_numpy(torch_readout(model, grid.frames[test]))).numpy()
    assert row["clean"] == [float(np.mean(t[:, 1:5].argmax(1) == tulips.labels))]
    assert row["grid_test"] == [float(np.mean(g.argmax(1) == grid.labels[test]))]
    assert row["bytes"] == model.config.layout.payload_bytes == 1024 and row["seeds"] == 1
    assert len(row["noisy"]) == 1 and 0.0 <= row["noisy"][0] <= 1.0
    assert 0.0 <= out["linear"] <= 1.0 and round(out["linear"] * 10, 6) % 1 == 0     # k of 10 clips


def test_the_section_is_replaced_and_the_rest_kept(lips_run):
    _, doc, out = lips_run
    assert "old" not in doc and doc.endswith("<!-- tulips-extra:end -->\ntail\n")
    assert f"| lips | 1,024 | 1 | {100 * out['rows'][0]['grid_test'][0]:.1f} |" in doc
    assert "chance (4 classes)" in doc and "tulips_extra.py --model lips=" in doc


def test_the_printed_command_reproduces_the_run(lips_run):
    """The section's command carries every argument that shapes it (threads, data, section, file), so that
    parsing it back gives the same run."""
    import shlex
    _, doc, _ = lips_run
    line = next(x for x in doc.splitlines() if x.startswith("Command: `"))
    argv = shlex.split(line[len("Command: `"):-1])
    assert argv[:2] == ["python", "benchmarks/tulips_extra.py"]
    again = tulips_extra.get_args_parser().parse_args(argv[2:])
    assert again.model == [f"lips={LIPS}"] and again.threads == 1 and again.data_dir == str(DATA)
    assert again.section == "tulips-extra" and again.write is not None and again.write.name == "R.md"


@pytest.mark.parametrize("argv, says", [
    (["--model", "lips"], "expected LABEL=PATH"),
    (["--model", "x=/nonexistent/folder"], "neither a checkpoint nor a folder of seed<k>/model.pt"),
    (["--model", f"g={REPO / 'pixelrnn' / 'models' / 'gesture.pt'}"], "not a GRID digits model"),
])
def test_bad_models_get_one_line_and_exit_2(argv, says, capsys):
    need(DATA / "pixelrnn_ref" / "tulips_test10.npz")
    assert _run(*argv, "--data-dir", str(DATA)) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and err.startswith("tulips_extra: ")
