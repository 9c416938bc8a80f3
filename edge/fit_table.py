"""``pixelrnn fit-table``: count the static context table of the ``table`` / ``levels1-table`` payloads.

    pixelrnn fit-table --readouts R.npz --out table.npz [--folds train|train+val]

``R.npz``: readouts of the sensor program the table is for, with labels: ``pixelrnn simulate
--readout-only`` output (``readout``: (N, 64, 64) 8-bit levels of the authors' layout, coded as their
signs ``readout >= 127``; or (N, M, S, S) 1-bit levels of a readout layout, coded as the (M*S, S)
image the packet carries) or a real-sensor readouts file (``readouts``). The file's shape is the
layout: a table codes readouts of that shape only, and the sensor refuses it for another.

Split: stratified 5 folds by label, seed 0 (the split of ``pixelrnn generate train`` and calib):
the table is counted on folds 2-4 (``--folds train+val``: 1-4), never on fold 0, the test split,
and, for ``--folds train``, its code size is reported on fold 1. Output written atomically;
bad input is one line and exit code 2 (``core.cli``).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from core.constants import ZERO_LEVEL
from core.errors import InputError
from core.npz import check_npz_output, open_npz
from core.readouts import check_readouts, stratified_folds
from core.table_coder import encode_bits, fit_table, save_table

__all__ = ["FOLDS", "SPLIT_SEED", "FIT_FOLDS", "load_bits", "get_args_parser", "add_fit_table_parser",
           "run_fit_table", "main"]

FOLDS, SPLIT_SEED = 5, 0                  # as pixelrnn.generative.readouts (the prior's split)
FIT_FOLDS = {"train": 2, "train+val": 1}  # --folds -> the first fold counted (fold 0, the test split, never)
_EXAMPLE = "np.savez(path, readout=..., labels=...) (pixelrnn simulate --readout-only writes one)"


def load_bits(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(bits (N, H, W) uint8, labels (N,), program hash or "", what they are) of a readouts file; a
    one-line InputError for anything the table payloads cannot code."""
    with open_npz(path, what="readouts", example=_EXAMPLE) as data:
        key = next((k for k in ("readout", "readouts") if k in data.files), None)
        if key is None:
            raise InputError(f"{path} has no 'readout' or 'readouts' array (found {sorted(data.files) or 'nothing'}); "
                             f"expected {_EXAMPLE}")
        if "labels" not in data.files:
            raise InputError(f"{path} has no 'labels' array: the folds that keep the test split out need them")
        raw, labels = data[key], data["labels"]
        program = data["program_hash"] if "program_hash" in data.files else np.array("")
    if raw.ndim == 4:                                  # a layout's (N, M, S, S) levels
        if raw.dtype != np.uint8 or raw.shape[0] < 1 or raw.shape[2] != raw.shape[3]:
            raise InputError(f"{path}: {key} must be (N, M, S, S) uint8 maps, got {raw.dtype} {raw.shape}")
        top = int(raw.max())
        if top > 1:
            raise InputError(f"{path}: {key} holds levels up to {top} (a {top.bit_length()}-bit layout); the table "
                             "payloads code 1-bit readouts only (the authors' signs, or a 1-bit layout's levels)")
        n, m, s, _ = raw.shape
        bits, what = raw.reshape(n, m * s, s), f"{m} maps of {s}x{s} at 1 bit, stacked to {m * s}x{s}"
    else:
        levels = check_readouts(raw, what=f"{os.fspath(path)}: {key}")
        bits, what = (levels >= ZERO_LEVEL), f"{levels.shape[1]}x{levels.shape[2]} 8-bit levels, as signs"
    labels = np.asarray(labels)
    if labels.shape != (len(bits),) or labels.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be ({len(bits)},) integers, one per readout, got "
                         f"{labels.dtype} {labels.shape}")
    if bits.shape[-1] % 2:
        raise InputError(f"{path}: maps of odd width {bits.shape[-1]}; the table coder codes pixel pairs")
    program = str(program) if program.shape == () and program.dtype.kind == "U" else ""
    return bits.astype(np.uint8), labels.astype(np.int64), program, what


def get_args_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="pixelrnn fit-table", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readouts", required=True, metavar="R.npz",
                   help="readouts of the sensor program, with labels (pixelrnn simulate --readout-only)")
    p.add_argument("--out", required=True, metavar="TABLE.npz", help="the table file to write (atomically)")
    p.add_argument("--folds", choices=tuple(FIT_FOLDS), default="train",
                   help="folds counted: train (2-4, default; fold 1 reports the code size) or train+val (1-4); "
                        "never fold 0, the test split")
    return p


def add_fit_table_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-table", help="count the table file of the table payloads on readouts (numpy only)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    get_args_parser(p)
    p.set_defaults(func=run_fit_table)


def run_fit_table(args: argparse.Namespace) -> int:
    out = check_npz_output(args.out)
    bits, labels, program, what = load_bits(args.readouts)
    if len(bits) < 2 * FOLDS:
        raise InputError(f"{args.readouts}: {len(bits)} readouts are too few to split into {FOLDS} folds")
    folds = stratified_folds(labels, k=FOLDS, seed=SPLIT_SEED)
    first = FIT_FOLDS[args.folds]
    table = fit_table(bits[folds >= first], program_hash=program)
    save_table(out, table=table)
    print(f"table {table.table_hash}: {table.shape[0]}x{table.shape[1]} ({what}), taps {','.join(table.taps)}, "
          f"counted on {table.windows} windows (folds {first}-{FOLDS - 1}); wrote {out} "
          f"({out.stat().st_size / 1024:.0f} KiB)")
    if first > 1:
        val = bits[folds == 1]
        sizes = [len(encode_bits(b, table=table)) for b in val]
        raw = (bits.shape[1] * bits.shape[2] + 7) // 8
        print(f"validation fold 1: {np.mean(sizes):.1f} B per window with id and CRC (raw {raw} B), "
              f"{sum(s > raw for s in sizes)} of {len(val)} would fall back to raw")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m edge.fit_table``: the same command outside the ``pixelrnn`` dispatcher."""
    args = get_args_parser().parse_args(argv)
    try:
        return run_fit_table(args)
    except (ValueError, OSError) as exc:          # InputError and file problems: one line, exit 2
        print(f"pixelrnn fit-table: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
