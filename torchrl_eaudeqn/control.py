"""EauDeQN / PolyPruneQN / DQN on small discrete tasks, by its old path.

The envs live in :mod:`torchrl_eaudeqn.envs.control`, the MinAtar network in
:mod:`torchrl_eaudeqn.modules.dqn`, the Lightning module and the regression
trace in :mod:`torchrl_eaudeqn.trainers.control`.
"""

from .config import MINATAR_GAMES, ControlConfig
from .envs.control import make_minatar_env, make_task_env
from .modules.dqn import minatar_cnn
from .trainers.control import ControlDQNModule, regression_trace

__all__ = [
    "MINATAR_GAMES",
    "ControlConfig",
    "ControlDQNModule",
    "make_minatar_env",
    "make_task_env",
    "minatar_cnn",
    "regression_trace",
]
