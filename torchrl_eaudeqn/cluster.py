"""The study's Ray backend, by its old path: it lives in :mod:`torchrl_eaudeqn.study.cluster`."""

from .study import cluster as _home
from .study.cluster import *  # noqa: F403 - the same objects, whatever the home module exports

__all__ = list(_home.__all__)
