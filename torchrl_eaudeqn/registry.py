"""The MLflow model registry, by its old path (now :mod:`torchrl_eaudeqn.tracking.registry`)."""

from .tracking import registry as _home
from .tracking.registry import *  # noqa: F403 - the same objects, whatever the home module exports

__all__ = list(_home.__all__)
