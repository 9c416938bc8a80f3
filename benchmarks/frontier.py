"""The accuracy-vs-readout-bytes frontier (issue 12): a PNG plot and a markdown table.

Reads the summaries of ``pixelrnn sweep --summary --json-out`` (one per dataset) and the reference
points of ``benchmarks/reference_points.py``; marks the authors' configuration and, per dataset,
the smallest readout at which the in-pixel model beats the raw-frame linear baseline (on test,
reported once, after selection on validation).

    python benchmarks/frontier.py --sweep grid=runs/sweep/grid-frontier/summary.json \
        --references runs/reference_points.json --png docs/img/frontier.png --write docs/RESULTS.md

``--from-doc`` reads the rows of the frontier tables earlier calls wrote into a document instead (or as well):
with ``--chosen``, the frontier across every round (per data set and readout size, the configuration
validation chose among all of them, and the authors' readout; ``--supersede SECTION`` lets one section's rows
alone compete at the sizes it measured); with ``--doc-sections``, one section's rows, e.g. to redraw its plot.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, run_script, update_section  # noqa: E402
from benchmarks.frontier_doc import read_doc  # noqa: E402
from core.atomic import atomic_open  # noqa: E402
from core.errors import InputError  # noqa: E402
from pixelrnn.sweep import mean_std  # noqa: E402

RAW_WINDOW_64 = 16 * 64 * 64           # 16 raw 64x64 8-bit frames
RAW_WINDOW_256 = 16 * 256 * 256


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", action="append", default=[], metavar="DATASET=SUMMARY.json",
                   help="a sweep summary (repeatable; several for one data set are drawn together)")
    p.add_argument("--references", action="append", default=[],
                   help="reference points JSON (benchmarks/reference_points.py; repeatable, a later file's data sets "
                        "win); its data sets' points replace those read with --from-doc")
    p.add_argument("--from-doc", default=None, metavar="FILE.md",
                   help="also read the rows of the frontier tables in this document (each keeps its section's name)")
    p.add_argument("--doc-sections", default="",
                   help="with --from-doc: comma-separated sections to read (default: every frontier section but "
                        "the one --write replaces)")
    p.add_argument("--chosen", action="store_true",
                   help="per data set and readout size, only the configuration validation chooses among all rows, "
                        "and the authors' readout (the frontier across rounds)")
    p.add_argument("--supersede", action="append", default=[], metavar="SECTION",
                   help="with --from-doc --chosen (repeatable): at each data set and readout size this section "
                        "measured, only its rows (and other --supersede sections') compete, e.g. a round whose "
                        "validation is on other clips than the earlier rounds' and was set before it ran to "
                        "decide there")
    p.add_argument("--png", default=None, help="write the plot here")
    p.add_argument("--write", default=None, help="update the frontier section of this markdown file")
    p.add_argument("--command", default=None, help="the command line to print with the table")
    p.add_argument("--section", default="frontier",
                   help="the marked section of --write to replace (default frontier; e.g. frontier-cambridge)")
    p.add_argument("--machine", default=None,
                   help="where the runs trained, if not on this machine (default: this machine's CPU)")
    p.add_argument("--heading", default="The accuracy-vs-bytes frontier (issue 12)",
                   help="the section's heading, if it has to be added")
    return p


def load_sweeps(items: list[str]) -> dict[str, list[dict]]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--sweep expects DATASET=SUMMARY.json, got {item!r}")
        if not Path(path).is_file():
            raise InputError(f"--sweep {name}: no such file {path}")
        rows = json.loads(Path(path).read_text())["rows"]
        out.setdefault(name, []).extend(r for r in rows if r.get("seeds"))     # several sweeps of one data set
    return out


def load_references(path: str | None) -> dict[str, dict]:
    if not path:
        return {}
    if not Path(path).is_file():
        raise InputError(f"--references: no such file {path}")
    data = json.loads(Path(path).read_text())
    out = {}
    for r in data.get("results", []):       # benchmarks/reference_points.py: per dataset, per fold
        folds = r["folds"]
        lin = {k: sum(f["linear"][k] for f in folds) / len(folds) for k in ("test_accuracy", "val_accuracy")}
        seeds = sorted({s for f in folds for s in f.get("video", {})})
        video = None
        if seeds:
            per_seed = {k: [100 * sum(f["video"][s][k] for f in folds) / len(folds) for s in seeds]
                        for k in ("test_accuracy", "val_accuracy")}
            stats = {k: mean_std(v) for k, v in per_seed.items()}
            video = {"seeds": len(seeds), "test_mean": stats["test_accuracy"][0], "test_std": stats["test_accuracy"][1],
                     "val_mean": stats["val_accuracy"][0], "val_std": stats["val_accuracy"][1]}
        out[r["dataset"]] = {"linear": lin, "video": video, "folds": len(folds)}
    return out


def validation_rank(r: dict) -> tuple[float, float]:
    """How validation ranks a row (higher is better): the mean validation accuracy, a tie to the smaller
    spread over seeds. Test accuracy plays no part. Means and spreads are compared to 1e-6 points: the same
    clip counts averaged in another order differ in the last bits of a float (51.28205128205129 against
    ...128), and that must stay a tie."""
    return round(r["val_mean"], 6), -round(r["val_std"], 6)


def is_authors(r: dict) -> bool:
    """Whether a row is the authors' readout (any decoder start)."""
    return r["config"].startswith("authors")


