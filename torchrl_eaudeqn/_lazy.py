"""Module attributes read from another module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def moved_names(module: str, home: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that reads ``names`` from the module ``home`` when asked.

    For names that moved to a module which imports ``module`` itself: importing
    ``home`` at the top of ``module`` would be a cycle.

    Example:
        >>> get = moved_names("m", "json", ["dumps"])
        >>> get("dumps")([1])
        '[1]'
    """
    moved = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name in moved:
            return getattr(importlib.import_module(home), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
