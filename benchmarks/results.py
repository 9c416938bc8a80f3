"""Make the results table of docs/RESULTS.md: trained vs frozen-random-sign PixelRNN vs a raw-pixel
linear baseline vs chance, on GRID digits, AVLetters (unseen speakers), Cambridge (5-fold CV) and
Tulips1 (a GRID model tested on a different corpus), over several seeds; plus noise robustness.

Resumable: every training run lives in ``--runs DIR/<dataset>/<variant>/seed<k>[/fold<f>]`` and is
skipped when its report.json exists (a killed run continues from its last epoch).

    python benchmarks/results.py --runs runs/results --seeds 0,1,2 --write docs/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, update_section  # noqa: E402
from firmware_sim.noise import NoiseModel  # noqa: E402
from pixelrnn.baselines import chance, linear_baseline  # noqa: E402
from pixelrnn.checkpoint import load_model  # noqa: E402
from pixelrnn.data import FOLDS, load_dataset, split  # noqa: E402
from pixelrnn.report import simulator_readout  # noqa: E402
from pixelrnn.train import TrainConfig, train  # noqa: E402

VARIANTS = {"trained": {}, "frozen": {"freeze_binary": True}, "trained_nonoise": {
    "noise_conv": 0.0, "noise_gate": 0.0, "noise_out": 0.0}}
TULIPS_IN_GRID = [1, 2, 3, 4]      # Tulips1 says one..four: GRID classes 1..4


def run(cfg: TrainConfig) -> dict:
    out = Path(cfg.out_dir)
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    t0 = time.perf_counter()
    report = train(config=cfg, resume=(out / "last.pt").exists(), progress=False)
    print(f"  {out}: test {report['test']['accuracy']:.3f} in {time.perf_counter() - t0:.0f} s", flush=True)
    return report


def sim_accuracy(model, frames: np.ndarray, labels: np.ndarray, *, outputs: list[int] | None = None,
                 noise: NoiseModel | None = None, seed: int = 0) -> float:
    """``model``'s accuracy on ``frames`` through firmware_sim and its decoder (``outputs``: choose among
    these logits only)."""
    readout = simulator_readout(model, frames, noise=noise, seed=seed)
    with torch.no_grad():
        logits = model.decode(torch.from_numpy(readout))
    if outputs is not None:
        logits = logits[:, outputs]
    return float((logits.argmax(1).numpy() == labels).mean())


def tulips_eval(model, tulips, noise: NoiseModel | None = None, seed: int = 0) -> float:
    """Accuracy of a (loaded) GRID model on Tulips1, choosing among its one..four outputs."""
    return sim_accuracy(model, tulips.frames, tulips.labels, outputs=TULIPS_IN_GRID, noise=noise, seed=seed)


def tulips_eval_noisy(model, tulips, *, draws: int = 5) -> float:
    """:func:`tulips_eval` with the authors' analog noise, the mean over ``draws`` draws (seeds 0..draws-1)."""
    return float(np.mean([tulips_eval(model, tulips, NoiseModel.authors(), s) for s in range(draws)]))


def tulips_linear(grid, tulips) -> float:
    """Tulips1 accuracy of the linear model on the averaged raw frame, trained on GRID's one..four clips
    (GRID's fixed split; L2 chosen on its validation clips)."""
    p = split(grid, fold=0)
    keep = lambda i: i[np.isin(grid.labels[i], TULIPS_IN_GRID)]  # noqa: E731
    sub = lambda i: (grid.frames[i], grid.labels[i] - 1)  # noqa: E731
    return linear_baseline(train=sub(keep(p["train"])), val=sub(keep(p["val"])), test=(tulips.frames, tulips.labels),
                           num_classes=4)["test_accuracy"]


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    a = 100 * np.asarray(values)
    return f"{a.mean():.1f} ± {a.std():.1f}" if len(a) > 1 else f"{a[0]:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/results"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sets", default="grid,avletters,cambridge")
    ap.add_argument("--epochs", default="grid=8,avletters=8,cambridge=20")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="trained,frozen")
    ap.add_argument("--write", type=Path, default=None, help="update the table in this markdown file")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = args.sets.split(",")
    epochs = dict(kv.split("=") for kv in args.epochs.split(","))
    variants = args.variants.split(",")
    torch.set_num_threads(args.threads)
    results: dict = {}
    for name in sets:
        ds = load_dataset(name, data_dir=args.data_dir or None)
        folds = range(FOLDS) if name == "cambridge" else [0]
        for variant in variants:
            if variant == "trained_nonoise" and name != "grid":
                continue
            for seed in seeds:
                for fold in folds:
                    out = args.runs / name / variant / f"seed{seed}" / (f"fold{fold}" if name == "cambridge" else "")
                    cfg = TrainConfig(dataset=name, data_dir=args.data_dir, fold=fold, seed=seed,
                                      epochs=int(epochs[name]), threads=args.threads, out_dir=str(out),
                                      **VARIANTS[variant])
                    rep = run(cfg)
                    key = (name, variant, seed)
                    r = results.setdefault(key, {"clean": [], "noisy": [], "pytorch": [], "agree": [],
                                                 "n": 0, "correct": 0, "cps": [], "epoch_s": [], "signs": []})
                    r["correct"] += rep["test"]["correct"]
                    r["n"] += rep["test"]["n"]
                    r["noisy"].append(rep["test_noise_authors"]["mean"] * rep["test"]["n"])
                    r["pytorch"].append(rep["test_accuracy_pytorch"] * rep["test"]["n"])
                    r["agree"].append(rep["simulator_agrees"])
                    r["cps"].append(rep["train_clips_per_s"])
                    r["epoch_s"].append(rep["epoch_seconds"])
                    r["signs"].append(rep["sign_agreement_with_init"])
        # linear baseline (deterministic) and chance
        lin, ch = [], []
        for fold in folds:
            p = split(ds, fold=fold)
            sub = lambda i, ds=ds: (ds.frames[i], ds.labels[i])  # noqa: E731
            lin.append(linear_baseline(train=sub(p["train"]), val=sub(p["val"]), test=sub(p["test"]),
                                       num_classes=len(ds.classes))["test_accuracy"] * len(p["test"]))
            ch.append(chance(ds.labels[p["train"]], ds.labels[p["test"]]) * len(p["test"]))
        n_test = sum(len(split(ds, fold=f)["test"]) for f in folds)
        results[(name, "linear")] = sum(lin) / n_test
        results[(name, "chance")] = sum(ch) / n_test
        if name == "grid":
            grid_ds = ds
    # Tulips1: the GRID models and the GRID linear baseline, choosing among one..four
    if "grid" in sets:
        tulips = load_dataset("tulips", data_dir=args.data_dir or None)
        for variant in variants:
            clean, noisy = [], []
            for seed in seeds:
                model = load_model(args.runs / "grid" / variant / f"seed{seed}" / "model.pt")
                clean.append(tulips_eval(model, tulips))
                noisy.append(tulips_eval_noisy(model, tulips))
            results[("tulips", variant)] = (clean, noisy)
        results[("tulips", "linear")] = tulips_linear(grid_ds, tulips)
        results[("tulips", "chance")] = 0.25
    text = render(results, sets, seeds, variants, args)
    print(text)
    if args.write:
        update_section(args.write, "results", text, heading="Training results (issue 3)")
        print(f"wrote {args.write}")
    return 0


