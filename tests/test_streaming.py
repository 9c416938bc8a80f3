"""Streaming clips through simulate/evaluate (issue 16: bounded memory) and orphaned temp files.

* ``core.npz.ArrayStream`` reads an archived array in row chunks equal to the array (stored and
  deflated members, Fortran order), and a truncated archive is one line;
* ``core.npz.NpzWriter`` writes an archive ``np.load`` reads back exactly, or nothing at all;
* chunked simulation with one noise Generator equals one call on every clip (both paths), so the
  streamed ``simulate``/``evaluate`` give the same numbers as before;
* peak memory of a real ``pixelrnn simulate --readout-only`` on 2,000 real clips: <= 700 MB and
  within the input array plus the fixed cost of loading the model;
* a writer killed with SIGKILL leaves its temp file; the next write of that output removes it,
  and never a live process's temp file or one of another name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, REPO, need
from core.atomic import atomic_open, make_temp_dir, owner_prefix, remove_orphans
from core.errors import InputError
from core.npz import ArrayStream, NpzWriter, open_npz


# -- reading in chunks ----------------------------------------------------------------------------
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("rows", [1, 3, 7, 100])
def test_array_stream_chunks_equal_the_array(tmp_path, save, rows):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 3, 5, 4), dtype=np.uint8)
    save(tmp_path / "a.npz", frames=a, f=np.asfortranarray(a.astype(np.int16)))
    with open_npz(tmp_path / "a.npz", what="clips", example="") as data:
        for name, expect in (("frames", a), ("f", a.astype(np.int16))):
            stream = ArrayStream(data, name, path=tmp_path / "a.npz")
            assert stream.shape == expect.shape and stream.dtype == expect.dtype
            parts = list(stream.chunks(rows))
            assert [len(p) for p in parts] == [min(rows, 7 - s) for s in range(0, 7, rows)]
            np.testing.assert_array_equal(np.concatenate(parts), expect)


def test_array_stream_truncated_archive_is_one_line(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (64, 16, 64, 64), dtype=np.uint8)
    np.savez_compressed(tmp_path / "a.npz", frames=a)
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2] + data[-200:])   # the zip directory survives
    with pytest.raises(InputError) as err:
        with open_npz(tmp_path / "cut.npz", what="clips", example="") as d:
            for _ in ArrayStream(d, "frames", path=tmp_path / "cut.npz").chunks(8):
                pass
    assert "cut.npz" in str(err.value) and "\n" not in str(err.value)


# -- writing in chunks ----------------------------------------------------------------------------
def test_npz_writer_round_trip_in_order(tmp_path):
    rng = np.random.default_rng(2)
    stage = rng.integers(0, 256, (10, 2, 3), dtype=np.uint8)
    logits = rng.standard_normal((10, 4)).astype(np.float32)
    with NpzWriter(tmp_path / "o.npz") as out:
        for s in range(0, 10, 4):
            out.append("stage", stage[s:s + 4])
            out.append("logits", logits[s:s + 4])
        out.add("hash", np.array("ab" * 32))
        out.add("names", np.array(["x", "yz"]))
    assert not [p for p in tmp_path.iterdir() if p.name != "o.npz"]         # spool removed
    with np.load(tmp_path / "o.npz", allow_pickle=False) as d:
        assert d.files == ["stage", "logits", "hash", "names"]
        np.testing.assert_array_equal(d["stage"], stage)
        np.testing.assert_array_equal(d["logits"], logits)
        assert str(d["hash"]) == "ab" * 32 and d["names"].tolist() == ["x", "yz"]


def test_npz_writer_writes_nothing_on_error_and_checks_chunks(tmp_path):
    (tmp_path / "o.npz").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with NpzWriter(tmp_path / "o.npz") as out:
            out.append("a", np.zeros((2, 3), np.uint8))
            raise RuntimeError("stop")
    assert (tmp_path / "o.npz").read_bytes() == b"old"                      # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz"]
    with pytest.raises(ValueError, match="chunk"):
        with NpzWriter(tmp_path / "p.npz") as out:
            out.append("a", np.zeros((2, 3), np.uint8))
            out.append("a", np.zeros((2, 4), np.uint8))
    with pytest.raises(InputError, match="must end in .npz"):
        NpzWriter(tmp_path / "p.bin")


# -- chunked simulation equals one call -----------------------------------------------------------
@pytest.mark.parametrize("path", ["fast", "instruction"])
def test_chunked_simulation_equals_one_call(path, monkeypatch):
    """Fast path: any chunks. Instruction path: chunks on its batch edges (its noise is drawn per
    batch; BATCH is made 2 here to keep the test small)."""
    from firmware_sim import program
    from firmware_sim.noise import NoiseModel
    from firmware_sim.simulate import chunk_multiple, simulate
    from firmware_sim.weights import SensorWeights

    if path == "instruction":
        monkeypatch.setattr(program, "BATCH", 2)
    weights = SensorWeights.random(np.random.default_rng(3))
    frames = np.random.default_rng(4).integers(0, 256, (5, weights.timesteps, 64, 64), dtype=np.uint8)
    noise = NoiseModel.authors()
    stages = ("1_conv1", "4_hidden") if path == "instruction" else ("4_hidden",)
    size = 2 if path == "instruction" else 3
    assert size % chunk_multiple(path) == 0
    whole = simulate(weights=weights, frames=frames, noise=noise, seed=9, path=path, stages=stages)
    rng = np.random.default_rng(9)
    parts = [simulate(weights=weights, frames=frames[s:s + size], noise=noise, path=path, stages=stages, rng=rng)
             for s in range(0, 5, size)]
    np.testing.assert_array_equal(np.concatenate([p.readout for p in parts]), whole.readout)
    for name in stages:
        np.testing.assert_array_equal(np.concatenate([p.stages[name] for p in parts]), whole.stages[name])
    with pytest.raises(ValueError, match="not both"):
        simulate(weights=weights, frames=frames, seed=1, rng=rng)


# -- the CLI: streamed outputs, peak memory -------------------------------------------------------
def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-c", "import sys; from core.cli import main; sys.exit(main(sys.argv[1:]))",
                           *map(str, args)], cwd=REPO, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def grid_clips(tmp_path_factory):
    pytest.importorskip("torch")
    src = need(DATA / "grid_s1_digits.npz")
    folder = tmp_path_factory.mktemp("grid")
    with np.load(src, allow_pickle=False) as d:
        frames, labels = d["frames"], d["labels"]
    idx = np.arange(2000) % len(labels)
    np.savez(folder / "small.npz", frames=frames[:5], labels=labels[:5])
    np.savez(folder / "big.npz", frames=frames[idx], labels=labels[idx])
    return folder


def test_streamed_simulate_equals_one_call_on_real_clips(grid_clips, tmp_path):
    """Chunk boundaries (16 clips with every stage) change nothing: the CLI's file equals one
    in-memory simulation of all clips, stages and readout, with the authors' noise on."""
    import torch

    from firmware_sim import fast
    from firmware_sim.noise import NoiseModel
    from firmware_sim.simulate import simulate
    from pixelrnn.checkpoint import load_model
    from pixelrnn.simulate import STAGE_CHUNK_CLIPS

    ckpt = REPO / "configs" / "init" / "lips_v1.pt"
    with np.load(grid_clips / "big.npz") as d:
        frames, labels = d["frames"][:STAGE_CHUNK_CLIPS + 3], d["labels"][:STAGE_CHUNK_CLIPS + 3]
    np.savez(tmp_path / "c.npz", frames=frames, labels=labels)
    r = _cli("simulate", "--weights", ckpt, "--clips", tmp_path / "c.npz", "--out", tmp_path / "o.npz",
             "--noise", "authors", "--seed", "5")
    assert r.returncode == 0, r.stderr
    model = load_model(ckpt)
    expect = simulate(weights=model.sensor_weights(), frames=frames, noise=NoiseModel.authors(), seed=5,
                      stages=fast.STAGES)
    with torch.no_grad():
        logits = model.decode(torch.from_numpy(expect.readout)).numpy()
    with np.load(tmp_path / "o.npz", allow_pickle=False) as got:
        for name in fast.STAGES:
            np.testing.assert_array_equal(got[name], expect.stages[name], err_msg=name)
        np.testing.assert_array_equal(got["readout"], expect.readout)
        np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=0)
        np.testing.assert_array_equal(got["labels"], labels)