def chosen_per_budget(rows: list[dict]) -> dict[int, dict]:
    """Per readout size, the configuration validation chooses (:func:`validation_rank`; a full tie goes to the
    first listed)."""
    chosen: dict[int, dict] = {}
    for r in rows:
        best = chosen.get(r["readout_bytes"])
        if best is None or validation_rank(r) > validation_rank(best):
            chosen[r["readout_bytes"]] = r
    return chosen


def smallest_beating(rows: list[dict], linear: float | None) -> dict | None:
    """The smallest readout size whose configuration chosen on validation (``chosen_per_budget``) beats the
    linear baseline's test accuracy with its mean test accuracy: the test split is read after the choice, so
    a configuration that validation passed over at its size is never the answer, however it scored on test."""
    if linear is None:
        return None
    chosen = chosen_per_budget(rows)
    return next((chosen[n] for n in sorted(chosen) if chosen[n]["test_mean"] > linear), None)


def superseded(rows: list[dict], sections: list[str]) -> list[dict]:
    """``rows`` without those that ``sections`` supersede: at a readout size a row of one of ``sections``
    has, the rows of every other section drop out (their validation is not compared with theirs), but for
    the authors' readout, which is drawn whatever validation chooses."""
    covered = {r["readout_bytes"] for r in rows if r.get("section") in sections}
    return [r for r in rows if r.get("section") in sections or r["readout_bytes"] not in covered
            or is_authors(r)]


def across_rounds(rows: list[dict]) -> list[dict]:
    """The frontier across rounds: per readout size the configuration validation chooses among all ``rows``
    (:func:`chosen_per_budget`), and the authors' readout with the best validation, by size."""
    chosen = list(chosen_per_budget(rows).values())
    authors = [r for r in rows if is_authors(r)]
    if authors:
        best = max(authors, key=validation_rank)
        chosen += [] if any(r is best for r in chosen) else [best]
    return sorted(chosen, key=lambda r: r["readout_bytes"])


def _label(row: dict) -> str:
    """A row's configuration name, with the section it was read from (``--from-doc``)."""
    return f"{row['config']} [{row['section']}]" if row.get("section") else row["config"]


