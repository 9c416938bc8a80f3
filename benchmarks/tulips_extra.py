"""Tulips1 as an extra test of GRID-trained models (issue 12's protocols): a different corpus, speakers and camera.

Each model reads the 10 Tulips1 clips (and GRID's 100 test clips, for comparison) through firmware_sim (its own
readout layout; noise off, and with the authors' noise: 5 draws) and answers with the largest of its outputs
one..four. A configuration folder (``seed<k>/model.pt``, as a sweep writes) gives mean ± std over its seeds; a
single ``.pt`` one figure. The GRID linear model on the averaged raw frame (trained on GRID's one..four clips)
and chance (25%) are the references.

    python benchmarks/tulips_extra.py --model f4-2bit=runs/sweep/grid-frontier-8/f4-2bit-e300full \\
        --model lips=pixelrnn/models/lips.pt --section tulips-extra --write docs/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, update_section  # noqa: E402
from benchmarks.results import sim_accuracy, tulips_eval, tulips_eval_noisy, tulips_linear  # noqa: E402
from core.errors import InputError  # noqa: E402

NOISE_DRAWS = 5


def checkpoints(path: Path) -> list[Path]:
    """``path`` itself (a ``.pt`` file) or every ``seed<k>/model.pt`` under a configuration folder, by seed."""
    if path.is_file():
        return [path]
    found = sorted((p for p in path.glob("seed*/model.pt") if p.parent.name[4:].isdigit()),
                   key=lambda p: int(p.parent.name[4:]))
    if not found:
        raise InputError(f"--model: {path} is neither a checkpoint nor a folder of seed<k>/model.pt; "
                         "give a model.pt or a sweep configuration folder")
    return found


def parse_model(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise InputError(f"--model {spec!r}: expected LABEL=PATH (a model.pt or a folder of seed<k>/model.pt)")
    return label, Path(path)


def evaluate(*, label: str, path: Path, tulips, grid_test) -> dict:
    """Tulips1 accuracy of every checkpoint under ``path`` (noise off; authors' noise, mean of 5 draws), and
    its GRID test accuracy (``grid_test``: the fixed split's test clips), both through firmware_sim."""
    from pixelrnn.checkpoint import load_model

    clean, noisy, grid, layout = [], [], [], None
    for ckpt in checkpoints(path):
        model = load_model(ckpt)
        if model.config.task != "lips" or model.config.classes[1:5] != ["one", "two", "three", "four"]:
            raise InputError(f"--model {ckpt}: not a GRID digits model (classes {model.config.classes}); "
                             "Tulips1 is scored with a GRID model's outputs one..four")
        layout = model.config.layout
        clean.append(tulips_eval(model, tulips))
        noisy.append(tulips_eval_noisy(model, tulips, draws=NOISE_DRAWS))
        grid.append(sim_accuracy(model, *grid_test))
    return {"label": label, "path": str(path), "seeds": len(clean), "bytes": layout.payload_bytes,
            "clean": clean, "noisy": noisy, "grid_test": grid}


def fmt(values: list[float]) -> str:
    """Mean ± sample std over seeds in % (pixelrnn.sweep.mean_std, as the frontier tables), or the one value."""
    from pixelrnn.sweep import mean_std

    m, sd = mean_std([100 * v for v in values])
    return f"{m:.1f} ± {sd:.1f}" if len(values) > 1 else f"{m:.1f}"


def render(rows: list[dict], linear: float, *, command: str) -> str:
    lines = [f"Measured {date.today().isoformat()} on {cpu_name()}.", "", f"Command: `{command}`", "",
             "| model | readout bytes / window | seeds | GRID test % | Tulips1 % (noise off) | "
             f"Tulips1 % (authors' noise, {NOISE_DRAWS} draws) | per seed (noise off) |",
             "| --- | ---: | ---: | --- | --- | --- | --- |"]
    for r in rows:
        per_seed = ", ".join(f"{100 * a:.0f}" for a in r["clean"])
        lines.append(f"| {r['label']} | {r['bytes']:,} | {r['seeds']} | {fmt(r['grid_test'])} | {fmt(r['clean'])} | "
                     f"{fmt(r['noisy'])} | {per_seed} |")
    lines += [f"| reference: linear on the averaged raw frame (GRID one..four) | 4,096 | - | - | {100 * linear:.1f} "
              "| - | - |",
              "| chance (4 classes) | - | - | - | 25.0 | - | - |", "",
              "Mean ± std over seeds (sample std). 10 clips: one clip is 10 points, so these figures separate "
              "models only by wide margins."]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                    help="a GRID model.pt, or a sweep configuration folder of seed<k>/model.pt (repeatable)")
    ap.add_argument("--data-dir", default="", help="default: $PIXELRNN_DATA or ../shared/data")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the linear model's LBFGS depends on it)")
    ap.add_argument("--section", default="tulips-extra", help="the marked section of --write to replace")
    ap.add_argument("--write", type=Path, default=None, help="update this markdown file's section")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--command", default="", help="the command line to print in the section (default: this one)")
    return ap


def reproduce_argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this run's section: the models, the threads (the linear model's
    LBFGS depends on them) and, when given, the data directory and the section written."""
    argv = ["python", "benchmarks/tulips_extra.py", *(a for m in args.model for a in ("--model", m)),
            "--threads", str(args.threads)]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.write:
        argv += ["--section", args.section, "--write", str(args.write)]
    return argv


def main(args: argparse.Namespace) -> int:
    import torch

    from core.atomic import atomic_open
    from pixelrnn.data import load_dataset, split

    try:
        specs = [parse_model(s) for s in args.model]
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        data_dir = args.data_dir or None
        tulips, grid = load_dataset("tulips", data_dir=data_dir), load_dataset("grid", data_dir=data_dir)
        test = split(grid, fold=0)["test"]
        rows = [evaluate(label=label, path=path, tulips=tulips, grid_test=(grid.frames[test], grid.labels[test]))
                for label, path in specs]
    except (InputError, FileNotFoundError) as exc:
        print(f"tulips_extra: {exc}", file=sys.stderr)
        return 2
    linear = tulips_linear(grid, tulips)
    command = args.command or shlex.join(reproduce_argv(args))
    text = render(rows, linear, command=command)
    print(text)
    if args.json_out:
        with atomic_open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump({"rows": rows, "linear": linear}, fh, indent=1)
    if args.write:
        update_section(args.write, args.section, text, heading="Tulips1, an extra test of the GRID models (issue 12)")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
