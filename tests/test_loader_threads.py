"""Batches prepared ahead on several loader threads (what a GPU run uses, train_loop.loader_threads)
give the same training run as one thread: each batch comes from its clips' own seeds, in order."""
import json

import pytest

torch = pytest.importorskip("torch")

from conftest import DATA, need  # noqa: E402
from pixelrnn import train_loop  # noqa: E402
from pixelrnn.checkpoint import load_model  # noqa: E402
from pixelrnn.train_config import TrainConfig  # noqa: E402


def test_loader_threads_follow_the_device(monkeypatch):
    monkeypatch.setattr(train_loop.os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)        # the training threads fill the cores: batches prepared inline
        assert train_loop.loader_threads(torch.device("cpu")) == 0
        torch.set_num_threads(1)        # a core to spare: one loader thread
        assert train_loop.loader_threads(torch.device("cpu")) == 1
    finally:
        torch.set_num_threads(threads)
    assert train_loop.loader_threads(torch.device("cuda")) == 1      # 2 cores: one thread beside the GPU


def test_more_loader_threads_give_the_same_run(tmp_path, monkeypatch):
    need(DATA / "grid_s1_digits.npz")
    runs = []
    for threads in (0, 1, 3):           # inline (a CPU whose cores train), one thread, several
        monkeypatch.setattr(train_loop, "loader_threads", lambda device, n=threads: n)
        out = tmp_path / f"loader{threads}"
        cfg = TrainConfig(dataset="grid", data_dir=str(DATA), limit=80, batch_size=16, epochs=2, threads=1,
                          device="cpu", out_dir=str(out))
        train_loop.train(config=cfg, progress=False)
        rows = json.loads((out / "metrics.json").read_text())["epochs"]
        runs.append((load_model(out / "model.pt").state_dict(), [(r["train_loss"], r["val_acc"]) for r in rows]))
    (a, hist_a) = runs[0]
    for b, hist_b in runs[1:]:
        assert hist_a == hist_b
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
