"""Checks on a run's input before anything is built: one line naming the field, exit status 2.

:func:`parse_args` is the command line of ``recipes/atari_dqn.py``,
``recipes/mujoco_sac.py`` and ``recipes/control_dqn.py``. It reads the
config (:func:`~torchrl_eaudeqn.config.load_config`: types, bounds, finite
floats, non-empty names), then checks what no single field shows, in this
order, before any env, MLflow run or checkpoint folder exists:

1. :func:`check_budget`: a batch larger than the replay, learning that never
   starts within ``env_steps``, seeds whose offsets leave NumPy's range;
2. :func:`check_names`: the MLflow experiment, run tags, registered-model
   name and alias, by MLflow's rules;
3. the tracking URI (:func:`check_tracking_uri`) and ``device=cuda``;
4. the recipe's task (:func:`check_atari`, :func:`check_sac`,
   :func:`check_control`): the game or env id, and the replay's memory need
   against the memory available (:func:`check_replay_memory`);
5. MLflow's own validators of the names (:func:`check_names_with_mlflow`).

Steps 1-3 need neither torch nor MLflow (about 0.1 s), step 4 Gymnasium and
ALE, so a typo fails in well under a second or two; a config that passes
everything then imports MLflow for step 5, which it needs anyway.

Example:
    >>> from torchrl_eaudeqn.config import ConfigError, ControlConfig
    >>> try:
    ...     check_budget(ControlConfig(batch_size=128, buffer_size=100))
    ... except ConfigError as err:
    ...     print(err)
    batch_size: must be <= buffer_size (100): the replay never holds a batch, got 128
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import (
    EVAL_SEED_OFFSET,
    SEED_MAX,
    AtariConfig,
    ConfigError,
    ControlConfig,
    SACConfig,
    load_config,
)
from .credentials import ENV_PREFIX, hide_run_urls, redact_text, resolve_env_uri
from .tracking.checks import (
    BUILTIN_ALIASES,
    MODELS_URI_RE,
    REACHABILITY_TIMEOUT_S,
    check_alias,
    check_model_name,
    check_names,
    check_names_with_mlflow,
    check_registered_names,
    check_tracking_uri,
)

__all__ = [
    "BUILTIN_ALIASES",
    "MEMORY_WARN_FRACTION",
    "MODELS_URI_RE",
    "REACHABILITY_TIMEOUT_S",
    "RECIPE_CHECKS",
    "OneLineParser",
    "available_memory",
    "check_alias",
    "check_atari",
    "check_budget",
    "check_control",
    "check_device",
    "check_model_name",
    "check_names",
    "check_names_with_mlflow",
    "check_registered_names",
    "check_replay_memory",
    "check_sac",
    "check_tracking_uri",
    "frame_replay_layout",
    "load_run_config",
    "parse_args",
    "replay_bytes",
]

C = TypeVar("C")

#: A replay needing more than this fraction of the available memory gets a warning.
MEMORY_WARN_FRACTION = 0.7


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``error: ...``), exit status 2.

    Example:
        >>> p = OneLineParser(prog="x")
        >>> _ = p.add_argument("--n", type=int)
        >>> try:
        ...     p.parse_args(["--n", "two"])
        ... except SystemExit as err:
        ...     err.code
        2
    """

    #: Printed before ``error:`` (``"evaluate.py: "``: the script's name).
    prefix = ""

    def error(self, message: str):  # type: ignore[override]  # no usage block
        self.exit(2, f"{self.prefix}error: {message}\n")


