"""Small discrete tasks: classic control (Gymnasium) and MinAtar, and the control recipe's env."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import torch
from torchrl.envs import (
    Compose,
    EnvBase,
    GymEnv,
    GymWrapper,
    RewardSum,
    StepCounter,
    TransformedEnv,
)

from ..config import MINATAR_GAMES, ControlConfig  # defined there: no torch needed to validate
from ..tasks import (  # gymnasium-level checks, importable without torch
    _check_control_id,
)
from .common import _batched, _check_bool, _check_device, _check_int

__all__ = ["make_control_env", "make_minatar_env", "make_task_env", "make_task_gym_env"]


def _control_base(
    env_id: str,
    max_episode_steps: int | None,
    categorical_action_encoding: bool,
    device: torch.device,
) -> EnvBase:
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return GymEnv(
        env_id,
        categorical_action_encoding=categorical_action_encoding,
        device=device,
        **kwargs,
    )


def make_control_env(
    env_id: str,
    *,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    num_envs: int = 1,
    device: str | torch.device = "cpu",
    categorical_action_encoding: bool = False,
    parallel: bool | None = None,
) -> EnvBase:
    """A small Gymnasium task with a discrete action space (e.g. ``CartPole-v1``).

    Adds ``episode_reward`` (:class:`~torchrl.envs.RewardSum`) and
    ``step_count`` (:class:`~torchrl.envs.StepCounter`).

    Args:
        env_id: a registered Gymnasium id with a ``Discrete`` action space.
        seed: env seed (workers get ``seed + i``).
        max_episode_steps: overrides the registered step cap; ``None`` keeps it.
        num_envs: > 1 returns a batched env of that many copies.
        device: device of the returned tensors.
        categorical_action_encoding: actions as indices instead of one-hot.
        parallel: as in :func:`make_atari_env`.

    Returns:
        A TorchRL env; batch size ``[]`` or ``[num_envs]``.

    Raises:
        ValueError: unknown ``env_id``, a non-discrete action space, or another
            invalid argument.

    Example:
        >>> env = make_control_env("CartPole-v1", seed=0)
        >>> td = env.rollout(5)
        >>> td["observation"].shape, td["action"].shape
        (torch.Size([5, 4]), torch.Size([5, 2]))
    """
    import gymnasium as gym

    _check_control_id(env_id)
    _check_int("seed", seed, minimum=0, allow_none=True)
    _check_int("max_episode_steps", max_episode_steps, minimum=1, allow_none=True)
    _check_int("num_envs", num_envs, minimum=1)
    _check_bool("categorical_action_encoding", categorical_action_encoding)
    _check_bool("parallel", parallel, allow_none=True)
    dev = _check_device(device)

    # The action space is only known once the env exists; a bare gym env is cheap.
    probe = gym.make(env_id)
    try:
        space = probe.action_space
    finally:
        probe.close()
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(
            f"env_id={env_id!r} has a {type(space).__name__} action space; a discrete action "
            "space (gymnasium.spaces.Discrete) is required"
        )

    base = functools.partial(_control_base, env_id, max_episode_steps, categorical_action_encoding)
    env = _batched(base, Compose(RewardSum(), StepCounter()), num_envs, parallel, dev)
    if seed is not None:
        env.set_seed(seed)
    return env


# --------------------------------------------------------------------------- MinAtar
def _channels_first(env: Any) -> Any:
    """Wrap a MinAtar Gymnasium env: bool ``[10, 10, C]`` observations -> float ``[C, 10, 10]``."""
    import gymnasium as gym

    class ChannelsFirst(gym.ObservationWrapper):
        def __init__(self, env: Any) -> None:
            super().__init__(env)
            h, w, c = env.observation_space.shape
            self.observation_space = gym.spaces.Box(0.0, 1.0, (c, h, w), dtype=np.float32)

        def observation(self, obs: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.moveaxis(obs, -1, 0), dtype=np.float32)

    return ChannelsFirst(env)


def _minatar_gym(
    game: str, max_episode_steps: int | None, sticky_actions: float, full_actions: bool = False
) -> Any:
    import gymnasium as gym
    from minatar.gym import register_envs

    if game not in MINATAR_GAMES:
        raise ValueError(f"game must be one of {MINATAR_GAMES}, got {game!r}")
    # -v1: the game's minimal action set; -v0: all six (the MinAtar paper's DQN).
    env_id = f"MinAtar/{game.title().replace('_', '')}-v{0 if full_actions else 1}"
    if env_id not in gym.registry:
        register_envs()
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    with warnings.catch_warnings():
        # Gymnasium calls -v0 "out of date"; here it is the full action set, chosen.
        warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)
        env = gym.make(env_id, sticky_action_prob=sticky_actions, **kwargs)
    return _channels_first(env)


def make_minatar_env(
    game: str,
    *,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    sticky_actions: float = 0.1,
    full_actions: bool = False,
) -> EnvBase:
    """A MinAtar game as a TorchRL env: observation float ``[C, 10, 10]``, one-hot actions.

    Uses the minimal action set (``MinAtar/<Game>-v1``; ``full_actions=True``:
    all six actions, ``-v0``, as the MinAtar paper's DQN) and MinAtar's own
    sticky actions (0.1, the package default). Adds ``episode_reward``
    (:class:`~torchrl.envs.RewardSum`) and ``step_count``.

    Args:
        game: one of :data:`MINATAR_GAMES` (``"breakout"``, ...).
        seed: env seed.
        max_episode_steps: a step cap (``None``: none, as MinAtar).
        sticky_actions: probability that the previous action repeats.
        full_actions: all six actions instead of the game's minimal set.

    Example:
        >>> env = make_minatar_env("breakout", seed=0)
        >>> td = env.rollout(3)
        >>> td["observation"].shape, td["observation"].dtype, td["action"].shape
        (torch.Size([3, 4, 10, 10]), torch.float32, torch.Size([3, 3]))
    """
    genv = _minatar_gym(game, max_episode_steps, sticky_actions, full_actions)
    env = TransformedEnv(GymWrapper(genv), Compose(RewardSum(), StepCounter()))
    if seed is not None:
        env.set_seed(seed)
    return env


def make_task_env(cfg: ControlConfig, seed: int, eval: bool = False) -> EnvBase:
    """The env of ``cfg.env`` (classic control or MinAtar), one-hot actions.

    Example:
        >>> make_task_env(ControlConfig(env="CartPole-v1"), seed=0).action_spec.shape
        torch.Size([2])
    """
    cap = cfg.eval_max_steps if eval else (cfg.max_episode_steps or None)
    if cfg.env.startswith("minatar:"):
        return make_minatar_env(
            cfg.task_name, seed=seed, max_episode_steps=cap, full_actions=cfg.action_set == "full"
        )
    return make_control_env(cfg.env, seed=seed, max_episode_steps=cap)


def make_task_gym_env(cfg: ControlConfig, eval: bool = False) -> Any:
    """The Gymnasium env under :func:`make_task_env`: what the lean control collector steps.

    The same task, step cap and (MinAtar) channels-first float observations
    and sticky actions as :func:`make_task_env`, without TorchRL's wrapper and
    transforms; actions are indices. Seed it through ``reset(seed=...)``.

    Example:
        >>> env = make_task_gym_env(ControlConfig(env="minatar:breakout"))
        >>> obs, _ = env.reset(seed=0)
        >>> obs.shape, obs.dtype, env.action_space.n
        ((4, 10, 10), dtype('float32'), np.int64(3))
    """
    import gymnasium as gym

    cap = cfg.eval_max_steps if eval else (cfg.max_episode_steps or None)
    if cfg.env.startswith("minatar:"):
        return _minatar_gym(cfg.task_name, cap, 0.1, cfg.action_set == "full")
    _check_control_id(cfg.env)
    return gym.make(cfg.env, **({} if cap is None else {"max_episode_steps": cap}))
