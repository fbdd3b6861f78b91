"""Playing a trained network: the evaluation games, the episode loops and videos.

What ``recipes/evaluate.py`` plays a registered model on, usable without it:

* :class:`TorchRLGame` (the training env, :func:`~torchrl_eaudeqn.envs.make_atari_env`)
  and :class:`GymnasiumGame` (:func:`~torchrl_eaudeqn.envs.make_atari_gym_env`
  with 4 stacked frames, no TorchRL), which give the same observations;
* :class:`ContinuousTask`: a Gymnasium continuous-control task with float32
  observations, as SAC trains on it;
* :func:`play_q_network` (epsilon-greedy), :func:`play_actor` (the mean
  action) and :func:`save_video`.

Each game has ``reset() -> obs``, ``step(action) -> (obs, reward, terminated,
truncated)``, ``frame(obs)`` (an RGB frame for the video) and ``close()``.

Example:
    >>> import torch
    >>> game = GymnasiumGame("Pong", seed=0, max_steps=5, record=False)
    >>> scores, steps, truncated, _ = play_q_network(
    ...     lambda obs: torch.zeros(1, game.n_actions), game, 1, 0.0, 0, 0, echo=False)
    >>> steps, truncated
    ([5], [True])
    >>> game.close()
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atari import SCORE_REWARD_KEY, make_atari_env, make_atari_gym_env

__all__ = [
    "ContinuousTask",
    "GymnasiumGame",
    "TorchRLGame",
    "play_actor",
    "play_q_network",
    "save_video",
]


class TorchRLGame:
    """The training env (``make_atari_env``) behind a small reset/step interface.

    Args:
        game: the Atari game (``"Pong"``).
        seed: the env's seed.
        max_steps: agent-step cap per episode.
        record: keep the emulator's RGB screen reachable for a video.

    Example:
        >>> game = TorchRLGame("Pong", seed=0, max_steps=10, record=False)
        >>> tuple(game.reset().shape), game.n_actions
        ((4, 84, 84), 6)
        >>> game.close()
    """

    backend = "torchrl"

    def __init__(self, game: str, seed: int, max_steps: int, record: bool) -> None:
        from torchrl.envs.utils import step_mdp

        self._step_mdp = step_mdp
        self.env = make_atari_env(
            game, seed=seed, max_episode_steps=max_steps, categorical_action_encoding=True
        )
        self.n_actions = int(self.env.action_spec.space.n)
        # The TorchRL env exposes no renderer; the ALE inside it can still give its
        # RGB screen. Without it, the video falls back to the observation frames.
        self._ale = None
        if record:
            try:
                self._ale = self.env.base_env._env.unwrapped.ale
            except AttributeError:
                self._ale = None
        self.video_source = (
            "the emulator's RGB screen"
            if self._ale is not None
            else "the last 84x84 frame of each observation (the env exposes no RGB renderer)"
        )
        self._td = None

    def reset(self) -> torch.Tensor:
        self._td = self.env.reset()
        return self._td["observation"]

    def step(self, action: int) -> tuple[torch.Tensor, float, bool, bool]:
        self._td["action"] = torch.tensor(action)
        td = self.env.step(self._td)
        nxt = td["next"]
        out = (
            nxt["observation"],
            float(nxt[SCORE_REWARD_KEY]),
            bool(nxt["terminated"]),
            bool(nxt["truncated"]),
        )
        self._td = self._step_mdp(td)
        return out

    def frame(self, observation: torch.Tensor) -> np.ndarray:
        if self._ale is not None:
            return self._ale.getScreenRGB()
        gray = observation[-1].numpy()
        return np.repeat(gray[..., None], 3, axis=-1)

    def close(self) -> None:
        self.env.close()


class GymnasiumGame:
    """Plain Gymnasium (``make_atari_gym_env``) with 4 zero-padded stacked frames, no TorchRL.

    Args:
        game: the Atari game (``"Pong"``).
        seed: the seed of the first reset (later episodes continue the RNG).
        max_steps: agent-step cap per episode.
        record: render the emulator's RGB screen for a video.

    Example:
        >>> game = GymnasiumGame("Pong", seed=0, max_steps=10, record=False)
        >>> tuple(game.reset().shape), game.n_actions
        ((4, 84, 84), 6)
        >>> game.close()
    """

    backend = "gymnasium"

    def __init__(self, game: str, seed: int, max_steps: int, record: bool) -> None:
        from gymnasium.wrappers import FrameStackObservation

        env = make_atari_gym_env(
            game, max_episode_steps=max_steps, render_mode="rgb_array" if record else None
        )
        # Zero padding at the episode start, as TorchRL's CatFrames and Dopamine.
        self.env = FrameStackObservation(env, stack_size=4, padding_type="zero")
        self.n_actions = int(self.env.action_space.n)
        self.video_source = "the emulator's RGB screen (render_mode='rgb_array')"
        self._seed: int | None = seed

    def reset(self) -> torch.Tensor:
        # Seeded once, like TorchRL's set_seed: later episodes continue the RNG.
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        return torch.as_tensor(obs)

    def step(self, action: int) -> tuple[torch.Tensor, float, bool, bool]:
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return torch.as_tensor(obs), float(reward), bool(terminated), bool(truncated)

    def frame(self, observation: torch.Tensor) -> np.ndarray:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


class ContinuousTask:
    """A Gymnasium continuous-control task with float32 observations (as in training).

    Args:
        env_id: the Gymnasium id (``"Hopper-v5"``).
        seed: the seed of the first reset (later episodes continue the RNG).
        max_steps: step cap per episode (``None``: the task's own).
        record: render offscreen for a video (``MUJOCO_GL=egl`` without a display).

    Example:
        >>> task = ContinuousTask("Pendulum-v1", seed=0, max_steps=3, record=False)
        >>> returns, steps, _ = play_actor(lambda obs: torch.zeros(1, 1), task, 1, 0, echo=False)
        >>> steps, task.obs_dim, task.action_dim
        ([3], 3, 1)
        >>> task.close()
    """

    backend = "gymnasium"

    def __init__(self, env_id: str, seed: int, max_steps: int | None, record: bool) -> None:
        import gymnasium as gym

        if record and "DISPLAY" not in os.environ:
            # MuJoCo renders offscreen through EGL when there is no display.
            os.environ.setdefault("MUJOCO_GL", "egl")
        kwargs = {} if max_steps is None else {"max_episode_steps": max_steps}
        self.env = gym.make(env_id, render_mode="rgb_array" if record else None, **kwargs)
        self.env_id = env_id
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        self.action_dim = int(np.prod(self.env.action_space.shape))
        self.max_steps = self.env.spec.max_episode_steps
        self.video_source = "MuJoCo's offscreen renderer (render_mode='rgb_array')"
        self._seed: int | None = seed

    def reset(self) -> torch.Tensor:
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        return torch.as_tensor(obs, dtype=torch.float32)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, float, bool, bool]:
        obs, reward, terminated, truncated, _ = self.env.step(action.numpy())
        return torch.as_tensor(obs, dtype=torch.float32), float(reward), terminated, truncated

    def frame(self, observation: torch.Tensor) -> np.ndarray:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def play_q_network(
    model: Callable[[torch.Tensor], torch.Tensor],
    game: Any,
    episodes: int,
    epsilon: float,
    seed: int,
    video_frames: int,
    *,
    echo: bool = True,
) -> tuple[list[float], list[int], list[bool], list[Any]]:
    """Epsilon-greedy episodes: (scores, steps, truncated flags, frames of episode 1).

    ``echo`` prints one line per episode.
    """
    rng = torch.Generator().manual_seed(seed)
    scores, steps, truncs, frames = [], [], [], []
    for episode in range(episodes):
        obs = game.reset()
        record = episode == 0 and video_frames > 0
        score, n, done, truncated, terminated = 0.0, 0, False, False, False
        if record:
            frames.append(game.frame(obs))
        while not done:
            if float(torch.rand((), generator=rng)) < epsilon:
                action = int(torch.randint(game.n_actions, (), generator=rng))
            else:
                with torch.no_grad():
                    action = int(model(obs.unsqueeze(0)).argmax(-1))
            obs, reward, terminated, truncated = game.step(action)
            score += reward
            n += 1
            done = terminated or truncated
            if record and len(frames) < video_frames:
                frames.append(game.frame(obs))
        scores.append(score)
        steps.append(n)
        truncs.append(truncated and not terminated)
        if echo:
            end = "step cap" if truncs[-1] else "game over"
            print(f"episode {episode + 1}/{episodes}: score {score:g} in {n} steps ({end})")
    return scores, steps, truncs, frames


def play_actor(
    model: Callable[[torch.Tensor], torch.Tensor],
    task: ContinuousTask,
    episodes: int,
    video_frames: int,
    *,
    echo: bool = True,
) -> tuple[list[float], list[int], list[Any]]:
    """Deterministic episodes of an actor (obs -> action): (returns, steps, frames of episode 1)."""
    returns, steps, frames = [], [], []
    for episode in range(episodes):
        obs = task.reset()
        record = episode == 0 and video_frames > 0
        total, n, done, terminated = 0.0, 0, False, False
        if record:
            frames.append(task.frame(obs))
        while not done:
            with torch.no_grad():
                action = model(obs.unsqueeze(0))[0]
            obs, reward, terminated, truncated = task.step(action)
            total += reward
            n += 1
            done = terminated or truncated
            if record and len(frames) < video_frames:
                frames.append(task.frame(obs))
        returns.append(total)
        steps.append(n)
        if echo:
            end = "terminated" if terminated else "step cap"
            print(f"episode {episode + 1}/{episodes}: return {total:.1f} in {n} steps ({end})")
    return returns, steps, frames


def save_video(path: str | Path, frames: list[Any], fps: int) -> None:
    """Write ``frames`` (RGB arrays) to ``path`` (``.gif`` or ``.mp4``) at ``fps``."""
    import imageio.v2 as imageio

    path = Path(path)
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
    else:
        # macro_block_size=1 keeps the 210x160 ALE screen unpadded.
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
