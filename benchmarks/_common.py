"""Shared by the benchmark scripts: the machine's name, the update of a marked markdown section, and the
entry point that turns bad input into a one-line error."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from core.atomic import atomic_open
from core.errors import InputError


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def update_section(path: Path, name: str, text: str, *, heading: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``
    (appending the section under ``heading`` when absent), atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin not in doc or end not in doc:
        doc = doc.rstrip("\n") + f"\n\n## {heading}\n\n{begin}\n{end}\n"
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{begin}\n{text}\n{end}{tail}")


def run_script(name: str, parser: argparse.ArgumentParser, main) -> None:
    """Run ``main(parser.parse_args())`` and exit with its code; bad input (:class:`InputError`) is one line on
    stderr, ``NAME: error: ...``, and exit code 2, never a traceback."""
    try:
        sys.exit(main(parser.parse_args()))
    except InputError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
