"""Measure lossless readout coding with a learned prior: bits per window, round trip, time.

Every window of a split is encoded with :class:`~pixelrnn.generative.readout_coder.ReadoutCoder`,
decoded again and compared bit for bit; the compressed size is set against the raw payloads of
the readout packet (1-bit: 512 B, 8-bit: 4,096 B for 64x64) and against the prior's ideal code
length (-log2 p, what an infinitely precise coder would reach).
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def readout_prior_model(checkpoint):
    """The checkpoint's model if it can serve as a readout prior (unconditional gated, K = 2)."""
    from .train import load_checkpoint

    model, cfg, meta = load_checkpoint(checkpoint)
    if cfg.model != "gated" or cfg.conditional or meta["num_classes"] != 2:
        raise ValueError(f"{checkpoint} is a {cfg.model} model over {meta['num_classes']} levels; a readout prior "
                         "must be an unconditional gated model of 1-bit readouts "
                         "(pixelrnn generate train --model gated --data READOUTS.npz)")
    return model


def code_readouts(*, checkpoint, readouts, split: str = "test", limit: int = 0, progress: bool = True) -> dict:
    """Encode + decode every window of ``split`` (or ``all``) of ``readouts`` with the checkpoint's prior."""
    from .readout_coder import ReadoutCoder
    from .readouts import load_readout_dataset

    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit!r}")
    model = readout_prior_model(checkpoint)
    data = load_readout_dataset(readouts)
    if split == "all":
        bits = np.concatenate([data.split(s)[0] for s in ("train", "val", "test")])
    else:
        bits = data.split(split)[0]
    if limit:
        bits = bits[:limit]
    coder = ReadoutCoder(model)
    h, w = bits.shape[1:]
    raw_1bit, raw_8bit = h * w // 8, h * w
    sizes, ideal, enc_t, dec_t, ok = [], [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(bits), desc="coding windows", unit="window", leave=False)
    for window in bits:
        t0 = time.perf_counter()
        payload = coder.encode(window)
        t1 = time.perf_counter()
        back = coder.decode(payload, shape=(h, w))
        t2 = time.perf_counter()
        ok.append(bool(np.array_equal(back, window)))
        sizes.append(len(payload))
        ideal.append(coder.ideal_bits(window))
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(bytes=f"{np.mean(sizes):.1f}")
    if bar is not None:
        bar.close()
    mean_bytes = float(np.mean(sizes))
    result = {
        "checkpoint": str(checkpoint), "readouts": str(readouts), "split": split, "windows": len(bits),
        "prior_hash": coder.prior_hash, "all_round_trip": all(ok), "round_trip_failures": int(len(ok) - sum(ok)),
        "mean_bytes": mean_bytes, "max_bytes": int(max(sizes)), "mean_bits": mean_bytes * 8,
        "ideal_bits": float(np.mean(ideal)), "raw_1bit_bytes": raw_1bit, "raw_8bit_bytes": raw_8bit,
        "ratio_vs_1bit": raw_1bit / mean_bytes, "ratio_vs_8bit": raw_8bit / mean_bytes,
        "encode_ms_median": 1e3 * statistics.median(enc_t), "decode_ms_median": 1e3 * statistics.median(dec_t),
        "bits_per_readout_pixel": mean_bytes * 8 / (h * w),
    }
    result["summary"] = (
        f"{len(bits)} windows of {data.name} ({split}): {mean_bytes:.1f} B/window mean (max {max(sizes)}), "
        f"{result['bits_per_readout_pixel']:.3f} bits/pixel; ideal {result['ideal_bits'] / 8:.1f} B; "
        f"raw 1-bit {raw_1bit} B (x{result['ratio_vs_1bit']:.2f}), "
        f"8-bit {raw_8bit} B (x{result['ratio_vs_8bit']:.1f}); "
        f"lossless round trip {'OK on every window' if all(ok) else f'FAILED on {len(ok) - sum(ok)} windows'}; "
        f"encode {result['encode_ms_median']:.0f} ms, decode {result['decode_ms_median']:.0f} ms per window (median)")
    return result