# --------------------------------------------------------------------------- budget
def replay_capacity(cfg: Any) -> int:
    """Transitions the replay can hold: Atari's frame replay splits the capacity per env."""
    if isinstance(cfg, AtariConfig):
        return cfg.num_envs * (cfg.buffer_size // cfg.num_envs)
    return cfg.buffer_size


def seed_offset(cfg: Any) -> int:
    """The largest number a recipe adds to ``cfg.seed``.

    The training env of a (re)start gets ``seed + env step`` (its env ``i``
    ``+ i``), the evaluation env ``seed + EVAL_SEED_OFFSET``, the actor's
    speed policy ``seed + 1`` (``torchrl_eaudeqn/lightning.py``).

    Example:
        >>> seed_offset(AtariConfig(env_steps=10_000_000, num_envs=4, train_freq=4))
        10000020
    """
    # A (re)start may come at the end of the budget, overshot by one collection.
    envs = getattr(cfg, "num_envs", 1)
    return max(EVAL_SEED_OFFSET, cfg.env_steps + (cfg.train_freq + 1) * envs)


def check_budget(cfg: Any) -> None:
    """Combinations of fields that cannot train: the batch, the start of learning, the seeds.

    Learning starts once ``env_steps >= learning_starts`` and the replay
    holds ``max(batch_size, min(learning_starts, buffer_size))`` transitions
    (``OnlineRLModule._learning``), so the first gradient step is at env
    step ``max(learning_starts, batch_size)``, which must not come after the
    end of the budget (at the end exactly: one gradient step).

    Raises:
        ConfigError: one line naming the field.
    """
    cap = replay_capacity(cfg)
    if isinstance(cfg, AtariConfig) and cfg.buffer_size // cfg.num_envs < 5:
        raise ConfigError(
            f"buffer_size: must hold at least 5 frames per env (4 stacked + 1) with "
            f"num_envs={cfg.num_envs}, got {cfg.buffer_size}"
        )
    if cfg.batch_size > cap:
        what = "buffer_size" if cap == cfg.buffer_size else f"the replay's {cap} slots"
        detail = f" ({cap})" if cap == cfg.buffer_size else ""
        raise ConfigError(
            f"batch_size: must be <= {what}{detail}: the replay never holds a batch, "
            f"got {cfg.batch_size}"
        )
    warm = max(cfg.batch_size, min(cfg.learning_starts, cfg.buffer_size))
    if warm > cap:
        raise ConfigError(
            f"buffer_size: {cfg.buffer_size} is not a multiple of num_envs={cfg.num_envs}; the "
            f"replay holds {cap} transitions and never reaches learning_starts"
        )
    if cfg.learning_starts > cfg.env_steps:
        raise ConfigError(
            f"learning_starts: must be <= env_steps ({cfg.env_steps}): learning would never "
            f"start, got {cfg.learning_starts}"
        )
    if cfg.batch_size > cfg.env_steps:
        raise ConfigError(
            f"batch_size: the first gradient step needs {cfg.batch_size} transitions, more than "
            f"env_steps ({cfg.env_steps}): learning would never start"
        )
    offset = seed_offset(cfg)
    if cfg.seed + offset > SEED_MAX:
        raise ConfigError(
            f"seed: must be <= {SEED_MAX - offset} (seeds are 0..2**32-1 and the run adds up "
            f"to {offset}: the env step, the evaluation env's offset), got {cfg.seed}"
        )


def check_device(cfg: Any) -> None:
    """``device=cuda`` needs a CUDA device that torch can use (imports torch only then).

    Raises:
        ConfigError: no CUDA device (one line).
    """
    if cfg.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
        raise ConfigError(
            f"device: cuda requested, but torch finds no CUDA device (torch {torch.__version__}, "
            f"{build}); use device=cpu or device=auto"
        )


# --------------------------------------------------------------------------- memory
_ITEMSIZE = {"uint8": 1, "bool": 1, "int32": 4, "float32": 4, "int64": 8, "float64": 8}


def frame_replay_layout(
    capacity: int, frame_shape: Sequence[int], stack: int, num_streams: int
) -> dict[str, tuple[tuple[int, ...], str]]:
    """The arrays of a :class:`~torchrl_eaudeqn.replay.FrameReplayBuffer`: name -> (shape, dtype).

    The buffer allocates exactly these (it reads them from here), so its
    memory need is known before torch or NumPy is imported.

    Example:
        >>> layout = frame_replay_layout(1000, (84, 84), 4, 1)
        >>> layout["frames"], layout["action"]
        (((1001, 84, 84), 'uint8'), ((1000,), 'int32'))
    """
    n = num_streams * (capacity // num_streams)
    return {
        # One extra all-zero frame at index n serves zero padding as a plain gather.
        "frames": ((n + 1, *frame_shape), "uint8"),
        "action": ((n,), "int32"),
        "reward": ((n,), "float32"),
        "terminated": ((n,), "bool"),
        "truncated": ((n,), "bool"),
        "valid": ((n,), "bool"),
        "hist": ((n,), "uint8" if stack <= 256 else "int32"),
    }


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * _ITEMSIZE[dtype]


def replay_bytes(cfg: Any, spaces: dict[str, Any] | None = None) -> int:
    """Bytes the recipe's replay holds once full.

    * Atari: :func:`frame_replay_layout` (each 84x84 frame once, 12 bytes of
      bookkeeping a slot);
    * control (``collector=lean``, the default): :class:`~torchrl_eaudeqn.data.TransitionReplay`
      keeps observation and next observation (float32; uint8 for MinAtar),
      the action index (int64), the reward (float32) and ``terminated`` (bool);
    * SAC and control with ``collector=torchrl``: TorchRL's
      ``LazyTensorStorage`` keeps, per transition, what the module's
      ``REPLAY_KEYS`` select: observation and next observation (float32 for
      SAC, whose env casts with ``DoubleToFloat``; the task's dtype for
      control, float32 for MinAtar), the action (SAC: float32 vector;
      control: one-hot int64), the reward (float32) and 2 (control) or 3
      (SAC) bool flags.

    Args:
        cfg: the config.
        spaces: for SAC and control, ``{"obs_numel", "obs_itemsize",
            "action_numel"}`` of the task (:func:`task_spaces`).
    """
    if isinstance(cfg, AtariConfig):
        layout = frame_replay_layout(cfg.buffer_size, (84, 84), 4, cfg.num_envs)
        return sum(_nbytes(shape, dtype) for shape, dtype in layout.values())
    assert spaces is not None
    obs = spaces["obs_numel"] * spaces["obs_itemsize"]
    if isinstance(cfg, SACConfig):
        per = 2 * obs + 4 * spaces["action_numel"] + 4 + 3
    elif getattr(cfg, "collector", "torchrl") == "lean":
        itemsize = 1 if cfg.env.startswith("minatar:") else 4
        per = 2 * spaces["obs_numel"] * itemsize + 8 + 4 + 1
    else:
        per = 2 * obs + 8 * spaces["action_numel"] + 4 + 2
    return cfg.buffer_size * per


def available_memory() -> int | None:
    """Bytes of memory a new process can use now (``None`` where unknown).

    ``MemAvailable`` of ``/proc/meminfo`` (``psutil`` elsewhere), capped by
    the cgroup's limit minus its use (a container or a Ray worker's limit).
    """
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except Exception:  # noqa: BLE001 - psutil missing or unsupported here
            pass
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (f"{v1}limit_in_bytes", f"{v1}usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes a huge number for "no limit"
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def check_replay_memory(
    cfg: Any, need: int, *, available: int | None = None, warn: Callable[[str], None] | None = None
) -> None:
    """Refuse a replay larger than the available memory; warn above 70% of it.

    A replay fills as the run goes: one that cannot fit is killed hours in.

    Args:
        cfg: the config (its ``buffer_size`` is named).
        need: bytes the full replay holds (:func:`replay_bytes`).
        available: bytes available (default: :func:`available_memory`).
        warn: where the warning line goes (default: stderr).

    Raises:
        ConfigError: ``need`` exceeds ``available``.

    Example:
        >>> cfg = ControlConfig(buffer_size=50_000)
        >>> check_replay_memory(cfg, 8 * 10**9, available=10 * 10**9, warn=lambda s: print(s[-43:]))
        80% of the 10.00 GB of memory available now
    """
    available = available_memory() if available is None else available
    if available is None or need <= 0:
        return
    what = (
        f"{_gb(need)} when full ({cfg.buffer_size} transitions x "
        f"{need // max(cfg.buffer_size, 1)} bytes)"
    )
    if need > available:
        raise ConfigError(
            f"buffer_size: the replay would hold {what}, more than the {_gb(available)} of "
            f"memory available; lower buffer_size (got {cfg.buffer_size})"
        )
    if need > MEMORY_WARN_FRACTION * available:
        line = (
            f"warning: buffer_size: the replay will hold {what}, {need / available:.0%} of the "
            f"{_gb(available)} of memory available now"
        )
        (warn or (lambda text: print(text, file=sys.stderr)))(line)


# --------------------------------------------------------------------------- tasks
def _gym_spaces(env_id: str, minatar: bool) -> tuple[Any, Any]:
    import gymnasium as gym

    from .tasks import probe_spaces

    if minatar and env_id not in gym.registry:
        from minatar.gym import register_envs

        register_envs()
    return probe_spaces(env_id)


def task_spaces(cfg: Any) -> dict[str, Any]:
    """What the replay stores of the task's spaces: observation size and dtype, action size.

    Builds the bare Gymnasium env once (MinAtar: imports the ``minatar``
    package, a few seconds), as the recipes' own env checks do.

    Example:
        >>> task_spaces(ControlConfig(env="CartPole-v1"))
        {'obs_numel': 4, 'obs_itemsize': 4, 'action_numel': 2, 'action_space': 'Discrete'}
    """
    import gymnasium as gym

    minatar = isinstance(cfg, ControlConfig) and cfg.env.startswith("minatar:")
    if minatar:
        env_id = f"MinAtar/{cfg.task_name.title().replace('_', '')}-v1"
    else:
        env_id = cfg.env
    obs, act = _gym_spaces(env_id, minatar)
    if not isinstance(obs, gym.spaces.Box):
        raise ConfigError(
            f"env: {env_id!r} has a {type(obs).__name__} observation space; "
            "the networks read a flat or image Box"
        )
    # MinAtar: bool [10, 10, C] -> float32 [C, 10, 10] (control.make_minatar_env);
    # SAC: DoubleToFloat (envs.make_continuous_env); control: the task's dtype.
    itemsize = 4 if minatar or isinstance(cfg, SACConfig) else obs.dtype.itemsize
    discrete = isinstance(act, gym.spaces.Discrete)
    return {
        "obs_numel": math.prod(obs.shape),
        "obs_itemsize": itemsize,
        "action_numel": int(act.n) if discrete else math.prod(act.shape or (1,)),
        "action_space": type(act).__name__,
    }


def _field_error(field: str, err: Exception) -> ConfigError:
    text = str(err)
    return ConfigError(text if text.startswith(f"{field}:") else f"{field}: {text}")


def check_atari(cfg: AtariConfig, *, memory: bool = True) -> None:
    """The Atari recipe's task checks: a known ALE game, the replay within memory.

    Raises:
        ConfigError: one line naming ``env`` or ``buffer_size``.
    """
    from .tasks import action_space_kind, resolve_atari_game

    try:
        resolve_atari_game(cfg.env)
    except ValueError as err:
        # A continuous-control id is a wrong recipe, not a typo: say which one to use.
        try:
            continuous = action_space_kind(cfg.env) == "continuous"
        except ValueError:
            continuous = False
        if continuous:
            raise ConfigError(
                f"env: {cfg.env!r} is a continuous-control task: use the SAC recipe "
                "(recipes/mujoco_sac.py)"
            ) from None
        raise _field_error("env", err) from None
    if memory:
        check_replay_memory(cfg, replay_bytes(cfg))


def check_sac(cfg: SACConfig, *, memory: bool = True) -> None:
    """The SAC recipe's task checks: a continuous-control id, the replay within memory.

    Raises:
        ConfigError: one line naming ``env`` or ``buffer_size``.
    """
    from .tasks import resolve_continuous_env

    try:
        resolve_continuous_env(cfg.env)
    except ValueError as err:
        raise _field_error("env", err) from None
    if memory:
        check_replay_memory(cfg, replay_bytes(cfg, task_spaces(cfg)))


def check_control(cfg: ControlConfig, *, memory: bool = True) -> None:
    """The control recipe's task checks: a discrete Gymnasium id or MinAtar game, memory.

    Raises:
        ConfigError: one line naming ``task`` or ``buffer_size``.
    """
    from .tasks import _check_control_id

    if not cfg.env.startswith("minatar:"):
        try:
            _check_control_id(cfg.env)
        except ValueError as err:
            raise _field_error("env", err) from None
    try:
        spaces = task_spaces(cfg)
    except ImportError as err:
        raise ConfigError(f"env: {cfg.env!r} needs the minatar package ({err})") from None
    if spaces["action_space"] != "Discrete":
        raise ConfigError(
            f"env: {cfg.env!r} has a {spaces['action_space']} action space; the DQN recipes "
            "need a Discrete one (continuous actions: recipes/mujoco_sac.py)"
        )
    if memory:
        check_replay_memory(cfg, replay_bytes(cfg, spaces))


#: Recipe kind -> (config class, task checks): what ``recipes/study.py`` checks per cell.
RECIPE_CHECKS: dict[str, tuple[type, Callable[..., None]]] = {
    "atari": (AtariConfig, check_atari),
    "mujoco": (SACConfig, check_sac),
    "control": (ControlConfig, check_control),
}


# --------------------------------------------------------------------------- command line
def load_run_config(
    config_cls: type[C],
    config: str | None,
    overrides: Sequence[str],
    *,
    check: Callable[[C], None] | None = None,
    tracking: bool = True,
    mlflow_names: bool = True,
) -> C:
    """A recipe's config, read and checked in the order of this module's docstring.

    Args:
        config_cls: the config dataclass.
        config: YAML file or ``None``.
        overrides: ``key=value`` strings.
        check: the recipe's task checks (:data:`RECIPE_CHECKS`).
        tracking: resolve ``env:NAME`` and check the tracking URI.
        mlflow_names: finish with :func:`check_names_with_mlflow`.

    Raises:
        ConfigError, ValueError: the first problem found, one line naming its field.
    """
    cfg = load_config(config_cls, config, list(overrides))
    check_budget(cfg)
    check_names(cfg)
    if tracking:
        if cfg.tracking_uri.startswith(ENV_PREFIX):
            cfg = dataclasses.replace(cfg, tracking_uri=resolve_env_uri(cfg.tracking_uri))
        try:
            check_tracking_uri(cfg.tracking_uri)
        except ValueError as err:
            raise _field_error("tracking_uri", err) from None
    check_device(cfg)
    if check is not None:
        check(cfg)
    check_registered_names(cfg)
    if mlflow_names:
        check_names_with_mlflow(cfg)
    return cfg


def parse_args(
    config_cls: type[C],
    argv: list[str] | None = None,
    *,
    default_config: str | None,
    description: str = "",
    check: Callable[[C], None] | None = None,
) -> tuple[argparse.Namespace, C]:
    """``[--config YAML] [--resume last|PATH] [key=value ...]`` into a validated config.

    Args:
        config_cls: the config dataclass (e.g. :class:`~torchrl_eaudeqn.config.SACConfig`).
        argv: arguments (``None``: ``sys.argv[1:]``).
        default_config: YAML used without ``--config`` (``None``: the dataclass defaults).
        description: the ``--help`` text.
        check: more checks on the loaded config (the task, ...); raises
            ``ValueError``/``ConfigError``.

    Returns:
        ``(args, cfg)``; on any error the process exits with status 2 and
        one line ``error: <field>: <message>`` on stderr, before anything
        is built (:func:`load_run_config`). ``tracking_uri=env:NAME`` is
        replaced by environment variable ``NAME`` (a URI with credentials
        stays off the command line).

    Example:
        >>> args, cfg = parse_args(ControlConfig, ["width=8"], default_config=None)
        >>> cfg.width, args.resume
        (8, None)
    """
    p = OneLineParser(description=description)
    p.add_argument("--config", default=default_config, help="YAML config")
    p.add_argument("--resume", default=None, help="'last' or a checkpoint path")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    if args.resume is not None and not args.resume.strip():
        p.error("--resume: expected 'last' or a checkpoint path, got ''")
    if args.config is not None and not args.config.strip():
        p.error("--config: expected a YAML file, got ''")
    try:
        cfg = load_run_config(config_cls, args.config, args.overrides, check=check)
    except (ConfigError, ValueError) as err:
        p.exit(2, f"error: {redact_text(str(err))}\n")
    hide_run_urls(cfg.tracking_uri)
    return args, cfg
