"""The bad-input corpus (issue 16): every command, run as a real subprocess, over a table of bad
inputs built in a temp folder. For each: exit code 2, stderr exactly one non-empty line, no
"Traceback" anywhere, and no output left behind (or an old one untouched). At the end a table per
command (tried / one-line / traceback / silent) is printed (``pytest -s``; docs/HARDENING.md).

A subprocess costs ~2 s (torch imports), so the module is marked ``slow``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import BUNDLED, REPO

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

WEIGHTS = BUNDLED / "lips.pt"            # our format, 10 classes, 16 timesteps
BUNDLE = BUNDLED / "lips"


@dataclass
class Case:
    command: str                          # table row: "simulate", "calib int8", "camera", ...
    name: str
    argv: list[str]                       # "{R}" stands for the corpus folder
    outputs: tuple[str, ...] = ()         # paths (with "{R}"): new outputs must stay absent (removed before
    #                                       the run), existing ones ("old.json", bundle files) unchanged
    camera: bool = False                  # edge/run_camera.py instead of the pixelrnn command
    known: str = ""                       # not fixable in this change: xfail with this reason

    @property
    def id(self) -> str:
        return f"{self.command.replace(' ', '-')}:{self.name}"


# -- the corpus files -----------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resign(bundle: Path, *, manifest_edit=None, program_hash: bool = False) -> None:
    """Rewrite a bundle's manifest so its checksums match the (edited) files: a bundle that passes
    verify_bundle but whose content is bad, as a careless re-export or hand edit would leave."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        f = bundle / name
        manifest["files"][name] = {"sha256": _sha(f), "bytes": f.stat().st_size}
    if program_hash:
        h = hashlib.sha256()
        with np.load(bundle / "sensor_weights.npz", allow_pickle=False) as d:
            for key in ("conv1", "w_fi", "w_fh", "w_oi", "w_oh"):
                h.update(np.ascontiguousarray(d[key].astype(np.int8)).tobytes())
            s = d["scalars"].astype(np.float64)
            h.update(np.array([s[0], s[1], s[2], s[3], s[4], s[5], s[6]], dtype=np.float64).tobytes())
        manifest["sensor_program_hash"] = h.hexdigest()[:16]
    if manifest_edit:
        manifest_edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _bundle(root: Path, name: str) -> Path:
    out = root / name
    shutil.copytree(BUNDLE, out)
    return out


def _sensor_edit(bundle: Path, index: int, value: float) -> None:
    with np.load(bundle / "sensor_weights.npz", allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    arrays["scalars"] = arrays["scalars"].copy()
    arrays["scalars"][index] = value
    np.savez(bundle / "sensor_weights.npz", **arrays)


def _onnx_nan(src: Path, dst: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    # the output Linear's bias: fc_bias (the authors' head) or the last fcN_bias (any readout layout)
    biases = [init for init in model.graph.initializer if re.fullmatch(r"fc\d*_bias", init.name)]
    assert biases, f"no Linear bias in {src}: the NaN case would test nothing"
    init = max(biases, key=lambda i: i.name)
    arr = numpy_helper.to_array(init).copy()
    arr[:] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dst))