def table(sweeps: dict[str, list[dict]], refs: dict[str, dict]) -> str:
    lines = ["| dataset | configuration | readout bytes / window | vs 16 raw 64x64 frames | seeds | "
             "val % (mean ± std) | test % (mean ± std) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for ds, rows in sweeps.items():
        for r in sorted(rows, key=lambda r: (r["readout_bytes"], r["config"])):
            lines.append(f"| {ds} | {_label(r)} | {r['readout_bytes']} | {RAW_WINDOW_64 / r['readout_bytes']:.0f}x "
                         f"less | {r['seeds']} | {r['val_mean']:.1f} ± {r['val_std']:.1f} | "
                         f"{r['test_mean']:.1f} ± {r['test_std']:.1f} |")
        ref = refs.get(ds)
        if ref:
            lines.append(f"| {ds} | reference: linear on the averaged raw frame | 4096 | 16x less | - | "
                         f"{100 * ref['linear']['val_accuracy']:.1f} | {100 * ref['linear']['test_accuracy']:.1f} |")
            if ref.get("video"):
                v = ref["video"]
                lines.append(f"| {ds} | reference: 3D CNN on the raw 16x64x64 clip | 65536 | 1x | {v['seeds']} | "
                             f"{v['val_mean']:.1f} ± {v['val_std']:.1f} | {v['test_mean']:.1f} ± {v['test_std']:.1f} |")
    return "\n".join(lines)


def plot_title(ds: str, rows: list[dict]) -> str:
    """A panel's title: the data set, and the key to the red squares only where the panel draws one."""
    authors = any(is_authors(r) for r in rows)
    return f"{ds} (red square: the authors' readout)" if authors else ds


def plot(sweeps: dict[str, list[dict]], refs: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 if len(sweeps) >= 4 else len(sweeps)          # four data sets: two rows of two, still readable
    nrows = -(-len(sweeps) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(sweeps):]:
        ax.set_visible(False)
    for ax, (ds, rows) in zip(axes.flat, sweeps.items()):
        placed: dict[tuple, int] = {}          # labels of points that coincide go one under another
        for r in rows:
            authors = is_authors(r)
            ax.errorbar(r["readout_bytes"], r["test_mean"], yerr=r["test_std"], fmt="s" if authors else "o",
                        color="tab:red" if authors else "tab:blue", capsize=3)
            at = (r["readout_bytes"], round(r["test_mean"], 1))
            placed[at] = placed.get(at, 0) + 1
            ax.annotate(_label(r), (r["readout_bytes"], r["test_mean"]), fontsize=7,
                        xytext=(4, -10 * placed[at]), textcoords="offset points")
        ref = refs.get(ds)
        if ref:
            ax.axhline(100 * ref["linear"]["test_accuracy"], color="gray", ls="--", label="linear, raw averaged frame")
            if ref.get("video"):
                v = ref["video"]
                ax.errorbar(65536, v["test_mean"], yerr=v["test_std"], fmt="D", color="black", capsize=3,
                            label="3D CNN, raw clip (65,536 B)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("readout bytes per 16-frame window")
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.set_title(plot_title(ds, rows))
        ax.grid(alpha=0.3)
        if ref:                                 # the legend keys the reference lines only
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, dpi=90, format="png")
    finally:
        plt.close(fig)


def main(args: argparse.Namespace) -> int:
    sweeps = load_sweeps(args.sweep)
    refs: dict[str, dict] = {}
    redrawn = None          # the one section whose rows alone are drawn (--from-doc, no --sweep)
    if args.from_doc:
        names = [s.strip() for s in args.doc_sections.split(",") if s.strip()] or None
        rows, refs = read_doc(args.from_doc, sections=names, exclude=(args.section,) if args.write else ())
        read = {r["section"] for found in rows.values() for r in found}
        if len(read) == 1 and not args.sweep:       # one section redrawn: its rows need no tag
            redrawn = read.pop()
            for r in (r for found in rows.values() for r in found):
                del r["section"]
        for ds, found in rows.items():
            sweeps.setdefault(ds, []).extend(found)
    elif args.doc_sections:
        raise InputError("--doc-sections needs --from-doc FILE.md")
    if args.supersede:
        if not (args.from_doc and args.chosen):
            raise InputError("--supersede needs --from-doc FILE.md and --chosen (it decides what competes there)")
        known = {r.get("section") for found in sweeps.values() for r in found}
        missing = [s for s in args.supersede if s not in known]
        if missing:
            raise InputError(f"--supersede: no rows read from section {', '.join(missing)}; name a frontier "
                             f"section of {args.from_doc} that --from-doc reads")
        sweeps = {ds: superseded(found, args.supersede) for ds, found in sweeps.items()}
    if not sweeps:
        raise InputError("give at least one --sweep DATASET=SUMMARY.json or --from-doc FILE.md")
    for path in args.references:
        refs.update(load_references(path))
    if args.chosen:
        sweeps = {ds: across_rounds(rows) for ds, rows in sweeps.items()}
    text = table(sweeps, refs)
    notes = []
    for ds, rows in sweeps.items():
        ref = refs.get(ds)
        best = smallest_beating(rows, 100 * ref["linear"]["test_accuracy"] if ref else None)
        if ref:
            notes.append(f"- {ds}: smallest readout beating the raw-frame linear baseline "
                         f"({100 * ref['linear']['test_accuracy']:.1f}%) with the configuration validation chose "
                         f"at its size: "
                         + (f"{_label(best)}, {best['readout_bytes']} B ({best['test_mean']:.1f}%)"
                            if best else "none"))
    measured = f"Measured {date.today().isoformat()} on {args.machine or cpu_name()}."
    if redrawn:
        measured = (f"Redrawn {date.today().isoformat()} from the table of section {redrawn} of {args.from_doc} "
                    f"(its command, machine and date are there).")
    elif args.from_doc:
        measured = (f"Collected {date.today().isoformat()} from the frontier tables of {args.from_doc}: a row's "
                    f"[name] is the section that measured it (marked `<!-- name:begin -->`; its command, machine "
                    f"and date are there)." + (f" Rows without one: {measured[0].lower()}{measured[1:]}"
                                               if args.sweep else ""))
    body = (f"{measured}\n\n"
            + (f"Command: `{args.command}`\n\n" if args.command else "") + text + "\n\n" + "\n".join(notes)
            + (f"\n\n![frontier]({Path(args.png).relative_to(Path(args.write).parent) if args.write else args.png})"
               if args.png else ""))
    print(body)
    if args.png:
        plot(sweeps, refs, Path(args.png))
    if args.write:
        update_section(Path(args.write), args.section, body, heading=args.heading)
    return 0


if __name__ == "__main__":
    run_script("frontier", get_args_parser(), main)
