"""EauDeSAC's components, by their old path; they live beside DQN's now.

Networks in :mod:`torchrl_eaudeqn.modules.sac`, the loss in
:mod:`torchrl_eaudeqn.objectives.sac`, the updaters in
:mod:`torchrl_eaudeqn.updaters.sac`.
"""

from .modules.sac import (
    MaskedEnsembleTanhGaussianActor,
    MaskedEnsembleTwinQ,
    TanhDeterministicPolicy,
    TwinQNetwork,
)
from .objectives.sac import OPTIMIZED_LOSS_KEYS, EauDeSACLoss
from .updaters.sac import PolyPruneSACUpdater, SACTargetSelectionUpdater

__all__ = [
    "OPTIMIZED_LOSS_KEYS",
    "EauDeSACLoss",
    "MaskedEnsembleTanhGaussianActor",
    "MaskedEnsembleTwinQ",
    "PolyPruneSACUpdater",
    "SACTargetSelectionUpdater",
    "TanhDeterministicPolicy",
    "TwinQNetwork",
]