def build_corpus(root: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 16, 64, 64), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3], dtype=np.int64)
    np.savez(root / "clips.npz", frames=frames, labels=labels)
    np.save(root / "clips.npy", frames)
    (root / "trunc.npz").write_bytes((root / "clips.npz").read_bytes()[:5000])
    for name, bad in {"labels_range": np.array([0, 1, 2, 50]), "labels_neg": np.array([0, -1, 2, 3]),
                      "labels_2d": labels.reshape(2, 2), "labels_float": labels.astype(np.float32),
                      "labels_str": np.array(["a", "b", "c", "d"]), "labels_len": np.array([0, 1, 2])}.items():
        np.savez(root / f"clips_{name}.npz", frames=frames, labels=bad)
    np.savez(root / "clips_float.npz", frames=frames.astype(np.float32), labels=labels)

    # checkpoints
    shutil.copy(WEIGHTS, root / "good.pt")
    ckpt = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    nan = {**ckpt, "state_dict": dict(ckpt["state_dict"])}
    nan["state_dict"]["fc.weight"] = nan["state_dict"]["fc.weight"].clone()
    nan["state_dict"]["fc.weight"][0, 0] = float("nan")
    torch.save(nan, root / "nan.pt")
    inf = {**ckpt, "state_dict": dict(ckpt["state_dict"])}
    inf["state_dict"]["bn.running_var"] = torch.full_like(inf["state_dict"]["bn.running_var"], float("inf"))
    torch.save(inf, root / "inf.pt")
    big_t = {**ckpt, "config": {**ckpt["config"], "timesteps": 10 ** 9}}
    torch.save(big_t, root / "timesteps.pt")
    (root / "trunc.pt").write_bytes(WEIGHTS.read_bytes()[:3000])
    np.save(root / "weights.npy", np.zeros(3))

    # readouts: 2 classes x 10, from this model's sensor program, and from another program
    readouts = rng.integers(100, 160, (20, 64, 64), dtype=np.uint8)
    rlabels = np.repeat(np.arange(2), 10)
    np.savez(root / "readouts.npz", readouts=readouts, labels=rlabels)
    np.save(root / "readouts.npy", readouts)
    np.savez(root / "readouts_other_program.npz", readouts=readouts, labels=rlabels,
             program_hash=np.array("0123456789abcdef"))
    np.savez(root / "readouts_few.npz", readouts=readouts[:12], labels=np.array([0] * 10 + [1] * 2))
    np.savez(root / "readouts_labels_range.npz", readouts=readouts, labels=rlabels + 40)
    np.savez(root / "readouts_labels_float.npz", readouts=readouts, labels=rlabels.astype(np.float64))
    np.savez(root / "readouts_labels_neg.npz", readouts=readouts, labels=rlabels - 1)
    np.savez(root / "readouts_labels_2d.npz", readouts=readouts, labels=rlabels.reshape(4, 5))
    np.savez(root / "readouts_labels_str.npz", readouts=readouts, labels=rlabels.astype(str))
    np.savez(root / "readouts_labels_len.npz", readouts=readouts, labels=rlabels[:7])

    # bundles
    _bundle(root, "bundle")
    (root / "bundle.npy").write_bytes(b"")
    b = _bundle(root, "b_trunc_onnx")
    (b / "host.onnx").write_bytes((BUNDLE / "host.onnx").read_bytes()[:4000])
    b = _bundle(root, "b_trunc_onnx_signed")
    (b / "host.onnx").write_bytes((BUNDLE / "host.onnx").read_bytes()[:4000])
    _resign(b)
    b = _bundle(root, "b_nan_onnx")
    _onnx_nan(BUNDLE / "host.onnx", b / "host.onnx")
    _resign(b)
    b = _bundle(root, "b_timesteps")
    _sensor_edit(b, 6, 1e9)
    _resign(b, program_hash=True, manifest_edit=lambda m: m["preprocessing"].update(timesteps=10 ** 9))
    b = _bundle(root, "b_size")
    _sensor_edit(b, 5, 100000)
    _resign(b, program_hash=True)
    b = _bundle(root, "b_nan_thresh")
    _sensor_edit(b, 0, float("nan"))
    _resign(b, program_hash=True)
    for name, edit in {"b_classes_one": lambda m: m.update(classes=["a"]),
                       "b_classes_int": lambda m: m.update(classes=list(range(10))),
                       "b_classes_empty_name": lambda m: m.update(classes=[""] * 10),
                       "b_classes_many": lambda m: m.update(classes=[f"c{i}" for i in range(2000)]),
                       "b_task_int": lambda m: m.update(task=5),
                       "b_task_empty": lambda m: m.update(task=""),
                       "b_manifest_timesteps": lambda m: m["preprocessing"].update(timesteps=1e9)}.items():
        b = _bundle(root, name)
        _resign(b, manifest_edit=edit)

    # generate checkpoints: a valid tiny gated prior (1-bit 64x64), a NaN one, damaged ones
    from pixelrnn.generative.train import FORMAT, GenerateConfig, build_model

    cfg = GenerateConfig(model="gated", data=str(root / "readouts.npz"), hidden=4, layers=1,
                         out_dir=str(root / "gen"))
    model = build_model(cfg, num_classes=2, image_shape=(64, 64), num_labels=2)
    meta = {"num_classes": 2, "image_shape": [64, 64], "num_labels": 2, "data_description": "test"}
    from dataclasses import asdict
    state = {"format": FORMAT, "config": asdict(cfg), "meta": meta, "model": model.state_dict()}
    torch.save(state, root / "gen_good.pt")
    bad = dict(state, model={k: v.clone() for k, v in state["model"].items()})
    key = next(k for k, v in bad["model"].items() if v.is_floating_point())
    bad["model"][key].view(-1)[0] = float("nan")
    torch.save(bad, root / "gen_nan.pt")
    torch.save(dict(state, meta={"num_classes": 2}), root / "gen_meta.pt")
    torch.save(dict(state, config={"model": "nope"}), root / "gen_config.pt")
    torch.save(dict(state, model={"x": torch.zeros(1)}), root / "gen_keys.pt")
    (root / "gen_trunc.pt").write_bytes((root / "gen_good.pt").read_bytes()[:2000])
    (root / "gen_resume").mkdir()
    (root / "gen_resume" / "last.pt").write_bytes((root / "gen_good.pt").read_bytes()[:2000])
    (root / "train_resume").mkdir()                       # pixelrnn train --resume over a truncated last.pt
    (root / "train_resume" / "last.pt").write_bytes((root / "gen_good.pt").read_bytes()[:2000])
    (root / "train_resume2").mkdir()                      # ... and over a torch file that is no training state
    (root / "train_resume2" / "last.pt").write_bytes((root / "gen_good.pt").read_bytes())
    np.save(root / "prior.npy", np.zeros(3))
    (root / "old.json").write_text('{"old": true}')


