"""Tables as text: markdown (docs, benchmark write-ups) and fixed-width plain text (terminals).

One renderer for ``pixelrnn bench`` and the scripts in ``benchmarks/``; numpy- and torch-free.
Cells are formatted by the caller (``str()`` is applied to anything else).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

_MARKDOWN_RULE = {"l": "---", "r": "---:", "c": ":---:"}


def _check(header: Sequence, rows: list[Sequence], align: str | None) -> str:
    if not header:
        raise ValueError("a table needs at least one column")
    align = "l" * len(header) if align is None else align
    if len(align) != len(header) or set(align) - set(_MARKDOWN_RULE):
        raise ValueError(f"align must be one of l, r, c per column ({len(header)}), got {align!r}")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}")
    return align


def markdown_table(header: Sequence, rows: Iterable[Sequence], *, align: str | None = None) -> list[str]:
    """Lines of a markdown table; ``align``: one of l/r/c per column (default all l)."""
    rows = list(rows)
    align = _check(header, rows, align)
    return [_markdown_row(header), _markdown_row(_MARKDOWN_RULE[a] for a in align), *map(_markdown_row, rows)]


def _markdown_row(cells: Iterable) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def text_table(header: Sequence, rows: Iterable[Sequence], *, align: str | None = None) -> list[str]:
    """Lines of a plain-text table, columns padded to their widest cell and two spaces apart."""
    rows = [[str(c) for c in r] for r in rows]
    align = _check(header, rows, align)
    cells = [[str(c) for c in header], *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    pad = {"l": str.ljust, "r": str.rjust, "c": str.center}
    return ["  ".join(pad[a](c, w) for a, c, w in zip(align, r, widths)).rstrip() for r in cells]
