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


def run_dir(root: str | pathlib.Path, run_key: str) -> pathlib.Path | None:
    """The checkpoint directory ``<root>/<run key>-<fingerprint>`` a recipe wrote, if any.

    ``recipe.checkpoint_dir`` names it; a test that only knows the run key finds
    it here (exactly one per run key in a test's own root).
    """
    found = sorted(pathlib.Path(root).glob(f"{run_key}-????????"))
    assert len(found) <= 1, found
    return found[0] if found else None