def _cases() -> list[Case]:
    R = "{R}"
    c: list[Case] = []
    sim = lambda w, cl, name, extra=(): Case("simulate", name, ["simulate", "--weights", f"{R}/{w}",  # noqa: E731
                                                                "--clips", f"{R}/{cl}", "--out", f"{R}/sim.npz",
                                                                *extra], (f"{R}/sim.npz",))
    c += [sim("nan.pt", "clips.npz", "nan-weights"), sim("inf.pt", "clips.npz", "inf-weights"),
          sim("trunc.pt", "clips.npz", "truncated-weights"), sim("weights.npy", "clips.npz", "npy-weights"),
          sim("timesteps.pt", "clips.npz", "timesteps-1e9"),
          sim("good.pt", "clips.npy", "npy-clips"), sim("good.pt", "trunc.npz", "truncated-clips"),
          sim("good.pt", "clips_float.npz", "float-frames")]
    c += [sim("good.pt", f"clips_{n}.npz", n) for n in
          ("labels_range", "labels_neg", "labels_2d", "labels_float", "labels_str", "labels_len")]
    c += [sim("good.pt", "clips.npz", "bad-path-choice", ["--path", "bogus"]),
          Case("simulate", "out-not-npz", ["simulate", "--weights", f"{R}/good.pt", "--clips", f"{R}/clips.npz",
                                           "--out", f"{R}/sim.txt"], (f"{R}/sim.txt",)),
          Case("simulate", "missing-arg", ["simulate", "--weights", f"{R}/good.pt"])]

    ev = lambda w, cl, name, extra=(): Case("evaluate", name, ["evaluate", "--weights", f"{R}/{w}",  # noqa: E731
                                                                "--clips", f"{R}/{cl}", "--json", f"{R}/old.json",
                                                                *extra], (f"{R}/old.json",))
    c += [ev("nan.pt", "clips.npz", "nan-weights"), ev("inf.pt", "clips.npz", "inf-weights"),
          ev("good.pt", "clips.npy", "npy-clips"), ev("good.pt", "clips_labels_range.npz", "labels-range"),
          ev("good.pt", "clips_labels_neg.npz", "labels-negative"),
          ev("good.pt", "clips_labels_str.npz", "labels-string"),
          ev("good.pt", "clips.npz", "bad-noise", ["--noise", f"{R}/clips.npy"])]

    ex = lambda w, name, extra=(): Case("export", name, ["export", "--weights", f"{R}/{w}",  # noqa: E731
                                                           "--out", f"{R}/exported", *extra], (f"{R}/exported",))
    c += [ex("nan.pt", "nan-weights"), ex("inf.pt", "inf-weights"), ex("trunc.pt", "truncated-weights"),
          ex("good.pt", "npy-representative", ["--format", "tflite", "--int8", "--representative",
                                               f"{R}/readouts.npy"]),
          ex("good.pt", "truncated-representative", ["--format", "tflite", "--int8", "--representative",
                                                     f"{R}/trunc.npz"]),
          ex("good.pt", "other-program-representative", ["--format", "tflite", "--int8", "--representative",
                                                         f"{R}/readouts_other_program.npz"]),
          ex("good.pt", "bad-format", ["--format", "jpeg"])]

    cd = lambda r, name, w="good.pt", extra=(): Case("calib decoder", name, [  # noqa: E731
        "calib", "decoder", "--weights", f"{R}/{w}", "--readouts", f"{R}/{r}", "--out", f"{R}/cal.pt", *extra],
        (f"{R}/cal.pt",))
    c += [cd("readouts.npy", "npy-readouts"), cd("readouts_few.npz", "fewer-per-class-than-folds"),
          cd("readouts_labels_range.npz", "labels-range"), cd("readouts_labels_float.npz", "labels-float"),
          cd("readouts.npz", "nan-weights", w="nan.pt"),
          cd("readouts_other_program.npz", "other-sensor-program"),
          cd("readouts.npz", "folds-1", extra=["--folds", "1"])]
    ci = lambda b, r, name, extra=(): Case("calib int8", name, [  # noqa: E731
        "calib", "int8", "--bundle", f"{R}/{b}", "--readouts", f"{R}/{r}", "--no-tflite", "--runs", "2",
        "--warmup", "0", *extra], (f"{R}/{b}/manifest.json", f"{R}/{b}/host_int8.onnx"))
    c += [ci("b_trunc_onnx", "readouts.npz", "truncated-host-onnx"),
          ci("b_trunc_onnx_signed", "readouts.npz", "truncated-host-onnx-resigned"),
          ci("bundle", "readouts_other_program.npz", "other-sensor-program"),
          ci("bundle", "readouts.npy", "npy-readouts"),
          ci("bundle", "readouts_few.npz", "fewer-per-class-than-folds"),
          ci("b_timesteps", "readouts.npz", "timesteps-1e9")]
    c += [Case("calib noise", "npy-readouts", ["calib", "noise", "--weights", f"{R}/good.pt", "--readouts",
                                               f"{R}/readouts.npy", "--clips", f"{R}/clips.npz",
                                               "--out", f"{R}/noise.json", "--no-plots"], (f"{R}/noise.json",)),
          Case("calib noise", "nan-weights", ["calib", "noise", "--weights", f"{R}/nan.pt", "--readouts",
                                              f"{R}/readouts.npz", "--clips", f"{R}/clips.npz",
                                              "--out", f"{R}/noise.json", "--no-plots"], (f"{R}/noise.json",))]
    c += [Case("calib (args)", "no-subcommand", ["calib"]),
          Case("calib (args)", "unknown-subcommand", ["calib", "bogus"]),
          Case("calib (args)", "int8-missing-args", ["calib", "int8"]),
          Case("calib (args)", "decoder-bad-scales", ["calib", "decoder", "--weights", "x", "--readouts", "y",
                                                      "--out", "z", "--scales", "a,b"])]

    g = "generate"
    c += [Case(g, "train-bad-model", [g, "train", "--model", "x"]),
          Case(g, "no-action", [g]),
          Case(g, "train-npy-data", [g, "train", "--data", f"{R}/readouts.npy", "--epochs", "1",
                                     "--out-dir", f"{R}/gen_out"], (f"{R}/gen_out",)),
          *[Case(g, f"train-{n}", [g, "train", "--data", f"{R}/readouts_{n}.npz", "--epochs", "1",
                                   "--out-dir", f"{R}/gen_out"], (f"{R}/gen_out",))
            for n in ("labels_neg", "labels_2d", "labels_str", "labels_len", "labels_float")],
          Case(g, "train-few-readouts", [g, "train", "--data", f"{R}/readouts_few.npz", "--epochs", "1",
                                         "--out-dir", f"{R}/gen_out"], (f"{R}/gen_out",)),
          Case(g, "train-resume-damaged", [g, "train", "--data", f"{R}/readouts.npz", "--epochs", "1",
                                           "--out-dir", f"{R}/gen_resume", "--resume", "--hidden", "4",
                                           "--layers", "1"], (f"{R}/gen_resume/report.json",)),
          Case("train", "resume-truncated", ["train", "--dataset", "grid", "--epochs", "1", "--limit", "16",
                                             "--out-dir", f"{R}/train_resume", "--resume"],
               (f"{R}/train_resume/model.pt",)),
          Case("train", "resume-not-a-state", ["train", "--dataset", "grid", "--epochs", "1", "--limit", "16",
                                               "--out-dir", f"{R}/train_resume2", "--resume"],
               (f"{R}/train_resume2/model.pt",)),
          Case(g, "code-npy-readouts", [g, "code", "--checkpoint", f"{R}/gen_good.pt", "--readouts",
                                        f"{R}/readouts.npy", "--json", f"{R}/code.json"], (f"{R}/code.json",)),
          Case(g, "code-nan-checkpoint", [g, "code", "--checkpoint", f"{R}/gen_nan.pt", "--readouts",
                                          f"{R}/readouts.npz", "--json", f"{R}/code.json"], (f"{R}/code.json",))]
    for name in ("gen_trunc", "gen_meta", "gen_config", "gen_keys", "gen_nan"):
        c.append(Case(g, f"export-prior-{name}", [g, "export-prior", "--checkpoint", f"{R}/{name}.pt",
                                                  "--out", f"{R}/prior.npz"], (f"{R}/prior.npz",)))
    c += [Case(g, "nll-damaged", [g, "nll", "--checkpoint", f"{R}/gen_keys.pt"]),
          Case(g, "sample-truncated", [g, "sample", "--checkpoint", f"{R}/gen_trunc.pt", "--out",
                                       f"{R}/s.png"], (f"{R}/s.png", f"{R}/s.npz"))]
    c += [Case("bench", "bad-arg", ["bench", "--bogus"])]

    cam = lambda b, name, extra=(), known="": Case("camera", name, [  # noqa: E731
        "--model", f"{R}/{b}", "--source", "test", "--headless", "--max-frames", "40", *extra],
        camera=True, known=known)
    c += [cam("b_trunc_onnx", "truncated-host-onnx"), cam("b_trunc_onnx_signed", "truncated-host-onnx-resigned"),
          cam("b_nan_onnx", "nan-logits"), cam("b_timesteps", "timesteps-1e9"), cam("b_size", "sensor-size-1e5"),
          cam("b_nan_thresh", "nan-threshold"), cam("b_classes_one", "one-class"),
          cam("b_classes_int", "classes-not-strings"), cam("b_classes_empty_name", "empty-class-name"),
          cam("b_classes_many", "2000-classes"), cam("b_task_int", "task-not-string"),
          cam("b_manifest_timesteps", "manifest-timesteps-1e9"),
          cam("bundle.npy", "bundle-is-a-file"),
          cam("bundle", "prior-npy", ["--payload", "prior", "--prior", f"{R}/prior.npy"]),
          cam("bundle", "bad-threads", ["--threads", "x"]),
          cam("bundle", "absurd-camera-index", ["--source", "99999"]),
          Case("camera", "json-out-left-on-error", [
              "--model", f"{R}/b_nan_onnx", "--source", "test", "--headless", "--max-frames", "40",
              "--json-out", f"{R}/cam.jsonl"], (f"{R}/cam.jsonl",), camera=True)]
    return c


