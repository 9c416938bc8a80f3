"""Reference points for the results: what a camera that sends (a) one averaged frame or (b) the whole
16-frame video allows, on the same fixed splits as the PixelRNN results.

(a) ``pixelrnn.baselines.linear_baseline``: the 16 frames averaged into one 64x64 image, logistic
    regression (L2 chosen on validation; convex, no seed).
(b) ``pixelrnn.baselines.video_baseline``: a small 3D CNN on the raw 16x64x64 clips, epoch chosen on
    validation, one test score per seed.

Cambridge is 5-fold cross-validation: each fold's test accuracy, then the mean over the folds (per
seed for the video model). Runs sequentially on ``--threads`` threads (1 by default).

    python benchmarks/reference_points.py --datasets grid,avletters_ms,cambridge --seeds 0,1,2 \\
        --json-out runs/reference_points.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name  # noqa: E402

# epochs of the video model (the best-validation epoch's weights are kept)
DEFAULT_EPOCHS = {"grid": 12, "avletters": 30, "avletters_ms": 30, "cambridge": 30}
REFERENCE_SETS = ("grid", "avletters", "avletters_ms", "cambridge")
LABELS = {
    "grid": "GRID s1 digits (10 classes, 80/10/10)",
    "avletters": "AVLetters, unseen speakers Yi + Anya (26 classes)",
    "avletters_ms": "AVLetters, multi-speaker: takes 1-2 train, take 3 test (26 classes)",
    "cambridge": "Cambridge gestures, 5-fold CV over 90 clips (9 classes)",
}
T, H, W = 16, 64, 64
BYTES = {"linear": H * W, "video": T * H * W}      # per 16-frame window, 8-bit pixels


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    p.add_argument("--datasets", default=",".join(REFERENCE_SETS),
                   help=f"comma-separated, from {', '.join(REFERENCE_SETS)}")
    p.add_argument("--seeds", default="0,1,2",
                   help="seeds of the video model, comma-separated ('' : the linear reference only)")
    p.add_argument("--epochs", default=",".join(f"{k}={v}" for k, v in DEFAULT_EPOCHS.items()),
                   help="video-model epochs: one integer for all, or name=epochs pairs")
    p.add_argument("--folds", default="0,1,2,3,4", help="cambridge folds to run (the mean is over these)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training clips (0: all; for smoke runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default="", help="the shared data folder (default: $PIXELRNN_DATA or ../shared/data)")
    p.add_argument("--json-out", type=Path, default=None, help="write every number here (atomic)")
    p.add_argument("--append", action="store_true",
                   help="keep the datasets already in --json-out (each with its own command) and add these")
    return p


def _ints(text: str, what: str, *, allow_empty: bool = False) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if allow_empty and not values:
        return values
    if not values or min(values) < 0:
        raise ValueError(f"--{what} must list integers >= 0, got {text!r}")
    return values


def parse(args: argparse.Namespace) -> tuple[list[str], list[int], dict[str, int], list[int]]:
    sets = [s.strip() for s in args.datasets.split(",") if s.strip()]
    bad = [s for s in sets if s not in REFERENCE_SETS]
    if bad or not sets:
        raise ValueError(f"--datasets must be from {', '.join(REFERENCE_SETS)}, got {args.datasets!r}")
    seeds = _ints(args.seeds, "seeds", allow_empty=True)
    folds = _ints(args.folds, "folds")
    if max(folds) > 4:
        raise ValueError(f"--folds must be in 0..4, got {args.folds!r}")
    epochs = dict(DEFAULT_EPOCHS)
    text = str(args.epochs).strip()
    if "=" not in text:
        epochs = dict.fromkeys(epochs, _ints(text, "epochs")[0])
    else:
        for pair in text.split(","):
            name, _, value = pair.partition("=")
            if name.strip() not in REFERENCE_SETS:
                raise ValueError(f"--epochs names unknown dataset {name!r}")
            epochs[name.strip()] = _ints(value, "epochs")[0]
    if min(epochs.values()) < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs!r}")
    if args.threads < 1 or args.limit < 0:
        raise ValueError("--threads must be >= 1 and --limit >= 0")
    return sets, seeds, epochs, folds


def run_dataset(name: str, *, seeds: list[int], epochs: int, folds: list[int], threads: int,
                limit: int, data_dir: str | None) -> dict:
    from pixelrnn.baselines import chance, linear_baseline, video_baseline
    from pixelrnn.data import load_dataset, split

    ds = load_dataset(name, data_dir=data_dir)
    out: dict = {"dataset": name, "label": LABELS[name], "epochs": epochs, "folds": []}
    for fold in (folds if name == "cambridge" else [0]):
        parts = split(ds, fold=fold)
        if limit:
            parts["train"] = parts["train"][:limit]

        def part(k: str, parts=parts) -> tuple[np.ndarray, np.ndarray]:
            return ds.frames[parts[k]], ds.labels[parts[k]]

        t0 = time.perf_counter()
        lin = linear_baseline(train=part("train"), val=part("val"), test=part("test"), num_classes=len(ds.classes))
        lin["seconds"] = time.perf_counter() - t0
        row = {"fold": fold, "sizes": {k: int(len(v)) for k, v in parts.items()},
               "chance": chance(ds.labels[parts["train"]], ds.labels[parts["test"]]), "linear": lin, "video": {}}
        print(f"{name} fold {fold}: linear test {lin['test_accuracy']:.3f} (l2 {lin['l2']}, "
              f"{lin['seconds']:.0f} s)", flush=True)
        for seed in seeds:
            r = video_baseline(train=part("train"), val=part("val"), test=part("test"),
                               num_classes=len(ds.classes), seed=seed, epochs=epochs, threads=threads)
            row["video"][str(seed)] = r
            print(f"{name} fold {fold} seed {seed}: video test {r['test_accuracy']:.3f} val {r['val_accuracy']:.3f} "
                  f"best epoch {r['best_epoch']}/{epochs}, {r['seconds']:.0f} s", flush=True)
        out["folds"].append(row)
    # per seed: mean over folds (one fold outside cambridge); then mean/std over seeds
    out["linear_test"] = float(np.mean([f["linear"]["test_accuracy"] for f in out["folds"]]))
    out["chance"] = float(np.mean([f["chance"] for f in out["folds"]]))
    per_seed = {s: float(np.mean([f["video"][str(s)]["test_accuracy"] for f in out["folds"]])) for s in seeds}
    out["video_test_per_seed"] = {str(s): v for s, v in per_seed.items()}
    out["video_test_mean"] = float(np.mean(list(per_seed.values()))) if per_seed else None
    out["video_test_std"] = float(np.std(list(per_seed.values()))) if per_seed else None
    secs = [f["video"][str(s)]["seconds"] for f in out["folds"] for s in seeds]
    out["video_seconds_per_run"] = float(np.mean(secs)) if secs else None
    out["train_clips"] = out["folds"][0]["sizes"]["train"]
    return out


def table(results: list[dict]) -> str:
    def unique(key: str) -> list[str]:
        return list(dict.fromkeys(str(r[key]) for r in results))

    commands = "; ".join(f"`{c}`" for c in unique("command"))
    lines = [f"Measured {', '.join(unique('date'))} on {'; '.join(unique('machine'))}, "
             f"{'/'.join(unique('threads'))} thread(s), runs one after another. Command(s): {commands}",
             "",
             "| dataset | linear, one averaged frame: test % | video 3D CNN: test %, mean ± std over seeds "
             "| chance % | bytes / 16-frame window (linear / video) | video s per run (train clips, epochs) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        seeds = r["video_test_per_seed"]
        video = (f"{100 * r['video_test_mean']:.1f} ± {100 * r['video_test_std']:.1f} (seeds {','.join(seeds)})"
                 if seeds else "-")
        secs = f"{r['video_seconds_per_run']:.0f} ({r['train_clips']}, {r['epochs']})" if seeds else "-"
        lines.append(f"| {r['label']} | {100 * r['linear_test']:.1f} | {video} | {100 * r['chance']:.1f} "
                     f"| {BYTES['linear']} / {BYTES['video']} | {secs} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import torch

    from core.atomic import write_json_atomic
    try:
        sets, seeds, epochs, folds = parse(args)
    except ValueError as exc:
        print(f"reference_points: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.json_out is not None and not args.json_out.parent.exists():
        print(f"reference_points: error: output folder does not exist: {args.json_out.parent}", file=sys.stderr)
        return 2
    argv = getattr(args, "argv", None)
    command = "python benchmarks/reference_points.py " + (shlex.join(argv) if argv is not None else "")
    machine = f"{cpu_name()} ({platform.machine()}, {platform.processor() or 'unknown processor'})"
    t0 = time.perf_counter()
    results: list[dict] = []
    commands: list[str] = []
    if args.append and args.json_out is not None and args.json_out.exists():
        old = json.loads(args.json_out.read_text(encoding="utf-8"))
        results = [r for r in old.get("results", []) if r.get("dataset") not in sets]
        for r in results:            # provenance of the kept datasets: their own run's
            for key in ("command", "date", "machine", "threads"):
                r.setdefault(key, old.get(key))
        commands = [c for c in old.get("commands", [old.get("command", "")]) if c]
    day = date.today().isoformat()
    doc = {"command": command.strip(), "commands": commands + [command.strip()], "machine": machine, "date": day,
           "threads": args.threads, "bytes_per_window": BYTES, "results": results}
    for name in sets:
        r = run_dataset(name, seeds=seeds, epochs=epochs[name], folds=folds, threads=args.threads,
                        limit=args.limit, data_dir=args.data_dir or None)
        r.update(command=command.strip(), date=day, machine=machine, threads=args.threads)
        results.append(r)
        doc["seconds"] = time.perf_counter() - t0
        if args.json_out is not None:     # after every dataset, so a long run keeps what it has
            write_json_atomic(args.json_out, doc)
    order = {n: i for i, n in enumerate(REFERENCE_SETS)}
    results.sort(key=lambda r: order.get(r["dataset"], len(order)))
    doc["table"] = table(results)
    if args.json_out is not None:
        write_json_atomic(args.json_out, doc)
    print(doc["table"])
    return 0


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    parsed.argv = sys.argv[1:]
    sys.exit(main(parsed))
