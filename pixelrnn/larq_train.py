"""Training with the Larq backend: the Keras twin (latent weights in QuantConv2D, clipped to [-1, 1]).

Same data, split, front end, initial weights and selection rule as ``pixelrnn.train_loop`` (the
PyTorch backend); the result is converted back with :func:`pixelrnn.larq_twin.torch_from_twin` and
saved as an ordinary PyTorch checkpoint (``out_dir/model.pt``), so evaluation and export do not
depend on the backend. Differences from the PyTorch backend, on purpose kept small:

- the training noise (``noise_conv``, ``noise_gate``, ``noise_out``) is included, drawn by Keras'
  GaussianNoise layers from TensorFlow's generator: statistically the same, not the same draws;
- ``weight_decay`` is Keras Adam's decoupled decay (PyTorch's Adam adds it to the gradient);
- no resume and no data parallelism.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.errors import InputError
from pixelrnn.train_config import TrainConfig, code_version


def _epoch_data(ds, idx: np.ndarray, *, epoch: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The training clips of one epoch in the PyTorch backend's order and augmentation."""
    order = idx[np.random.default_rng([cfg.seed, epoch]).permutation(len(idx))]
    if cfg.augment:
        aug = cfg.augmentation()
        frames = np.stack([aug(ds.frames[i], np.random.default_rng([cfg.seed, epoch, int(i), 1])) for i in order])
    else:
        frames = ds.frames[order]
    return frames, ds.labels[order]


def _lr_for(cfg, epoch: int, current: float) -> float:
    if cfg.schedule == "cosine":          # PyTorch's CosineAnnealingLR, stepped once per epoch
        return cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2
    return current


def train_larq(*, config: TrainConfig, progress: bool = True) -> dict:
    """Train the Keras/Larq twin; keep the best epoch on validation; write ``out_dir/model.pt``.

    Returns ``{"history": [train_loss per epoch], "epochs": [row per epoch], "test_accuracy": float,
    "best_epoch": int, "checkpoint": path}``; test accuracy is that of the saved PyTorch model (noise off).
    """
    if not isinstance(config, TrainConfig):
        raise InputError(f"config must be a pixelrnn.train_config.TrainConfig, got {type(config).__name__}")
    if not isinstance(progress, bool):
        raise InputError(f"progress must be True or False, got {progress!r}")
    cfg = config
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out, delete=True).close()
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out} ({exc.strerror or exc})") from None
    if (out / "model.pt").exists():
        raise InputError(f"{out} already holds a model.pt: choose another out_dir")

    import tensorflow as tf  # after larq_twin, which sets TF_USE_LEGACY_KERAS

    from core.atomic import write_json_atomic
    from pixelrnn.checkpoint import save_checkpoint
    from pixelrnn.data import load_dataset
    from pixelrnn.larq_twin import keras, load_state_dict_into_twin, make_keras_model, torch_from_twin
    from pixelrnn.train_loop import build_model, predict

    if cfg.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            print(f"note: TensorFlow already started; threads={cfg.threads} not applied", file=sys.stderr)
    keras.utils.set_random_seed(cfg.seed)

    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir or None)
    parts = cfg.split(ds)
    train_idx = parts["train"][:cfg.limit] if cfg.limit else parts["train"]
    init = build_model(cfg, ds.subset(train_idx))           # same config and initial weights as PyTorch
    mc = init.config
    twin = make_keras_model(mc, quantizer=cfg.quantizer)
    load_state_dict_into_twin(twin, {k: v.detach() for k, v in init.state_dict().items()})
    if cfg.freeze_binary:
        for name in ("conv1", "w_fi", "w_fh", "w_oi", "w_oh", "fin_conv"):
            twin.get_layer(name).trainable = False
    opt = keras.optimizers.Adam(learning_rate=cfg.lr, weight_decay=cfg.weight_decay or None)
    twin.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])

    val_x, val_y = ds.frames[parts["val"]], ds.labels[parts["val"]]
    rows: list[dict] = []
    best = {"val_acc": -1.0, "val_loss": math.inf, "epoch": -1}
    best_weights = None
    plateau = {"best": -1.0, "wait": 0}
    for epoch in range(cfg.epochs):
        lr = _lr_for(cfg, epoch, float(keras.backend.get_value(opt.learning_rate)))
        keras.backend.set_value(opt.learning_rate, lr)
        x, y = _epoch_data(ds, train_idx, epoch=epoch, cfg=cfg)
        t0 = time.perf_counter()
        fit = twin.fit(x, y, batch_size=cfg.batch_size, epochs=1, shuffle=False, verbose=0)
        seconds = time.perf_counter() - t0
        val_loss, val_acc = twin.evaluate(val_x, val_y, batch_size=64, verbose=0)
        row = {"epoch": epoch + 1, "train_loss": float(fit.history["loss"][0]),
               "train_acc": float(fit.history["accuracy"][0]), "val_loss": float(val_loss),
               "val_acc": float(val_acc), "lr": lr, "seconds": round(seconds, 3),
               "clips_per_s": round(len(x) / seconds, 2)}
        rows.append(row)
        if (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
            best = {"val_acc": float(val_acc), "val_loss": float(val_loss), "epoch": epoch + 1}
            best_weights = twin.get_weights()
        if cfg.schedule == "plateau":       # PyTorch's ReduceLROnPlateau(mode="max", factor=0.5, patience=3)
            if val_acc > plateau["best"]:
                plateau = {"best": val_acc, "wait": 0}
            else:
                plateau["wait"] += 1
                if plateau["wait"] > 3:
                    keras.backend.set_value(opt.learning_rate, lr * 0.5)
                    plateau["wait"] = 0
        if progress:
            print(f"[larq] epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.3f}  "
                  f"val_loss {val_loss:.4f}  val_acc {val_acc:.3f}  {row['clips_per_s']:.1f} clips/s",
                  file=sys.stderr, flush=True)

    twin.set_weights(best_weights)
    model = torch_from_twin(twin, config=mc)
    test_x, test_y = ds.frames[parts["test"]], ds.labels[parts["test"]]
    _, preds = predict(model, test_x)
    test_acc = float((preds == test_y).mean())
    path = save_checkpoint(model, out / "model.pt", extra={
        "train_config": cfg.to_dict(), "backend": "larq", "epoch": best["epoch"], "val_acc": best["val_acc"],
        "code_version": code_version()})
    write_json_atomic(out / "metrics.json", {"backend": "larq", "config": cfg.to_dict(), "epochs": rows,
                                             "best": best, "test_accuracy": test_acc})
    return {"history": [r["train_loss"] for r in rows], "epochs": rows, "test_accuracy": test_acc,
            "best_epoch": best["epoch"], "checkpoint": str(path)}
