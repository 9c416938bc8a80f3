"""``pixelrnn generate train|nll|sample|baselines|code``: the generative family from the command line.

    pixelrnn generate train --model gated --data digits --epochs 30
    pixelrnn generate nll --checkpoint runs/generate/gated-digits/best.pt
    pixelrnn generate sample --checkpoint runs/generate/gated-digits/best.pt --out samples.png
    pixelrnn generate baselines --data digits
    pixelrnn generate code --checkpoint runs/generate/gated-readouts/best.pt --readouts F.npz
    pixelrnn generate export-prior --checkpoint runs/generate/gated-readouts/best.pt --out prior.npz
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from core.argtypes import bool_arg as _bool
from core.argtypes import positive_int as _positive_int
from core.atomic import atomic_open


def add_generate_parser(subparsers) -> None:
    from .train import MODELS, GenerateConfig

    p = subparsers.add_parser("generate", help="generative PixelRNN family: train, nll, sample, baselines, code",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="train one model (progress bar, best/last checkpoints, report.json, samples.png)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out-dir from last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--samples", type=int, default=64, metavar="N",
                   help="images in the sample grid written at the end (0: none; default 64)")
    types = {int: int, float: float, str: str, bool: _bool}
    for f in fields(GenerateConfig):
        kind = type(f.default)
        extra = {"choices": MODELS} if f.name == "model" else {}
        t.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=types[kind], default=None,
                       metavar=None if extra else ("BOOL" if kind is bool else kind.__name__.upper()),
                       help=f"(default {f.default!r})", **extra)
    t.set_defaults(func=run_train)

    n = sub.add_parser("nll", help="NLL of a checkpoint on a split, in nats/image and bits/dim")
    n.add_argument("--checkpoint", required=True, help="best.pt or last.pt of 'generate train'")
    n.add_argument("--split", choices=("train", "val", "test"), default="test")
    n.add_argument("--iw-samples", type=_positive_int, default=100, help="VLAE: importance samples (default 100)")
    n.add_argument("--json", action="store_true", help="print JSON instead of a sentence")
    n.set_defaults(func=run_nll)

    s = sub.add_parser("sample", help="draw images and write a PNG grid (+ .npz)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True, help="output .png (an .npz of the images is written beside it)")
    s.add_argument("--n", type=_positive_int, default=64, help="number of images (default 64)")
    s.add_argument("--label", type=int, default=None,
                   help="conditional gated model: class label for every image (default: rows cycle 0..9)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--naive", action="store_true", help="re-run the full network per pixel (reference; slow)")
    s.set_defaults(func=run_sample)

    b = sub.add_parser("baselines", help="uniform, per-pixel categorical and linear AR NLL on a data set's test split")
    b.add_argument("--data", default="digits", help="digits, mnist5k or a readouts .npz (default digits)")
    b.add_argument("--no-linear", action="store_true", help="skip the (slow on 28x28) linear AR baseline")
    b.add_argument("--json", default=None, help="also write the results to this JSON file")
    b.set_defaults(func=run_baselines)

    c = sub.add_parser("code", help="lossless readout coding with a learned prior: bits/window, round trip, time")
    c.add_argument("--checkpoint", required=True,
                   help="a gated model trained on readouts (generate train --data F.npz)")
    c.add_argument("--readouts", required=True, help="readouts .npz (simulate output or real sensor file)")
    c.add_argument("--split", choices=("train", "val", "test", "all"), default="test")
    c.add_argument("--limit", type=int, default=0, help="> 0: code only the first N windows")
    c.add_argument("--json", default=None, help="also write the results to this JSON file")
    c.set_defaults(func=run_code)

    e = sub.add_parser("export-prior", help="write a readout prior as a torch-free .npz for --payload prior")
    e.add_argument("--checkpoint", required=True, help="a gated model trained on 1-bit readouts")
    e.add_argument("--out", required=True, help="output .npz (for edge/run_camera.py --payload prior --prior FILE)")
    e.set_defaults(func=run_export_prior)


def run_train(args: argparse.Namespace) -> int:
    from .train import GenerateConfig, load_checkpoint, train_generative

    values = {f.name: getattr(args, f.name) for f in fields(GenerateConfig) if getattr(args, f.name) is not None}
    cfg = GenerateConfig.from_dict(values)
    if args.samples < 0:
        raise ValueError(f"--samples must be >= 0, got {args.samples}")
    report = train_generative(config=cfg, resume=args.resume, progress=not args.no_progress)
    line = (f"{cfg.model} on {report['data']}: test {report['nats']:.2f} nats/image, "
            f"{report['bits_per_dim']:.4f} bits/dim (best epoch {report['best_epoch']}/{cfg.epochs})")
    if cfg.model == "vlae":
        line += f"; KL {report['kl_nats']:.2f} nats, IW({report['iw_samples']}) {report['iw_nats']:.2f} nats"
    if cfg.conditional:
        line += f"; given the label. Marginal -log p(x) = {report['marginal_nats']:.2f} nats/image"
    print(line)
    if args.samples:
        model, _, meta = load_checkpoint(Path(cfg.out_dir) / "best.pt")
        path = Path(cfg.out_dir) / "samples.png"
        _write_samples(model, meta, n=args.samples, label=None, seed=0, path=path, cached=True)
        print(f"wrote {cfg.out_dir}/best.pt, last.pt, metrics.json, report.json, samples.png")
    return 0


def run_nll(args: argparse.Namespace) -> int:
    from .train import evaluate_report, load_checkpoint, load_data

    model, cfg, _ = load_checkpoint(args.checkpoint)
    report = evaluate_report(model, cfg=cfg, data=load_data(cfg.data), split=args.split, iw_samples=args.iw_samples)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        line = (f"{cfg.model} on {report['data']} {args.split} (n={report['n']}): {report['nats']:.2f} nats/image, "
                f"{report['bits_per_dim']:.4f} bits/dim")
        if cfg.conditional:
            line += f" given the label; marginal over labels {report['marginal_nats']:.2f} nats/image"
        if cfg.model == "vlae":
            line += (f" (negative ELBO); KL {report['kl_nats']:.2f} nats; importance-weighted "
                     f"({report['iw_samples']} samples) {report['iw_nats']:.2f} nats")
        print(line)
    return 0


def sample_grid_png(images: np.ndarray, *, num_classes: int, cols: int, scale: int) -> bytes:
    """(N, H, W) levels -> PNG bytes of a grid (white gaps, level K-1 = white)."""
    import cv2
    n, h, w = images.shape
    rows = math.ceil(n / cols)
    gap = max(1, scale // 2)
    canvas = np.full((rows * (h * scale + gap) + gap, cols * (w * scale + gap) + gap), 128, np.uint8)
    gray = (images.astype(np.float64) * (255.0 / (num_classes - 1))).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = np.kron(gray[i], np.ones((scale, scale), np.uint8))
        y, x = gap + r * (h * scale + gap), gap + c * (w * scale + gap)
        canvas[y:y + h * scale, x:x + w * scale] = tile
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise OSError("OpenCV could not encode the sample grid as PNG")
    return buf.tobytes()


def _write_samples(model, meta, *, n: int, label, seed: int, path: Path, cached: bool) -> float:
    import torch

    cond = None
    num_labels = getattr(model, "num_labels", None)
    if num_labels:
        if label is not None and not 0 <= label < num_labels:
            raise ValueError(f"--label must lie in 0..{num_labels - 1}, got {label}")
        cond = (torch.full((n,), label, dtype=torch.long) if label is not None
                else torch.arange(n) // max(1, n // num_labels) % num_labels)
    elif label is not None:
        raise ValueError("--label needs a class-conditional model (generate train --model gated --conditional true)")
    t0 = time.perf_counter()
    images, logp = model.sample(n, generator=torch.Generator().manual_seed(seed), cond=cond, cached=cached)
    seconds = time.perf_counter() - t0
    images = images.numpy().astype(np.uint8)
    h = images.shape[1]
    cols = max(1, n // num_labels) if num_labels and label is None else int(math.ceil(math.sqrt(n)))
    png = sample_grid_png(images, num_classes=meta["num_classes"], cols=cols, scale=max(2, 64 // h))
    with atomic_open(path, "wb") as fh:
        fh.write(png)
    arrays = {"images": images, "log_prob": logp.numpy()}
    if cond is not None:
        arrays["labels"] = cond.numpy()
    with atomic_open(path.with_suffix(".npz"), "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return seconds


def run_sample(args: argparse.Namespace) -> int:
    from .train import load_checkpoint

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png, got {out}")
    if not out.parent.exists():
        raise ValueError(f"folder {out.parent} does not exist")
    model, _, meta = load_checkpoint(args.checkpoint)
    seconds = _write_samples(model, meta, n=args.n, label=args.label, seed=args.seed, path=out, cached=not args.naive)
    print(f"sampled {args.n} images in {seconds:.2f} s ({'naive' if args.naive else 'cached'}); "
          f"wrote {out} and {out.with_suffix('.npz')}")
    return 0


def run_baselines(args: argparse.Namespace) -> int:
    from .baselines import CS, all_baselines
    from .train import load_data

    data = load_data(args.data)
    tr, va, te = (data.split(s)[0] for s in ("train", "val", "test"))
    bar = None
    if not args.no_linear:
        from tqdm import tqdm
        bar = tqdm(total=len(CS) * tr.shape[1] * tr.shape[2], desc="linear AR fits", unit="pixel", leave=False)
    results = all_baselines(train=tr, val=va, test=te, num_classes=data.num_classes,
                            linear=not args.no_linear, progress=None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    print(f"{data.description}; test n={len(te)}")
    for r in results:
        print(f"  {r.name}: {r.nats:.2f} nats/image, {r.bits_per_dim:.4f} bits/dim ({r.chosen})")
    if args.json:
        with atomic_open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"data": data.name, "description": data.description, "n": int(len(te)),
                       "baselines": [r.__dict__ for r in results]}, fh, indent=1)
    return 0


def run_code(args: argparse.Namespace) -> int:
    from .coding import code_readouts

    result = code_readouts(checkpoint=args.checkpoint, readouts=args.readouts, split=args.split,
                           limit=args.limit, progress=True)
    print(result["summary"])
    if args.json:
        with atomic_open(args.json, "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in result.items() if k != "summary"}, fh, indent=1)
    return 0 if result["all_round_trip"] else 1


def run_export_prior(args: argparse.Namespace) -> int:
    from .coding import readout_prior_model
    from .readout_coder import ReadoutCoder

    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {out}")
    if not out.parent.exists():
        raise ValueError(f"folder {out.parent} does not exist")
    coder = ReadoutCoder(readout_prior_model(args.checkpoint))
    coder.save(out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, prior {coder.prior_hash}); use it on both ends: "
          f"python edge/run_camera.py --payload prior --prior {out}")
    return 0
