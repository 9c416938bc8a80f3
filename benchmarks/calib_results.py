"""Calibration to the real SCAMP-5 readouts (issue 6): run the three ``pixelrnn calib`` commands on the
real data and write the ``calib`` section of docs/RESULTS.md.

    python benchmarks/calib_results.py [--out-dir runs/calib] [--write docs/RESULTS.md]

Steps (each a real ``pixelrnn`` subprocess, so the commands are what is measured):
1. ``calib decoder`` on cam_noise.pt's sensor weights, with the authors' fine-tuned decoder as the
   reference and the authors' recipe refitted per fold, 5-fold stratified CV -> calibrated.pt;
2. ``calib noise`` with the 90 Cambridge test clips -> noise.json and its PNGs; then, in this process,
   every decoder on simulated readouts under no / the authors' / the calibrated noise model;
3. ``calib decoder --exclude-fold 0`` -> a decoder that never saw fold 0, exported (ONNX + TFLite), and
   ``calib int8`` on that bundle, scored on fold 0 (unseen by decoder and quantizers);
4. a few bad inputs, to show their one-line errors.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import cpu_name, update_section  # noqa: E402

DATA = Path(os.environ.get("PIXELRNN_DATA", REPO.parent / "shared" / "data"))
HEADING = "Calibration to the real SCAMP-5 sensor (issue 6)"


def arg(a) -> str:
    """Paths relative to the repository (the commands run there), so the docs show portable commands."""
    return os.path.relpath(a, REPO) if isinstance(a, Path) else str(a)


def pixelrnn(*args, check: bool = True) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "pixelrnn.cli", *map(arg, args)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if check and proc.returncode != 0:
        sys.exit(f"pixelrnn {' '.join(map(arg, args))} failed:\n{proc.stderr}")
    return proc.returncode, proc.stdout, proc.stderr, seconds


def simulated_check(*, weights: dict[str, Path], clips: Path, noise_file: Path, seeds=(0, 1, 2)) -> dict:
    """Accuracy of each decoder on simulated readouts of the 90 test clips, per noise model."""
    import numpy as np
    import torch

    from firmware_sim.clips import load_clips
    from firmware_sim.noise import NoiseModel
    from firmware_sim.simulate import simulate
    from pixelrnn.checkpoint import load_model

    data = load_clips(clips, need_labels=True)
    models = {k: load_model(p) for k, p in weights.items()}
    sensor = next(iter(models.values())).sensor_weights()
    noises = {"off": NoiseModel.off(), "authors": NoiseModel.authors(),
              "calibrated": NoiseModel.from_spec(str(noise_file))}
    out = {}
    for nname, noise in noises.items():
        readouts = [simulate(weights=sensor, frames=data.frames, noise=noise, seed=s, stages=()).readout
                    for s in (seeds if noise.enabled else seeds[:1])]
        for mname, model in models.items():
            with torch.no_grad():
                accs = [float((model.decode(torch.from_numpy(r)).argmax(1).numpy() == data.labels).mean())
                        for r in readouts]
            out[(nname, mname)] = float(np.mean(accs))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=REPO / "runs" / "calib")
    ap.add_argument("--write", type=Path, default=REPO / "docs" / "RESULTS.md")
    ap.add_argument("--runs", type=int, default=300, help="timed inferences per graph (calib int8)")
    args = ap.parse_args()
    ref = DATA / "pixelrnn_ref"
    weights, finetuned = ref / "pretrained" / "cam_noise.pt", ref / "pretrained" / "cam_noise_finetuned.pt"
    readouts, clips = ref / "scamp5_readouts_cambridge810.npz", ref / "cambridge_test90.npz"
    for path in (weights, finetuned, readouts, clips):
        if not path.is_file():
            sys.exit(f"real data not found: {path} (set PIXELRNN_DATA)")
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}

    # 1. decoder
    ckpt, dec_json = out / "calibrated.pt", out / "decoder.json"
    cmd_decoder = ["calib", "decoder", "--weights", weights, "--readouts", readouts, "--reference", finetuned,
                   "--recipe-baseline", "--out", ckpt, "--json", dec_json]
    *_, seconds["decoder"] = pixelrnn(*cmd_decoder)
    dec = json.loads(dec_json.read_text())

    # 2. noise
    noise_json = out / "noise.json"
    cmd_noise = ["calib", "noise", "--weights", weights, "--readouts", readouts, "--clips", clips, "--out", noise_json]
    *_, seconds["noise"] = pixelrnn(*cmd_noise)
    noise = json.loads(noise_json.read_text())
    check = simulated_check(weights={"simulation": weights, "calibrated": ckpt, "reference": finetuned},
                            clips=clips, noise_file=noise_json)

    # 3. int8 on a decoder that never saw fold 0
    ckpt0, bundle = out / "calibrated_without_fold0.pt", out / "bundle_without_fold0"
    *_, seconds["decoder_fold0"] = pixelrnn("calib", "decoder", "--weights", weights, "--readouts", readouts,
                                            "--exclude-fold", "0", "--out", ckpt0)
    *_, seconds["export"] = pixelrnn("export", "--weights", ckpt0, "--format", "onnx,tflite", "--out", bundle)
    int8_json = out / "int8.json"
    cmd_int8 = ["calib", "int8", "--bundle", bundle, "--readouts", readouts, "--holdout-fold", "0",
                "--runs", args.runs, "--json", int8_json]
    *_, seconds["int8"] = pixelrnn(*cmd_int8)
    q = json.loads(int8_json.read_text())

    # 4. bad input
    import numpy as np
    bad = {}
    shapes = out / "bad_shape.npz"
    np.savez(shapes, readouts=np.zeros((4, 32, 32), np.uint8), labels=np.arange(4))
    nan = out / "bad_nan.npz"
    np.savez(nan, readouts=np.full((4, 64, 64), np.nan, np.float32), labels=np.arange(4))
    nolab = out / "bad_nolabels.npz"
    np.savez(nolab, readouts=np.zeros((4, 64, 64), np.uint8))
    for name, argv in {
        "readouts of the wrong shape": ["calib", "decoder", "--weights", weights, "--readouts", shapes,
                                        "--out", out / "x.pt"],
        "NaN readouts": ["calib", "int8", "--bundle", bundle, "--readouts", nan],
        "readouts without labels": ["calib", "decoder", "--weights", weights, "--readouts", nolab,
                                    "--out", out / "x.pt"],
        "a calibration file from another model": ["simulate", "--weights", ref / "pretrained" / "lips_no_noise.pt",
                                                  "--clips", ref / "tulips_test10.npz", "--out", out / "x.npz",
                                                  "--noise", noise_json],
    }.items():
        code, _, err, _ = pixelrnn(*argv, check=False)
        bad[name] = (code, err.strip())
    for p in (shapes, nan, nolab):
        p.unlink()

    text = render(dec=dec, noise=noise, check=check, q=q, bad=bad, seconds=seconds,
                  cmds={"decoder": cmd_decoder, "noise": cmd_noise, "int8": cmd_int8}, runs=args.runs)
    print(text)
    if args.write:
        update_section(args.write, "calib", text, heading=HEADING)
        print(f"wrote the calib section of {args.write}")
    return 0


def _cmd(argv) -> str:
    return "pixelrnn " + " ".join(map(arg, argv))


def render(*, dec, noise, check, q, bad, seconds, cmds, runs) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Measured {date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} cores, shared), Python "
             f"{platform.python_version()}, by `python benchmarks/calib_results.py` (outputs in `runs/calib/`). "
             "In-sensor weights: the authors' `cam_noise.pt` (the program that produced the real readouts; "
             "program hash " + f"`{dec['final']['model_id']}`). Real data: the 810 SCAMP-5 readouts of the "
             "non-test Cambridge clips (90 per class).", ""]

    # decoders
    lines += ["### Decoders on real readouts (held out, same folds)", "",
              f"Command: `{_cmd(cmds['decoder'])}` ({seconds['decoder']:.0f} s).", "",
              "5-fold stratified cross-validation (seed 0; every fold holds 18 readouts of each class). Per fold, "
              "our decoder's feature scale and LDA shrinkage are chosen on an inner 20% validation split of the "
              "training folds only.", "",
              "| fold | (a) simulation decoder | (b) ours, calibrated | (c) authors' fine-tuned* "
              "| (d) authors' recipe, refitted per fold |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in dec["folds"]:
        lines.append(f"| {r['fold']} | {pct(r['simulation'])} | {pct(r['calibrated'])} | {pct(r['reference'])} | "
                     f"{pct(r['recipe_refit'])} |")
    m = dec["mean"]
    lines += [f"| **mean** | **{pct(m['simulation'])}** | **{pct(m['calibrated'])}** | **{pct(m['reference'])}*** | "
              f"**{pct(m['recipe_refit'])}** |", "",
              "- (a) `cam_noise.pt`'s own decoder, trained only in simulation: chance level (11.1%) on the real "
              "readouts -- the sim-to-real gap.",
              "- (b) ours (`calib decoder`): the decoder's BatchNorm set so its features are tanh(a o), and its "
              "Linear layer fitted by shrinkage LDA (closed form; 648 training readouts against 4096 features "
              "is the regime shrinkage estimators are made for), its logits centred over the classes and divided by a "
              "temperature fitted on the inner split (softmax scores become usable and the logit range fits "
              "int8; no prediction changes). The in-sensor "
              "weights are not touched (same program hash, tested).",
              "- (c) *optimistic: `cam_noise_finetuned.pt`'s decoder was fine-tuned by the authors ON these 810 "
              "readouts, so every \"held-out\" fold was in its training set; its score is a training score. "
              "The goal \"ours >= (c)\" is therefore not met on these numbers, and cannot be judged fairly "
              "with them.",
              "- (d) is the fair counterpart of (c): the authors' recipe (start from the simulation decoder, "
              "Adam lr 1e-3, batch 32, BatchNorm + thresh3 + Linear trainable, epoch chosen on the inner split) "
              "refitted on each fold's training readouts only. Against it, ours is "
              f"{100 * (m['calibrated'] - m['recipe_refit']):+.1f} points.",
              f"- Final decoder (`calibrated.pt`, all 810 readouts): scale {dec['final']['scale']:g}, shrinkage "
              f"{dec['final']['shrinkage']:g}, temperature {dec['final']['temperature']:.1f}. "
              "`pixelrnn evaluate`/`export` "
              "accept it like any checkpoint.", ""]

    # noise
    met, nz = noise["metric"], noise["noise"]
    ho = met["held_out"]
    lines += ["### Simulator vs hardware: distance before and after noise calibration", "",
              f"Command: `{_cmd(cmds['noise'])}` ({seconds['noise']:.0f} s; writes `noise.json`, "
              "`noise_histograms.png`, `noise_offsets.png`).", "",
              "**Metric: per-pixel Wasserstein-1 distance, in readout levels** (`calib/distance.py`): for every "
              "one of the 64x64 pixels, the W1 distance between the distribution of its 8-bit level in simulated "
              "readouts and in real ones, averaged over pixels. Why: the simulated clips and the real readouts are "
              "different recordings of the same nine gestures, so only distributions can be compared; W1 is in "
              "the readout's own unit and sees, per pixel, everything the noise model can change -- an offset "
              "(W1 = |offset|), spread or gain (stretch), saturation (mass at 0/255) -- and, unlike a histogram L1, "
              "does not punish the simulator's lattice of levels (noise-free o is an integer, i.e. every 10th "
              "level). Computing it per pixel keeps fixed-pattern offsets visible that a pooled histogram would "
              "average away. The floor is the same distance between two disjoint sets of *real* readouts of the "
              "same sizes: what a perfect simulator would still score.", "",
              "Protocol: clips (90) and readouts (810) are each split into two stratified halves; parameters "
              "fitted on one pair of halves are scored on the other pair, both ways, averaged (held out). "
              "\"Before\" is the authors' noise model (what training and `--noise authors` use).", "",
              "| simulator noise model | per-pixel W1 (levels) | pooled W1 | mean-map RMSE | std-map RMSE | "
              "hist. TV (32 bins) | share at 0 | share at 255 |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, label in (("off", "none"), ("authors", "authors' (before)"), ("fitted", "calibrated (after)")):
        r = ho[name]
        lines.append(f"| {label} | {r['per_pixel_w1']:.1f} | {r['pooled_w1']:.1f} | {r['mean_map_rmse']:.1f} | "
                     f"{r['std_map_rmse']:.1f} | {r['hist_tv_32bins']:.3f} | {pct(r['sat_low_sim'])} | "
                     f"{pct(r['sat_high_sim'])} |")
    r = ho["fitted"]
    lines += [f"| real readouts | floor {met['floor']:.1f} | floor {ho['floor']['pooled_w1']:.1f} | | | | "
              f"{pct(r['sat_low_real'])} | {pct(r['sat_high_real'])} |", "",
              f"Fitted (all data, `noise.json`): conv_sigma {nz['conv_sigma']:g}, gate_sigma {nz['gate_sigma']:g}, "
              f"out_gain {nz['out_gain']:g}, out_sigma {nz['out_sigma']:g}, "
              f"out_offset {nz['out_offset']:.2f} MAC, and a "
              f"per-pixel offset map of RMS {noise['fit']['offset_map_rms']:.2f} MAC (shrinkage factor "
              f"{noise['fit']['offset_map_shrinkage']:.2f}). Held out, the distance falls from "
              f"{met['before']:.1f} to {met['after']:.1f} levels (floor {met['floor']:.1f}).", "",
              "What the fit says about the chip: its output is compressed (gain < 1: the real levels spread "
              "less and saturate far less often than simulated ones), noisier than the authors' model, and "
              "carries a large per-pixel offset pattern. The real readouts also have near-constant edges "
              "(rows 0 and 63 and column 63 of the window vary by a few levels only, column 0 by half as "
              "much as inner pixels), which an additive model cannot reproduce: per-pixel spread is what "
              "the std-map RMSE still shows.", ""]
    lines += ["Does the calibrated simulator behave like the chip? Accuracy of each decoder on *simulated* "
              "readouts of the 90 test clips (3 noise seeds):", "",
              "| simulator noise | (a) simulation decoder | (b) ours (fitted on real) | (c) authors' fine-tuned |",
              "| --- | ---: | ---: | ---: |"]
    for nname in ("off", "authors", "calibrated"):
        lines.append(f"| {nname} | {pct(check[(nname, 'simulation')])} | {pct(check[(nname, 'calibrated')])} | "
                     f"{pct(check[(nname, 'reference')])} |")
    lines += ["", "The decoders fitted on real readouts stay far below their real-readout accuracy on simulated "
              "readouts even with the calibrated noise, and the simulation decoder loses accuracy: matching the "
              "per-pixel level distributions does not make the content of simulated readouts match the chip's. "
              "The per-class mean readouts of simulation and hardware correlate weakly (about 0.1, against 0.7 "
              "between two halves of the real readouts), and no mirror, rotation or transpose of the input "
              "explains it: the gap is in what the sensor saw and computed, not only in its output noise. So "
              "decoder calibration on real readouts is what makes the chip usable; the noise file makes "
              "simulated readouts statistically realistic (for noise-aware training and for testing the "
              "camera loop), it does not turn simulation into the chip.", ""]

    # int8
    s = q["split"]
    lines += ["### int8 host decoders", "",
              f"Command: `{_cmd(cmds['int8'])}` ({seconds['int8']:.0f} s), on a bundle exported from "
              "`calib decoder --exclude-fold 0`, so the scored fold 0 was seen neither by the decoder nor by the "
              f"quantizers (calibrated on the other {s['n_calibration']} readouts; scored on {s['n_eval']}). ONNX: "
              "`quantize_static`, QDQ, int8 weights, uint8 activations, per-tensor, float logits out, after "
              "`quant_pre_process`; "
              "TFLite: the converter's int8 quantization with the real readouts as representative dataset. "
              f"Latency: median of {runs} single-readout inferences, 1 thread, float and int8 timed round-robin "
              "in one run.", "",
              "| runtime | graph | file | size (KB) | accuracy | median latency (us) |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for rt, label in (("onnx", "ONNX Runtime"), ("tflite", "ai-edge-litert")):
        if rt not in q:
            continue
        for kind in ("float", "int8"):
            r = q[rt][kind]
            lines.append(f"| {label} | {kind} | `{r['file']}` | {r['bytes'] / 1024:.1f} | {pct(r['accuracy'])} | "
                         f"{r['median_us']:.1f} |")
    lines.append("")
    for rt, label in (("onnx", "ONNX Runtime"), ("tflite", "TFLite")):
        if rt in q:
            r = q[rt]
            lines.append(f"- {label}: int8 - float = {r['accuracy_change_points']:+.2f} points (prediction agreement "
                         f"{pct(r['prediction_agreement'])}), size x{r['size_ratio']:.2f}, latency "
                         f"x{r['latency_ratio']:.2f}.")
    lines += ["- Two details keep int8 faithful. LDA's raw logits carry a large component shared by all "
              "classes (here about +-80, against class differences of about 10); an int8 logit output "
              "calibrated on training readouts clipped a held-out readout whose logits all lay below the "
              "calibrated range to all zeros (measured before the fix: 97% agreement in both runtimes). "
              "`calib decoder` therefore removes the shared component (softmax-invariant), and the ONNX "
              "graph keeps its logits float.",
              "- The host decoder is one 4096 x classes matrix product: int8 shrinks the file about 4x, but at "
              "tens of microseconds the quantize/dequantize steps cost as much as the arithmetic they save, so "
              "it is not faster on this x86 CPU; the size is the gain (and an int8-only accelerator could run it).",
              "- `host_int8.onnx` and `host_int8.tflite` are added to the bundle and listed in its manifest "
              "(sha256; `verify_bundle` passes), with an `int8` record of the calibration.", ""]

    # bad input
    lines += ["### Bad input", "", "| input | exit code | message (stderr, one line) |", "| --- | ---: | --- |"]
    for name, (code, err) in bad.items():
        lines.append(f"| {name} | {code} | `{err.replace('|', '/')}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
