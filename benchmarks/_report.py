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
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    docs.write_text(text)
