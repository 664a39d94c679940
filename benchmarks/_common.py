"""Helpers shared by the benchmark scripts (run as ``python benchmarks/bench_X.py``)."""
from __future__ import annotations

from pathlib import Path

HEADER = ("# Benchmarks\n\nResults of `nox -s bench` (scripts in `benchmarks/`), each section written by its "
          "own script on the machine named in it. Data: `../shared/data/prepare.py`.\n")


def write_section(doc: Path, start: str, end: str, section: str) -> None:
    """Replace the text between ``start`` and ``end`` markers in ``doc`` (append if absent)."""
    block = f"{start}\n{section}{end}"
    if doc.exists():
        text = doc.read_text()
    else:
        doc.parent.mkdir(parents=True, exist_ok=True)
        text = HEADER
    if start in text and end in text and text.index(start) < text.index(end):
        a, b = text.index(start), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)
