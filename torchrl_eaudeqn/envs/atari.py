"""Dopamine-style Atari envs: TorchRL's (:func:`make_atari_env`) and a lean Gymnasium one.

Both factories return a TorchRL :class:`~torchrl.envs.EnvBase` whose outputs
any TorchRL collector, loss or replay buffer reads unchanged. Every argument is
validated *before* anything is built, so a typo fails in milliseconds with a
one-line message that names the argument.

Keys written by :func:`make_atari_env` (per step, under ``"next"``):

* ``observation``: ``uint8`` ``[frame_stack, 84, 84]``; frames before the
  episode start are zeros (Dopamine's convention, and the one
  :class:`~torchrl_eaudeqn.replay.FrameReplayBuffer` rebuilds by default);
* ``reward``: the learning reward, clipped to ``[-1, 1]`` when ``clip_rewards``;
* ``score_reward``: the raw game reward, for reporting game scores;
* ``episode_reward`` / ``episode_score``: running sums of the two over the episode;
* ``step_count``: agent steps since the episode started;
* ``done``, ``terminated``, ``truncated``: ``truncated`` marks the step cap.

"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torchrl.envs import (
    CatFrames,
    Compose,
    EndOfLifeTransform,
    EnvBase,
    GymWrapper,
    RenameTransform,
    RewardClipping,
    RewardSum,
    StepCounter,
    UnsqueezeTransform,
)

from ..tasks import (  # gymnasium-level checks, importable without torch
    _resolve_game,
    atari_game_ids,
    resolve_atari_game,
)
from .common import _batched, _check_bool, _check_device, _check_int

__all__ = [
    "SCORE_REWARD_KEY",
    "atari_game_ids",
    "make_atari_env",
    "make_atari_gym_env",
    "resolve_atari_game",
]


#: Key of the raw (unclipped) game reward written by :func:`make_atari_env`.
SCORE_REWARD_KEY = "score_reward"


def _check_rom(name: str, rom: str) -> None:
    from ale_py import roms

    try:
        path = roms.get_rom_path(rom)
    except OSError as err:  # missing file or directory, or a hash mismatch
        raise FileNotFoundError(
            f"ROM for Atari game {name!r} ({rom}.bin) is not usable: {err}. ale-py >= 0.9 "
            "ships the ROMs; reinstall ale-py or fix ALE_ROMS_DIR"
        ) from None
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"ROM for Atari game {name!r} ({rom}.bin) not found; reinstall ale-py or fix "
            "ALE_ROMS_DIR"
        )


# --------------------------------------------------------------------------- builders
def _atari_gym_env(
    name: str,
    frame_skip: int,
    sticky_actions: float,
    max_episode_steps: int | None,
    noop_max: int,
    render_mode: str | None = None,
):
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, TimeLimit

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{name}-v5",
        frameskip=1,  # AtariPreprocessing skips frames itself, with the max-pool
        repeat_action_probability=float(sticky_actions),
        full_action_space=False,
        # v5 stops at 108k emulator frames; the cap below counts agent steps instead.
        max_num_frames_per_episode=0,
        max_episode_steps=None,
        # The wrapper reads the screen from the ALE itself, so a grayscale
        # observation of the base env only saves an unused RGB copy per frame.
        obs_type="grayscale",
        render_mode=render_mode,
    )
    env = AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=84,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    if max_episode_steps is not None:
        env = TimeLimit(env, max_episode_steps=max_episode_steps)
    return env


def _atari_base(
    name: str,
    frame_skip: int,
    sticky_actions: float,
    max_episode_steps: int | None,
    noop_max: int,
    categorical_action_encoding: bool,
    device: torch.device,
) -> EnvBase:
    return GymWrapper(
        _atari_gym_env(name, frame_skip, sticky_actions, max_episode_steps, noop_max),
        categorical_action_encoding=categorical_action_encoding,
        device=device,
    )


def _atari_transforms(frame_stack: int, clip_rewards: bool) -> Compose:
    transforms = [
        UnsqueezeTransform(-3, in_keys=["observation"]),
        # "constant" = zero padding at episode start, as Dopamine; the replay
        # buffer rebuilds stacks the same way, so acting and learning agree.
        CatFrames(N=frame_stack, dim=-3, in_keys=["observation"], padding="constant"),
        # "reward" is immutable for a plain rename, hence the copy.
        RenameTransform(["reward"], [SCORE_REWARD_KEY], create_copy=True),
    ]
    if clip_rewards:
        transforms.append(RewardClipping(-1.0, 1.0))
    transforms += [
        RewardSum(
            in_keys=["reward", SCORE_REWARD_KEY], out_keys=["episode_reward", "episode_score"]
        ),
        StepCounter(),
    ]
    return Compose(*transforms)


def make_atari_env(
    game: str,
    *,
    seed: int | None = None,
    frame_skip: int = 4,
    sticky_actions: float = 0.25,
    frame_stack: int = 4,
    max_episode_steps: int | None = 27_000,
    clip_rewards: bool = True,
    noop_max: int = 0,
    num_envs: int = 1,
    device: str | torch.device = "cpu",
    categorical_action_encoding: bool = False,
    parallel: bool | None = None,
    end_of_life: bool = False,
) -> EnvBase:
    """Atari with Dopamine-style preprocessing (the EauDeQN paper's setting).

    ``ALE/<Game>-v5`` with sticky actions, gymnasium's ``AtariPreprocessing``
    (frame skip with a max-pool over the last two frames, 84x84 grayscale via
    OpenCV, no life-loss terminal, optional no-op starts) and a cap in *agent*
    steps; then TorchRL transforms stack frames, clip the learning reward,
    keep the raw score under ``"score_reward"`` and count returns and steps.

    Args:
        game: ``"Pong"``, ``"pong"`` or ``"ALE/Pong-v5"``; see :func:`atari_game_ids`.
        seed: seeds the emulator and sticky actions (workers get ``seed + i``).
        frame_skip: emulator frames per agent step (>= 1).
        sticky_actions: probability in ``[0, 1]`` of repeating the previous action.
        frame_stack: frames per observation (>= 1).
        max_episode_steps: agent-step cap (``truncated``); ``None`` for no cap.
        clip_rewards: clip ``"reward"`` to ``[-1, 1]`` (``"score_reward"`` stays raw).
        noop_max: up to this many no-op actions after reset (0 disables).
        num_envs: > 1 returns a batched env of that many copies.
        device: device of the returned tensors.
        categorical_action_encoding: actions as indices instead of one-hot.
        parallel: with ``num_envs > 1``, ``True`` for a :class:`~torchrl.envs.ParallelEnv`,
            ``False`` for a :class:`~torchrl.envs.SerialEnv`, ``None`` picks
            parallel only when there are more CPU cores than envs.
        end_of_life: also write ``("next", "end-of-life")``, true where a life
            was lost (TorchRL's :class:`~torchrl.envs.EndOfLifeTransform`); the
            episode goes on. For a life-loss learning terminal.

    Returns:
        A TorchRL env; batch size ``[]`` or ``[num_envs]``.

    Raises:
        ValueError: an argument is invalid or the game is unknown.
        FileNotFoundError: the game's ROM is missing.

    Example:
        >>> env = make_atari_env("Pong", seed=0)
        >>> td = env.rollout(3)
        >>> td["next", "observation"].shape, td["next", "observation"].dtype
        (torch.Size([3, 4, 84, 84]), torch.uint8)
        >>> sorted(k for k in td["next"].keys() if "reward" in k or "score" in k)
        ['episode_reward', 'episode_score', 'reward', 'score_reward']
    """
    name, rom = _check_atari_args(game, frame_skip, sticky_actions, max_episode_steps, noop_max)
    _check_int("seed", seed, minimum=0, allow_none=True)
    _check_int("frame_stack", frame_stack, minimum=1)
    _check_bool("clip_rewards", clip_rewards)
    _check_int("num_envs", num_envs, minimum=1)
    _check_bool("categorical_action_encoding", categorical_action_encoding)
    _check_bool("parallel", parallel, allow_none=True)
    _check_bool("end_of_life", end_of_life)
    dev = _check_device(device)

    base = functools.partial(
        _atari_base,
        name,
        frame_skip,
        sticky_actions,
        max_episode_steps,
        noop_max,
        categorical_action_encoding,
    )
    transforms = _atari_transforms(frame_stack, clip_rewards)
    if end_of_life:
        transforms.append(EndOfLifeTransform())
    env = _batched(base, transforms, num_envs, parallel, dev)
    if seed is not None:
        env.set_seed(seed)
    return env


def _check_atari_args(
    game: str,
    frame_skip: int,
    sticky_actions: float,
    max_episode_steps: int | None,
    noop_max: int,
) -> tuple[str, str]:
    name, rom = _resolve_game(game)
    _check_int("frame_skip", frame_skip, minimum=1)
    if (
        isinstance(sticky_actions, bool)
        or not isinstance(sticky_actions, (int, float))
        or not 0.0 <= sticky_actions <= 1.0
    ):
        raise ValueError(f"sticky_actions must be a probability in [0, 1], got {sticky_actions!r}")
    _check_int("max_episode_steps", max_episode_steps, minimum=1, allow_none=True)
    _check_int("noop_max", noop_max, minimum=0)
    _check_rom(name, rom)
    return name, rom


def make_atari_gym_env(
    game: str,
    *,
    frame_skip: int = 4,
    sticky_actions: float = 0.25,
    max_episode_steps: int | None = 27_000,
    noop_max: int = 0,
    render_mode: str | None = None,
):
    """The Gymnasium env under :func:`make_atari_env`, before the TorchRL transforms.

    ``ALE/<Game>-v5`` with sticky actions, ``AtariPreprocessing`` (frame skip
    with a max-pool over the last two frames, 84x84 grayscale, no life-loss
    terminal, optional no-op starts) and an agent-step cap. Observations are
    single ``uint8 [84, 84]`` frames and rewards are raw game rewards: frame
    stacking and reward clipping are the consumer's job
    (:class:`~torchrl_eaudeqn.collectors.AtariCollector` does them in NumPy).

    Args:
        game: ``"Pong"``, ``"pong"`` or ``"ALE/Pong-v5"``.
        frame_skip: emulator frames per agent step (>= 1).
        sticky_actions: probability in ``[0, 1]`` of repeating the previous action.
        max_episode_steps: agent-step cap (``truncated``); ``None`` for no cap.
        noop_max: up to this many no-op actions after reset (0 disables).
        render_mode: Gymnasium's ``render_mode`` (``"rgb_array"``: the emulator's
            RGB screen, for videos).

    Returns:
        A ``gymnasium.Env``.

    Example:
        >>> env = make_atari_gym_env("Pong")
        >>> frame, _ = env.reset(seed=0)
        >>> frame.shape, frame.dtype.name, int(env.action_space.n)
        ((84, 84), 'uint8', 6)
    """
    name, _ = _check_atari_args(game, frame_skip, sticky_actions, max_episode_steps, noop_max)
    return _atari_gym_env(
        name, frame_skip, sticky_actions, max_episode_steps, noop_max, render_mode=render_mode
    )