CASES = _cases()
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    build_corpus(root)
    return root


def _snapshot(path: Path):
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    return path.read_bytes() if path.exists() else None


def run_case(case: Case, root: Path) -> dict:
    argv = [a.replace("{R}", str(root)) for a in case.argv]
    outputs = [Path(o.replace("{R}", str(root))) for o in case.outputs]
    for p in outputs:      # a new output left by an earlier case must not mask this one
        if p.parent == root and not p.name.startswith("old") and p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    before = {p: _snapshot(p) for p in outputs}
    cmd = ([sys.executable, str(REPO / "edge" / "run_camera.py")] if case.camera
           else [sys.executable, "-m", "core.cli"])
    env = {**os.environ, "PIXELRNN_DEBUG": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PIXELRNN_DEBUG")
    proc = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=300, cwd=root, env=env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    traceback = "Traceback" in proc.stderr or "Traceback" in proc.stdout
    changed = [str(p) for p in outputs if _snapshot(p) != before[p]]
    silent = proc.returncode == 0 or bool(changed)
    one_line = proc.returncode == 2 and len(lines) == 1 and not traceback and not silent
    return {"rc": proc.returncode, "stderr": proc.stderr[-3000:], "stdout": proc.stdout[-1000:],
            "traceback": traceback, "silent": silent, "one_line": one_line, "changed": changed}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, corpus: Path):
    result = run_case(case, corpus)
    RESULTS[case.id] = {"command": case.command, "known": case.known, **result}
    if case.known and not result["one_line"]:
        pytest.xfail(case.known)   # in a file this change may not edit: counted, reported, not asserted
    assert not result["traceback"], result["stderr"]
    assert not result["silent"], (result["rc"], result["changed"], result["stdout"], result["stderr"])
    assert result["one_line"], (result["rc"], result["stderr"])


