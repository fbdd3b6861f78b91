"""Losses, in TorchRL's ``LossModule`` conventions: EauDeQN (DQN) and EauDeSAC.

Both compute one shared bootstrap target and every member's loss against it
(docs/algorithm.md); :mod:`.common` holds their TorchRL plumbing.

Example:
    >>> from torchrl_eaudeqn.objectives import EauDeQNLoss
    >>> EauDeQNLoss.__module__
    'torchrl_eaudeqn.objectives.dqn'
"""

from .common import BootstrapLossBase
from .dqn import EauDeQNLoss
from .sac import OPTIMIZED_LOSS_KEYS, EauDeSACLoss

__all__ = ["OPTIMIZED_LOSS_KEYS", "BootstrapLossBase", "EauDeQNLoss", "EauDeSACLoss"]
