"""Reliability callbacks, by their old path (now in :mod:`torchrl_eaudeqn.trainers.reliability`)."""

from .trainers.reliability import EnvStepCheckpoint, GracefulStop, NonFiniteError, NonFiniteGuard

__all__ = ["EnvStepCheckpoint", "GracefulStop", "NonFiniteError", "NonFiniteGuard"]
