"""The frontier tables already written into a results document, read back (issue 12).

Each round's ``benchmarks/frontier.py --write`` leaves a machine-written table between ``<!-- NAME:begin -->``
and ``<!-- NAME:end -->``. Reading them back lets one ``frontier.py --from-doc`` call draw the frontier across
every round, or redraw one section's plot, after the rounds' run folders (and their summary JSONs) are gone.
A row keeps the name of the section it came from, which says where, when and how it was measured.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.errors import InputError

__all__ = ["read_doc"]

SECTION = re.compile(r"<!-- (?P<name>frontier[\w-]*):begin -->(?P<body>.*?)<!-- (?P=name):end -->", re.S)
ROW = re.compile(r"^\| (?P<ds>\w+) \| (?P<config>[^|]+?) \| (?P<bytes>\d+) \| [^|]* \| (?P<seeds>\d+|-) "
                 r"\| (?P<val>[^|]+?) \| (?P<test>[^|]+?) \|$", re.M)
STAT = re.compile(r"(\d+(?:\.\d+)?)(?: ± (\d+(?:\.\d+)?))?")
TAGGED = re.compile(r" \[frontier[\w-]*\]$")
LINEAR, VIDEO = "reference: linear on the averaged raw frame", "reference: 3D CNN on the raw 16x64x64 clip"


def _stat(text: str, where: str) -> tuple[float, float]:
    m = STAT.fullmatch(text.strip())
    if not m:
        raise InputError(f"{where}: cannot read {text!r} as 'mean' or 'mean ± std'")
    return float(m[1]), float(m[2] or 0.0)


def read_doc(path: str | Path, *, sections: list[str] | None = None,
             exclude: tuple[str, ...] = ()) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """The configuration rows (per data set, in document order, each with its ``section``) and the reference
    points (per data set, in :func:`benchmarks.frontier.load_references`' form; a later section's wins) of the
    frontier sections of ``path``: the ``sections`` named, else every ``frontier*`` section but ``exclude``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--from-doc: no such file {path}")
    found = {m["name"]: m["body"] for m in SECTION.finditer(path.read_text(encoding="utf-8"))}
    missing = [s for s in sections or [] if s not in found]
    if missing:
        raise InputError(f"--from-doc {path}: no frontier section named {', '.join(missing)} "
                         f"(it has: {', '.join(found) or 'none'})")
    names = sections or [s for s in found if s not in exclude]
    rows: dict[str, list[dict]] = {}
    refs: dict[str, dict] = {}
    for name in names:
        for m in ROW.finditer(found[name]):
            where = f"{path} section {name}, {m['ds']} {m['config']}"
            (val, val_std), (test, test_std) = _stat(m["val"], where), _stat(m["test"], where)
            if m["config"] in (LINEAR, VIDEO):
                ref = refs.setdefault(m["ds"], {"linear": None, "video": None, "folds": None})
                if m["config"] == LINEAR:
                    ref["linear"] = {"val_accuracy": val / 100, "test_accuracy": test / 100}
                else:
                    ref["video"] = {"seeds": int(m["seeds"]), "val_mean": val, "val_std": val_std,
                                    "test_mean": test, "test_std": test_std}
            elif not TAGGED.search(m["config"]):     # a row collected from another section is read there
                rows.setdefault(m["ds"], []).append({
                    "config": m["config"], "section": name, "readout_bytes": int(m["bytes"]),
                    "seeds": int(m["seeds"]), "val_mean": val, "val_std": val_std, "test_mean": test,
                    "test_std": test_std})
    if not rows:
        raise InputError(f"--from-doc {path}: no frontier rows in sections {', '.join(names) or '(none)'}")
    return rows, {ds: r for ds, r in refs.items() if r["linear"] is not None}