def _peak_mb(*args) -> float:
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-c", *map(str, args)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) * 1024 / 1e6


@pytest.mark.slow
def test_simulate_peak_memory_on_2000_clips(grid_clips, tmp_path):
    """Issue 16's goal: <= 700 MB for 2,000 clips with --readout-only, and within the input array
    (131 MB here) plus the constant cost of loading the package and the model. Before streaming
    this run peaked at 627 MB, 380 MB over that constant."""
    ckpt = REPO / "configs" / "init" / "lips_v1.pt"
    cli = "import sys; from core.cli import main; sys.exit(main(sys.argv[1:]))"
    constant = _peak_mb("import sys; from pixelrnn.checkpoint import load_model; load_model(sys.argv[1])", ckpt)
    peak = _peak_mb(cli, "simulate", "--weights", ckpt, "--clips", grid_clips / "big.npz",
                    "--out", tmp_path / "o.npz", "--readout-only")
    input_mb = 2000 * 16 * 64 * 64 / 1e6
    print(f"peak {peak:.0f} MB, constant {constant:.0f} MB, input {input_mb:.0f} MB")
    assert peak <= 700
    assert peak - constant <= input_mb
    with np.load(tmp_path / "o.npz", allow_pickle=False) as d:
        assert d["readout"].shape[0] == d["pred"].shape[0] == 2000


