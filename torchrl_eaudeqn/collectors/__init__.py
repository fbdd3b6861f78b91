"""Collectors: the lean Atari collector (Gymnasium env, worker thread) and the epsilon schedule.

The SAC and control recipes collect with TorchRL's own ``Collector``;
:class:`AtariCollector` exists for speed on the Atari hot path (no
TensorDict per step, acting overlapped with the learner's step).

Example:
    >>> from torchrl_eaudeqn.collectors import linear_epsilon
    >>> linear_epsilon(150, start=1.0, end=0.1, decay_steps=100, warmup=100)
    0.55
"""

from ..modules.ensemble import aliased_member_network
from .atari import AtariCollector, CollectedSteps, linear_epsilon

__all__ = ["AtariCollector", "CollectedSteps", "aliased_member_network", "linear_epsilon"]
