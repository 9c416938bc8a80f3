"""benchmarks/train_speed.py: the --device option (the GPU figures in docs/BENCHMARKS.md come from it)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda would run")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2():
    r = subprocess.run([sys.executable, "benchmarks/train_speed.py", "--device", "cuda"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "no CUDA GPU is visible (use --device cpu)" in r.stderr.strip().splitlines()[-1]


def test_eager_loop_runs_on_the_named_device():
    from benchmarks.train_speed import BATCH, eager_epochs
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (BATCH, 16, 64, 64), dtype=np.uint8)
    labels = rng.integers(0, 10, BATCH).astype(np.int64)
    rate = eager_epochs(frames, labels, 10, 2, device="cpu")
    assert np.isfinite(rate) and rate > 0
    if not torch.cuda.is_available():      # no GPU here: the loop must fail, not fall back to the CPU
        with pytest.raises((RuntimeError, AssertionError)):
            eager_epochs(frames, labels, 10, 2, device="cuda")
