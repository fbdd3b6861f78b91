"""Lightning training for EauDeQN and EauDeSAC, by its old path.

The modules live in :mod:`torchrl_eaudeqn.trainers`, the metric buffer in
:mod:`torchrl_eaudeqn.tracking.metrics`, the updater builders in
:mod:`torchrl_eaudeqn.updaters.builders`.
"""

from .tracking.metrics import FLUSHED_TAG, MAX_PENDING, MLflowMetrics, MLflowUnavailable
from .trainers.base import OnlineRLModule
from .trainers.callbacks import SAC_MEMBER_LOSS_KEYS, TargetSelectionCallback
from .trainers.dqn import DQNLightningModule, EnsembleDQNModule
from .trainers.progress import EnvStepProgressBar
from .trainers.sac import SACLightningModule
from .updaters.builders import build_sac_updater, build_updater

__all__ = [
    "FLUSHED_TAG",
    "MAX_PENDING",
    "SAC_MEMBER_LOSS_KEYS",
    "DQNLightningModule",
    "EnsembleDQNModule",
    "EnvStepProgressBar",
    "MLflowMetrics",
    "MLflowUnavailable",
    "OnlineRLModule",
    "SACLightningModule",
    "TargetSelectionCallback",
    "build_sac_updater",
    "build_updater",
]