# -- orphaned temp files --------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphaned_temp_files_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    own = owner_prefix("last.pt")                                   # NAME.PID-HOST.
    host = own.split("-")[-1].rstrip(".")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f"last.pt.{_dead_pid()}-{host}.abc123_x.tmp"
        live = tmp_path / f"last.pt.{sleeper.pid}-{host}.abc123_y.tmp"
        other_host = tmp_path / f"last.pt.{_dead_pid()}-00000000.abc123_z.tmp"
        other_name = tmp_path / f"best.pt.{_dead_pid()}-{host}.abc123_w.tmp"
        legacy = tmp_path / "last.pt.abc123_v.tmp"                  # no owner: never guessed at
        for p in (dead, live, other_host, other_name, legacy):
            p.write_bytes(b"x")
        with atomic_open(target, "wb") as fh:
            fh.write(b"new")
        assert target.read_bytes() == b"new" and not dead.exists()
        assert all(p.exists() for p in (live, other_host, other_name, legacy))
        staging = tmp_path / f".bundle.{_dead_pid()}-{host}.qq_rr.export"
        (staging / "sub").mkdir(parents=True)
        fresh = make_temp_dir(tmp_path, ".bundle", suffix=".export")
        assert fresh.is_dir() and not staging.exists() and fresh.name.startswith(owner_prefix(".bundle"))
        assert remove_orphans(tmp_path, "last.pt") == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigkill_mid_write_then_the_next_run_cleans_up(tmp_path):
    """A real writer killed with SIGKILL inside atomic_open leaves NAME.PID-HOST.*.tmp; the next
    write of the same file removes it."""
    code = ("import sys, time; from core.atomic import atomic_open\n"
            "with atomic_open(sys.argv[1], 'wb') as fh:\n"
            "    fh.write(b'partial'); fh.flush(); print('writing', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out.npz")], cwd=REPO,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    left = list(tmp_path.glob("out.npz.*.tmp"))
    assert len(left) == 1 and left[0].name.startswith(f"out.npz.{p.pid}-")
    with NpzWriter(tmp_path / "out.npz") as out:                     # the next run of a command
        out.add("a", np.arange(3))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.npz"]