def render(results: dict, sets: list[str], seeds: list[int], variants: list[str], args) -> str:
    label = {"grid": "GRID s1 digits (10 classes, 100 test clips)",
             "avletters": "AVLetters, unseen speakers Yi + Anya (26 classes, 156 test clips)",
             "cambridge": "Cambridge gestures, 5-fold CV over the 90 clips (9 classes)",
             "tulips": "Tulips1 (4 classes, 10 clips; GRID-trained model, outputs one..four)"}
    rows = ["| dataset | (a) trained PixelRNN | (b) frozen random signs | (c) linear, raw pixels | (d) chance |",
            "| --- | --- | --- | --- | --- |"]
    noise_rows = ["| dataset | model | test noise off | authors' noise at test (5 draws) |",
                  "| --- | --- | --- | --- |"]
    per = lambda name, v: [results[(name, v, s)] for s in seeds if (name, v, s) in results]  # noqa: E731
    for name in sets + (["tulips"] if "grid" in sets else []):
        if name == "tulips":
            acc = {v: results[("tulips", v)][0] for v in variants if ("tulips", v) in results}
            noisy = {v: results[("tulips", v)][1] for v in variants if ("tulips", v) in results}
        else:
            acc = {v: [r["correct"] / r["n"] for r in per(name, v)] for v in variants}
            noisy = {v: [sum(r["noisy"]) / r["n"] for r in per(name, v)] for v in variants}
        rows.append(f"| {label[name]} | {fmt(acc.get('trained', []))} | {fmt(acc.get('frozen', []))} | "
                    f"{100 * results[(name, 'linear')]:.1f} | {100 * results[(name, 'chance')]:.1f} |")
        for v in variants:
            if acc.get(v):
                noise_rows.append(f"| {name} | {v.replace('_', ' ')} | {fmt(acc[v])} | {fmt(noisy[v])} |")
    agree = all(all(r["agree"]) for k, r in results.items() if isinstance(r, dict))
    speed = [c for k, r in results.items() if isinstance(r, dict) and k[0] == "grid" for c in r["cps"]]
    epoch_s = [c for k, r in results.items() if isinstance(r, dict) and k[0] == "grid" for c in r["epoch_s"]]
    signs = {v: [s for k, r in results.items() if isinstance(r, dict) and k[1] == v for s in r["signs"]]
             for v in variants}
    lines = [
        f"Measured {date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} cores); "
        f"seeds {','.join(map(str, seeds))}; "
        f"epochs {args.epochs}. Accuracy in %, mean ± std over seeds, on the test split, through "
        f"firmware_sim (8-bit readout), noise off unless stated.", "",
        "Command: `python benchmarks/results.py --runs runs/results --seeds "
        f"{','.join(map(str, seeds))} --epochs {args.epochs} --write docs/RESULTS.md`", "",
        *rows, "", "Noise robustness (trained with the authors' noise model unless 'nonoise'):", "", *noise_rows, "",
        f"- PyTorch evaluation and firmware_sim agree on every test clip of every run (readout bytes and "
        f"predictions): {agree}.",
        f"- Training speed during these runs (1 thread per run, two runs sharing the 2 cores, so "
        f"about a quarter of a quiet machine's speed): median {np.median(speed):.1f} clips/s; one GRID "
        f"epoch {np.median(epoch_s):.1f} s. Quiet-machine figures: see 'Training speed' below." if speed else "",
        "- Binary weights still at their initial sign after training: " + ", ".join(
            f"{v} {100 * np.mean(s):.1f}%" for v, s in signs.items() if s) + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
