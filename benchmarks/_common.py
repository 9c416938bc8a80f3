"""Shared by the benchmark scripts: the machine's name and the update of a marked markdown section."""
from __future__ import annotations

import platform
from pathlib import Path

from core.atomic import atomic_open


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