def summary_table(results: dict) -> str:
    rows = defaultdict(lambda: [0, 0, 0, 0])
    for r in results.values():
        row = rows[r["command"]]
        row[0] += 1
        row[1] += r["one_line"]
        row[2] += r["traceback"]
        row[3] += r["silent"]
    lines = ["| command | tried | one-line | traceback | silent |", "|---|---:|---:|---:|---:|"]
    for command in sorted(rows):
        lines.append(f"| {command} | " + " | ".join(map(str, rows[command])) + " |")
    total = [sum(r[i] for r in rows.values()) for i in range(4)]
    lines.append("| **all** | " + " | ".join(map(str, total)) + " |")
    return "\n".join(lines)


def test_zz_summary():
    if not RESULTS:
        pytest.skip("no bad-input case ran")
    table = summary_table(RESULTS)
    known = [f"- {case}: {r['known']}" for case, r in RESULTS.items() if r["known"] and not r["one_line"]]
    if known:
        table += "\n\nKnown, outside this change (xfail):\n" + "\n".join(known)
    print("\n" + table)
    out = os.environ.get("PIXELRNN_HARDENING_TABLE")
    if out:
        Path(out).write_text(table + "\n")
    assert sum(r["traceback"] for r in RESULTS.values() if not r["known"]) == 0
    assert sum(r["silent"] for r in RESULTS.values() if not r["known"]) == 0


