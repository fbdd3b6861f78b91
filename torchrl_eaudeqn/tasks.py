"""Task names checked against Gymnasium and ALE, without torch or TorchRL.

The recipes check ``env=`` here before anything heavy is
imported; :mod:`torchrl_eaudeqn.envs` builds the TorchRL envs and re-exports
these functions.

Example:
    >>> resolve_atari_game("pong"), action_space_kind("Pendulum-v1")
    ('Pong', 'continuous')
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "action_space_kind",
    "atari_game_ids",
    "probe_spaces",
    "resolve_atari_game",
    "resolve_continuous_env",
]


# --------------------------------------------------------------------------- probes
@contextlib.contextmanager
def _quiet_mujoco(env_id: str) -> Iterator[None]:
    """Drop MuJoCo's warnings while a probe env is built.

    Its default handler prints them and appends them to ``MUJOCO_LOG.TXT`` in
    the working directory: a check must write nothing, and the model
    compiler's deprecation notes say nothing about the user's input.
    """
    import gymnasium as gym

    entry = str(getattr(gym.spec(env_id), "entry_point", ""))
    if "mujoco" not in entry:
        yield
        return
    import mujoco

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


@functools.lru_cache(maxsize=32)
def probe_spaces(env_id: str) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` of a registered Gymnasium id (built once, cached).

    Example:
        >>> probe_spaces("CartPole-v1")[1]
        Discrete(2)
    """
    import gymnasium as gym

    with _quiet_mujoco(env_id):
        probe = gym.make(env_id)
        try:
            return probe.observation_space, probe.action_space
        finally:
            probe.close()


# --------------------------------------------------------------------------- ALE games
def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.lru_cache(maxsize=1)
def _ale_games() -> dict[str, tuple[str, str]]:
    """Normalised name -> (CamelCase name, ALE ROM id) for every ALE v5 game."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    rom_ids = set(ale_py.roms.get_all_rom_ids())
    games = {}
    for env_id, spec in gym.registry.items():
        match = re.fullmatch(r"ALE/(\w+)-v5", env_id)
        rom = (spec.kwargs or {}).get("game")
        # The ROM list also holds multiplayer-only games with no v5 env; skip them.
        if match and rom in rom_ids:
            games[_norm(match.group(1))] = (match.group(1), rom)
    return games


def atari_game_ids() -> list[str]:
    """Names of the Atari games :func:`make_atari_env` accepts (ALE v5 with a ROM).

    Returns:
        Sorted CamelCase names, as in ``ALE/<Name>-v5``.

    Example:
        >>> ids = atari_game_ids()
        >>> "Pong" in ids and "MsPacman" in ids
        True
    """
    return sorted(name for name, _ in _ale_games().values())


def _resolve_game(game: object) -> tuple[str, str]:
    """``"Pong"``, ``"pong"``, ``"ALE/Pong-v5"`` -> (``"Pong"``, ``"pong"``)."""
    if not isinstance(game, str) or not game:
        raise ValueError(f"game must be a non-empty str such as 'Pong', got {game!r}")
    name = game
    if name.startswith("ALE/"):
        match = re.fullmatch(r"ALE/(\w+)-v(\d+)", name)
        if match is None or match.group(2) != "5":
            raise ValueError(f"{game!r}: only ALE v5 ids ('ALE/<Game>-v5') are supported")
        name = match.group(1)
    games = _ale_games()
    key = _norm(name)
    if key not in games:
        close = difflib.get_close_matches(key, list(games), n=3, cutoff=0.6)
        hint = (
            f"; did you mean {', '.join(repr(games[c][0]) for c in close)}?"
            if close
            else "; see atari_game_ids()"
        )
        raise ValueError(f"unknown Atari game {game!r}{hint}")
    return games[key]


def resolve_atari_game(game: str) -> str:
    """Check an Atari game name and return its canonical form (no env is built).

    Args:
        game: ``"Pong"``, ``"pong"``, ``"ms_pacman"`` or ``"ALE/Pong-v5"``.

    Returns:
        The CamelCase name, as listed by :func:`atari_game_ids`.

    Raises:
        ValueError: the game is unknown (the message suggests close names).

    Example:
        >>> resolve_atari_game("ALE/MsPacman-v5"), resolve_atari_game("space_invaders")
        ('MsPacman', 'SpaceInvaders')
    """
    return _resolve_game(game)[0]


# --------------------------------------------------------------------------- classic control
def _check_control_id(env_id: object) -> None:
    import gymnasium as gym

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty str such as 'CartPole-v1', got {env_id!r}")
    if env_id.startswith("ALE/"):
        raise ValueError(f"env_id={env_id!r} is an Atari game: use make_atari_env")
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown Gymnasium env_id {env_id!r}{hint}")


# --------------------------------------------------------------------------- continuous
def action_space_kind(env_id: str) -> str:
    """``"discrete"``, ``"continuous"`` or ``"other"``: the action space of a Gymnasium id.

    Builds the bare Gymnasium env once to read its action space (MuJoCo
    loads its model in well under a second). ``ALE/...`` ids are
    ``"discrete"`` without building anything.

    Args:
        env_id: a registered Gymnasium id.

    Raises:
        ValueError: the id is not registered.

    Example:
        >>> action_space_kind("Pendulum-v1"), action_space_kind("CartPole-v1")
        ('continuous', 'discrete')
    """
    import gymnasium as gym

    if isinstance(env_id, str) and env_id.startswith("ALE/"):
        return "discrete"
    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise ValueError(f"unknown Gymnasium env id {env_id!r}")
    space = probe_spaces(env_id)[1]
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return "discrete"
    if isinstance(space, gym.spaces.Box) and space.dtype.kind == "f":
        return "continuous"
    return "other"


def resolve_continuous_env(env_id: str) -> str:
    """Check a continuous-control task id (e.g. ``"Hopper-v5"``) and return it.

    Args:
        env_id: a registered Gymnasium id with a ``Box`` action space.

    Returns:
        ``env_id`` unchanged.

    Raises:
        ValueError: unknown id (with close matches), an Atari game, or an env
            whose actions are not continuous (SAC needs a ``Box``); one line.

    Example:
        >>> resolve_continuous_env("Pendulum-v1")
        'Pendulum-v1'
        >>> try:
        ...     resolve_continuous_env("CartPole-v1")
        ... except ValueError as err:
        ...     print(err)
        env id 'CartPole-v1' has discrete actions; SAC needs continuous ones: use the DQN recipe
    """
    import gymnasium as gym

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env id must be a non-empty str such as 'Hopper-v5', got {env_id!r}")
    if env_id.startswith("ALE/") or env_id not in gym.registry:
        atari = False
        try:
            _resolve_game(env_id)
            atari = True
        except (ValueError, ImportError):
            pass
        if atari:
            raise ValueError(
                f"env id {env_id!r} is an Atari game with discrete actions; use the DQN recipe "
                "(recipes/atari_dqn.py)"
            )
        ids = [k for k in gym.registry if not k.startswith("ALE/")]
        close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown Gymnasium env id {env_id!r}{hint}")
    kind = action_space_kind(env_id)
    if kind == "discrete":
        raise ValueError(
            f"env id {env_id!r} has discrete actions; SAC needs continuous ones: use the DQN recipe"
        )
    if kind != "continuous":
        raise ValueError(f"env id {env_id!r}: SAC needs a continuous (float Box) action space")
    return env_id
