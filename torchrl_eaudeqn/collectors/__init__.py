"""Collectors: the lean Atari and small-task collectors and the epsilon schedule.

The SAC recipe collects with TorchRL's own ``Collector`` (as the Atari and
control recipes do with ``collector=torchrl``); :class:`AtariCollector` and
:class:`ControlCollector` exist for speed on the DQN hot paths (no
TensorDict per step; Atari's acting overlaps the learner's step).

Example:
    >>> from torchrl_eaudeqn.collectors import linear_epsilon
    >>> linear_epsilon(150, start=1.0, end=0.1, decay_steps=100, warmup=100)
    0.55
"""

from ..modules.ensemble import aliased_member_network
from .atari import AtariCollector
from .common import BackgroundCollection, CollectedSteps, linear_epsilon
from .control import ControlCollector

__all__ = [
    "AtariCollector",
    "BackgroundCollection",
    "CollectedSteps",
    "ControlCollector",
    "aliased_member_network",
    "linear_epsilon",
]
