"""What the throughput benchmarks share: machine facts for the JSON, the docs table section."""

from __future__ import annotations

import os
import pathlib
import platform
from typing import Any

import torch

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine_info() -> dict[str, Any]:
    """torch version, thread count, CPU and cores: the context every result JSON carries."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }


def write_docs_section(tag: str, body: str, docs: pathlib.Path = DOCS) -> None:
    """Replace the ``<!-- tag:start/end -->`` block of ``docs`` (append it if missing)."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    counts = (text.count(start), text.count(end))
    if counts == (0, 0):
        text = text.rstrip() + "\n\n" + block + "\n"
    elif counts == (1, 1) and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        # A hand edit broke the markers: appending or splicing would duplicate text.
        raise ValueError(
            f"{docs}: expected one {start!r} before one {end!r}, found {counts[0]} and "
            f"{counts[1]}; repair the markers by hand"
        )
    docs.write_text(text)