class _FullDisk:
    """A writable binary file that fails with ENOSPC once ``room`` bytes are written."""

    def __init__(self, room: int) -> None:
        self.room, self.pos, self.closed = room, 0, False

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self.pos + len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def test_full_disk_npz_write_raises_once_without_a_second_traceback(monkeypatch, tmp_path):
    """A full disk during an .npz write: one OSError, no "Exception ignored" traceback from the
    zip file's finaliser, and the old file untouched (issue 16 part 3)."""
    import gc

    import core.atomic
    from core.npz import NpzWriter, write_zip
    from firmware_sim import clips

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    arrays = {"a": np.random.default_rng(0).integers(0, 255, (64, 64, 64), dtype=np.uint8)}
    disk = _FullDisk(room=1000)
    with pytest.raises(OSError, match="No space"):
        write_zip(disk, arrays.items())
    disk.close()
    gc.collect()
    assert ignored == []

    out = tmp_path / "out.npz"
    out.write_bytes(b"old")

    from contextlib import contextmanager

    @contextmanager
    def full_atomic_open(path, mode="wb"):
        yield _FullDisk(room=1000)
    monkeypatch.setattr(clips, "atomic_open", full_atomic_open)
    with pytest.raises(OSError, match="No space"):
        clips.save_npz_atomic(out, arrays)
    gc.collect()
    assert ignored == [] and out.read_bytes() == b"old"

    # the streamed writer (simulate): the same, and its spool folder is removed too
    monkeypatch.setattr(core.atomic, "atomic_open", full_atomic_open)
    with pytest.raises(OSError, match="No space"):
        with NpzWriter(out) as writer:
            writer.append("a", arrays["a"][:32])
            writer.append("a", arrays["a"][32:])
    gc.collect()
    assert ignored == [] and out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]


def test_readouts_carry_and_check_their_sensor_program(tmp_path):
    """``pixelrnn simulate`` writes ``program_hash``; calib refuses readouts of another program."""
    from core.errors import InputError
    from core.readouts import load_readouts

    path = tmp_path / "r.npz"
    np.savez(path, readouts=np.zeros((4, 64, 64), np.uint8), labels=np.arange(4),
             program_hash=np.array("00000000000000aa"))
    data = load_readouts(path, need_labels=True, num_classes=4)
    assert data.program_hash == "00000000000000aa" and data.subset(np.arange(2)).program_hash == data.program_hash
    data.check_program("00000000000000aa")
    data.check_program(None)
    with pytest.raises(InputError, match="sensor program 00000000000000aa, but .* runs program 00000000000000bb"):
        data.check_program("00000000000000bb")
