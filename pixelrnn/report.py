"""The end-of-training report: test accuracy in PyTorch and through firmware_sim, noise robustness,
per-class accuracy and a confusion-matrix PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_open, write_json_atomic
from firmware_sim.noise import NoiseModel
from firmware_sim.simulate import simulate
from pixelrnn.checkpoint import load_model
from pixelrnn.data import Dataset
from pixelrnn.metrics import metrics

NOISE_SEEDS = (0, 1, 2, 3, 4)


def simulator_readout(model, frames: np.ndarray, *, noise: NoiseModel | None = None, seed: int = 0) -> np.ndarray:
    """The 8-bit readouts firmware_sim produces for ``model``'s sensor program on ``frames``."""
    return simulate(weights=model.sensor_weights(), frames=frames, noise=noise or NoiseModel.off(),
                    seed=seed, stages=()).readout


@torch.no_grad()
def torch_readout(model, frames: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """The same readouts computed by the PyTorch model (eval mode, noise off)."""
    model.eval()
    outs = []
    for s in range(0, len(frames), batch):
        binary = model.binarize_input(torch.from_numpy(frames[s:s + batch]))
        o, _ = model.sensor(binary, noise=NoiseModel.off())
        outs.append(model.readout_levels(o))
    return np.concatenate(outs)


@torch.no_grad()
def decode_preds(model, readout: np.ndarray) -> np.ndarray:
    model.eval()
    return model.decode(torch.from_numpy(readout)).argmax(1).numpy()


def noise_robustness(model, frames: np.ndarray, labels: np.ndarray, *, noise: NoiseModel,
                     seeds=NOISE_SEEDS) -> dict:
    """Accuracy through the simulator with ``noise`` on at test time: mean and std over seeds."""
    accs = [float((decode_preds(model, simulator_readout(model, frames, noise=noise, seed=s)) == labels).mean())
            for s in seeds]
    return {"noise": noise.to_dict(), "seeds": list(seeds), "accuracies": accs,
            "mean": float(np.mean(accs)), "std": float(np.std(accs))}


def plot_confusion(confusion, classes: list[str], path: Path, *, title: str) -> Path:
    """Write a confusion-matrix PNG atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def final_report(*, best_path: Path, ds: Dataset, test_idx: np.ndarray, out: Path, history: list[dict],
                 best_epoch: int, config: dict, train_idx: np.ndarray | None = None) -> dict:
    """Evaluate the best checkpoint on the test split; write report.json and confusion.png.

    A run without test clips (``fold -1``: every clip trained) reports its fit on ``train_idx``
    instead, under ``train_fit`` (``test`` is None): the simulator parity checks still run on it."""
    model = load_model(best_path)
    held_out = len(test_idx) > 0
    if not held_out and (train_idx is None or not len(train_idx)):
        raise ValueError("final_report needs test clips or, without them, train_idx")
    split_name = "test" if held_out else "train_fit"
    test = ds.subset(test_idx if held_out else train_idx)
    sim_readout = simulator_readout(model, test.frames)
    sim_preds = decode_preds(model, sim_readout)
    with torch.no_grad():
        torch_preds = model(torch.from_numpy(test.frames)).argmax(1).numpy()
    readout_equal = bool(np.array_equal(sim_readout, torch_readout(model, test.frames)))
    test_metrics = metrics(labels=test.labels, preds=sim_preds, class_names=model.config.class_names)
    report = {
        "dataset": ds.name, "config": config, "best_epoch": best_epoch,
        "val_accuracy": next((r["val_acc"] for r in history if r.get("epoch") == best_epoch), None),
        "readout_layout": model.config.layout.to_dict(),
        "readout_bytes": model.config.layout.payload_bytes,
        "test": test_metrics if held_out else None,
        **({} if held_out else {"train_fit": test_metrics}),
        "test_accuracy_pytorch": float((torch_preds == test.labels).mean()),
        "simulator_agrees": bool(readout_equal and np.array_equal(sim_preds, torch_preds)),
        "readout_bytes_equal": readout_equal,
        "test_noise_authors": noise_robustness(model, test.frames, test.labels, noise=NoiseModel.authors()),
        "train_clips_per_s": float(np.median([r["clips_per_s"] for r in history])) if history else None,
        "epoch_seconds": float(np.median([r["seconds"] for r in history])) if history else None,
        "sign_agreement_with_init": history[-1]["sign_agreement_with_init"] if history else None,
        "test_names": [str(n) for n in test.names],
    }
    write_json_atomic(out / "report.json", report)
    title = (f"{ds.name} {split_name.replace('_', ' ')}: {test_metrics['accuracy']:.1%} "
             f"({test_metrics['correct']}/{test_metrics['n']})")
    plot_confusion(test_metrics["confusion"], model.config.class_names, out / "confusion.png", title=title)
    return report
