"""What the training recipes share, by its old path (now :mod:`torchrl_eaudeqn.trainers.recipe`)."""

from .trainers import recipe as _home
from .trainers.recipe import *  # noqa: F403 - the same objects, whatever the home module exports

__all__ = list(_home.__all__)
