"""Lightning training: the only package that imports Lightning.

:mod:`.base` holds what every online recipe shares (env-step budget, logging,
evaluation, checkpoint extras); :mod:`.dqn` and :mod:`.sac` are the DQN-family
and SAC modules; :mod:`.callbacks` runs the updater after every gradient
step; :mod:`.progress` is the env-step progress bar; :mod:`.control` trains
the small control and MinAtar tasks; :mod:`.reliability` holds the
checkpoint, graceful-stop and NaN-guard callbacks.

Example:
    >>> from torchrl_eaudeqn.trainers import DQNLightningModule, OnlineRLModule
    >>> issubclass(DQNLightningModule, OnlineRLModule)
    True
"""

from .base import OnlineRLModule
from .callbacks import SAC_MEMBER_LOSS_KEYS, TargetSelectionCallback
from .control import ControlDQNModule, regression_trace
from .dqn import DQNLightningModule, EnsembleDQNModule
from .progress import EnvStepProgressBar
from .reliability import EnvStepCheckpoint, GracefulStop, NonFiniteError, NonFiniteGuard
from .sac import SACLightningModule

__all__ = [
    "SAC_MEMBER_LOSS_KEYS",
    "ControlDQNModule",
    "DQNLightningModule",
    "EnsembleDQNModule",
    "EnvStepCheckpoint",
    "EnvStepProgressBar",
    "GracefulStop",
    "NonFiniteError",
    "NonFiniteGuard",
    "OnlineRLModule",
    "SACLightningModule",
    "TargetSelectionCallback",
    "regression_trace",
]
