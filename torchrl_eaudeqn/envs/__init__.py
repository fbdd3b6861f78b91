"""Environment factories (Dopamine-style Atari, MuJoCo, small discrete tasks) and evaluation play.

Each returns a TorchRL :class:`~torchrl.envs.EnvBase` (or, for the lean Atari
path, a Gymnasium env) and validates every argument *before* anything is
built, so a typo fails in milliseconds with a one-line message naming it.
:mod:`.atari` documents the keys an Atari env writes.

Example:
    >>> from torchrl_eaudeqn.envs import make_control_env
    >>> make_control_env("CartPole-v1", seed=0).action_spec.shape
    torch.Size([2])
"""

from ..tasks import action_space_kind
from .atari import (
    SCORE_REWARD_KEY,
    atari_game_ids,
    make_atari_env,
    make_atari_gym_env,
    resolve_atari_game,
)
from .control import make_control_env, make_minatar_env, make_task_env, make_task_gym_env
from .evaluation import (
    ContinuousTask,
    GymnasiumGame,
    TorchRLGame,
    play_actor,
    play_q_network,
    save_video,
)
from .mujoco import make_continuous_env, resolve_continuous_env

__all__ = [
    "SCORE_REWARD_KEY",
    "ContinuousTask",
    "GymnasiumGame",
    "TorchRLGame",
    "action_space_kind",
    "atari_game_ids",
    "make_atari_env",
    "make_atari_gym_env",
    "make_continuous_env",
    "make_control_env",
    "make_minatar_env",
    "make_task_env",
    "make_task_gym_env",
    "play_actor",
    "play_q_network",
    "resolve_atari_game",
    "resolve_continuous_env",
    "save_video",
]
