"""Continuous control (MuJoCo via Gymnasium) as TorchRL envs."""

from __future__ import annotations

import functools

import torch
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    EnvBase,
    GymEnv,
    RewardSum,
    StepCounter,
)

from ..console import mujoco_compiler_warnings_silenced
from ..tasks import (  # gymnasium-level checks, importable without torch
    resolve_continuous_env,
)
from .common import _batched, _check_bool, _check_device, _check_int

__all__ = ["make_continuous_env", "resolve_continuous_env"]


def _continuous_base(env_id: str, max_episode_steps: int | None, device: torch.device) -> EnvBase:
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    with mujoco_compiler_warnings_silenced():  # Gymnasium's own MuJoCo model files
        return GymEnv(env_id, device=device, **kwargs)


def make_continuous_env(
    env_id: str,
    *,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    num_envs: int = 1,
    device: str | torch.device = "cpu",
    parallel: bool | None = None,
) -> EnvBase:
    """A continuous-control task (MuJoCo ``HalfCheetah-v5``, ``Hopper-v5``, ...) for SAC.

    TorchRL's :class:`~torchrl.envs.GymEnv` with :class:`~torchrl.envs.DoubleToFloat`
    (MuJoCo observations are float64; the networks and the replay use
    float32), :class:`~torchrl.envs.RewardSum` (``episode_reward``) and
    :class:`~torchrl.envs.StepCounter` (``step_count``). ``truncated`` marks
    the step cap, ``terminated`` a real end (a fall): SAC bootstraps through
    the first, not the second.

    Args:
        env_id: a registered Gymnasium id with a ``Box`` action space; see
            :func:`resolve_continuous_env`.
        seed: env seed (workers get ``seed + i``).
        max_episode_steps: overrides the registered step cap; ``None`` keeps it.
        num_envs: > 1 returns a batched env of that many copies.
        device: device of the returned tensors.
        parallel: as in :func:`make_atari_env`.

    Returns:
        A TorchRL env; batch size ``[]`` or ``[num_envs]``.

    Raises:
        ValueError: unknown id, discrete actions, or another invalid argument.

    Example:
        >>> env = make_continuous_env("HalfCheetah-v5", seed=0, max_episode_steps=3)
        >>> td = env.rollout(5, break_when_any_done=False)
        >>> td["observation"].dtype, td["action"].shape, td["next", "step_count"][:, 0].tolist()
        (torch.float32, torch.Size([5, 6]), [1, 2, 3, 1, 2])
    """
    resolve_continuous_env(env_id)
    _check_int("seed", seed, minimum=0, allow_none=True)
    _check_int("max_episode_steps", max_episode_steps, minimum=1, allow_none=True)
    _check_int("num_envs", num_envs, minimum=1)
    _check_bool("parallel", parallel, allow_none=True)
    dev = _check_device(device)
    base = functools.partial(_continuous_base, env_id, max_episode_steps)
    transforms = Compose(DoubleToFloat(), RewardSum(), StepCounter())
    env = _batched(base, transforms, num_envs, parallel, dev)
    if seed is not None:
        env.set_seed(seed)
    return env
