"""Load a recipe script (``recipes/*.py``, not a package module) for in-process tests."""

from __future__ import annotations

import importlib.util
import pathlib
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(path: str | pathlib.Path, name: str | None = None) -> types.ModuleType:
    """Import the script at ``path`` (relative to the repository root or absolute)."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
