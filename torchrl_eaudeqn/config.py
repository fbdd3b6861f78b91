"""Validated recipe configs: YAML files plus ``key=value`` overrides.

A config is a dataclass; every field has a one-line doc (the ``doc``
metadata). Loading checks every key and value *before* anything is built and
raises :class:`ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, get_type_hints

import yaml

__all__ = [
    "EVAL_SEED_OFFSET",
    "MINATAR_GAMES",
    "SEED_MAX",
    "AtariConfig",
    "ConfigError",
    "ControlConfig",
    "RunConfig",
    "SACConfig",
    "config_diff",
    "load_config",
]

C = TypeVar("C")

#: Largest seed: NumPy seeds are 0 .. 2**32 - 1 (the recipes also keep seed + offsets there).
SEED_MAX = 2**32 - 1
#: The evaluation env's seed is ``seed + EVAL_SEED_OFFSET`` (apart from the training envs').
EVAL_SEED_OFFSET = 10_000


class ConfigError(ValueError):
    """A config key or value is wrong (the message names it)."""


def _f(default: Any, doc: str, **checks: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **checks})


def _like(name: str, default: Any, doc: str | None = None, **checks: Any) -> Any:
    """The core field ``name`` with a family's own default (and, where given, its doc)."""
    meta = dict(RunConfig.__dataclass_fields__[name].metadata)
    meta.update(checks)
    if doc is not None:
        meta["doc"] = doc
    return field(default=default, metadata=meta)


def _lr_end_fraction() -> Any:
    # The DQN families' learning-rate decay (SAC keeps its rates constant).
    return _f(
        1.0,
        "learning rate at the end of the budget as a fraction of lr, reached linearly "
        "from learning_starts (1: constant)",
        min=0.0,
        max=1.0,
    )


def _rename_aliases(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with the older field names of ``cls`` replaced by the current ones."""
    for old, new in cls.ALIASES.items():
        if old in data:
            if new in data:
                raise ConfigError(
                    f"{old}: the older name of {new}, both given in {where}; keep {new}"
                )
            data[new] = data.pop(old)
    return data


def _accepts_aliases(cls: type[C]) -> type[C]:
    """Let the dataclass ``cls`` take its :attr:`RunConfig.ALIASES` as keyword arguments.

    Checkpoints store a config as its field names, so one written before a
    rename still constructs (``AtariConfig(game="Pong")``).
    """
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **_rename_aliases(cls, kwargs, "the arguments"))

    cls.__init__ = __init__
    return cls


@dataclass
class RunConfig:
    """The config core: the fields, checks and names every recipe family shares.

    One name and one doc per idea: ``seed``, the EauDe* members and pruning
    speeds, the PolyPrune schedule, the optimizer and replay, evaluation,
    tracking, checkpoints and compute. A family (:class:`AtariConfig`,
    :class:`SACConfig`, :class:`ControlConfig`) adds its task and network
    fields and sets its own defaults; the checks in ``__post_init__`` and the
    read-only names (:attr:`members`, :attr:`tags`) are the same for all.
    Every family calls its task ``env``, the env steps between target updates
    (where the members are compared) ``target_period`` and its hidden width
    ``width``; the names older versions used (:attr:`ALIASES`: Atari's
    ``game``, the control family's ``task``, SAC's ``selection_period`` and
    ``hidden``) are read as these everywhere a config comes from: YAML files,
    overrides, keyword arguments, checkpoints and attribute reads.

    Example:
        >>> cfg = load_config(ControlConfig, overrides=["task=Acrobot-v1", "target_period=500"])
        >>> isinstance(cfg, RunConfig), cfg.env, cfg.target_period, cfg.task
        (True, 'Acrobot-v1', 500, 'Acrobot-v1')
    """

    #: The family's adaptive method (``members`` is K for it, 1 for the baselines).
    ADAPTIVE_METHOD: ClassVar[str] = "eaudeqn"
    #: Older field names, read as the field they map to (``{old: current}``).
    ALIASES: ClassVar[dict[str, str]] = {}

    env: str = _f("", "the task's id", nonempty=True)
    seed: int = _f(0, "random seed (torch, numpy, env)", min=0, max=SEED_MAX)
    env_steps: int = _f(1_000_000, "env steps in total", min=1)
    # EauDe*: K members at different sparsity levels
    num_members: int = _f(5, "K online networks (eaudeqn)", min=1)
    max_speed: float = _f(0.01, "fastest pruning speed per target update", min=0.0, max=1.0)
    speed_policy: str = _f("grid", "grid | noisy", choices=("grid", "noisy"))
    max_noise: float = _f(3.0, "spread of the noisy speed policy", min=1.0)
    prune_scope: str = _f("global", "global | layer magnitude ranking", choices=("global", "layer"))
    prune_structure: str = _f(
        "weights",
        "weights | filters: convolutions lose whole output filters, which the compact "
        "export removes (faster inference; an MLP has none)",
        choices=("weights", "filters"),
    )
    target_period: int = _f(
        8000, "env steps between target updates (the members are compared there)", min=1
    )
    reset_optimizer: bool = _f(True, "reset the optimizer state at each target update (eaudeqn)")
    # PolyPrune baseline
    final_sparsity: float = _f(0.95, "polyprune final sparsity", min=0.0, max=0.999999)
    prune_start: int = _f(200_000, "polyprune schedule start (env steps)", min=0)
    prune_end: int = _f(800_000, "polyprune schedule end (env steps)", min=1)
    prune_every: int = _f(1000, "polyprune mask update interval (env steps)", min=1)
    # optimizer and replay
    optimizer: str = _f(
        "adam",
        "adam | rmsprop (centered RMSprop with rmsprop_alpha/rmsprop_eps: the MinAtar paper's DQN)",
        choices=("adam", "rmsprop"),
    )
    lr: float = _f(1e-3, "learning rate", min=0.0)
    adam_eps: float = _f(1e-8, "Adam epsilon", min=0.0)
    rmsprop_alpha: float = _f(
        0.95, "RMSprop smoothing constant (optimizer=rmsprop)", min=0.0, max=1.0
    )
    rmsprop_eps: float = _f(0.01, "RMSprop epsilon (optimizer=rmsprop)", min=0.0)
    batch_size: int = _f(32, "replay batch size", min=1)
    buffer_size: int = _f(1_000_000, "replay capacity (transitions)", min=1)
    learning_starts: int = _f(1_000, "random env steps before learning", min=0)
    train_freq: int = _f(1, "env steps per gradient step", min=1)
    steps_per_call: int = _f(
        1,
        "train_freq rounds per Lightning training_step (>1: fewer Lightning calls on small "
        "tasks; each call still ends at every log, evaluation, checkpoint and stop)",
        min=1,
    )
    gamma: float = _f(0.99, "discount", min=0.0, max=1.0)
    loss_function: str = _f("l2", "l2 | smooth_l1 | l1", choices=("l2", "smooth_l1", "l1"))
    max_episode_steps: int = _f(1000, "step cap per training episode", min=1)
    # evaluation
    eval_every: int = _f(0, "env steps between evaluations (0: only at the end)", min=0)
    eval_episodes: int = _f(10, "episodes per evaluation", min=1)
    eval_max_steps: int = _f(1000, "step cap per evaluation episode", min=1)
    eval_random_baseline: bool = _f(False, "also score a uniformly random policy at the start")
    # tracking, checkpoints, registry
    tracking_uri: str = _f("sqlite:///mlflow.db", "MLflow tracking URI", nonempty=True)
    experiment: str = _f("eaudeqn", "MLflow experiment name", nonempty=True)
    run_name: str = _f("", "MLflow run name (empty: generated)")
    run_tags: str = _f("", "extra MLflow run tags, key=value,key=value (the study's grid key)")
    log_every: int = _f(1000, "env steps between metric logs", min=1)
    register_name: str = _f("", "registered model name (empty: from the run key)")
    register_alias: str = _f(
        "final", "alias set on the new model version (@latest also works)", nonempty=True
    )
    checkpoint_dir: str = _f("checkpoints", "where Lightning checkpoints go", nonempty=True)
    checkpoint_every: int = _f(100_000, "env steps between checkpoints", min=1)
    keep_checkpoints: int = _f(3, "newest checkpoints kept per run (older ones deleted)", min=1)
    checkpoint_replay: bool = _f(
        False, "also write the replay buffer beside each checkpoint (exact resume; large)"
    )
    # compute
    use_vmap: str = _f(
        "auto",
        "auto (a loop for K=1, else the faster path timed at the first step) | true | false",
        choices=("auto", "true", "false"),
    )
    threads: int = _f(0, "torch CPU threads (0: all cores)", min=0)
    device: str = _f("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    progress_bar: bool = _f(True, "show the progress bar")

    def __post_init__(self) -> None:
        _validate(self)
        if self.prune_end <= self.prune_start:
            raise ConfigError(
                f"prune_end: must be greater than prune_start ({self.prune_start}), "
                f"got {self.prune_end}"
            )
        if self.target_period % self.train_freq:
            raise ConfigError(
                f"target_period: must be a multiple of train_freq ({self.train_freq}), "
                f"got {self.target_period}"
            )
        if any("=" not in item for item in filter(None, self.run_tags.split(","))):
            raise ConfigError(f"run_tags: expected key=value,key=value, got {self.run_tags!r}")

    @property
    def members(self) -> int:
        """Members actually used: K for the adaptive method, 1 for the baselines."""
        return self.num_members if getattr(self, "method", "") == self.ADAPTIVE_METHOD else 1

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: an older field name reads its field.
        current = type(self).ALIASES.get(name)
        if current is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self, current)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(type(self).ALIASES.get(name, name), value)

    def _tags(self, **base: str) -> dict[str, str]:
        tags = {"method": getattr(self, "method", ""), **base}
        for item in filter(None, self.run_tags.split(",")):
            key, _, value = item.partition("=")
            tags[key.strip()] = value.strip()
        return tags

    @property
    def tags(self) -> dict[str, str]:
        """MLflow tags of a new run: method, env, and ``run_tags``."""
        return self._tags(env=self.env)


@_accepts_aliases
@dataclass
class AtariConfig(RunConfig):
    """EauDeQN / PolyPruneQN / DQN on Atari; defaults are the paper's settings.

    Example:
        >>> cfg = load_config(AtariConfig, overrides=["env=Breakout", "width=small"])
        >>> cfg.env, cfg.width, cfg.target_period
        ('Breakout', 'small', 8000)
    """

    ALIASES: ClassVar[dict[str, str]] = {"game": "env"}

    method: str = _f(
        "eaudeqn", "eaudeqn | polyprune | dqn", choices=("eaudeqn", "polyprune", "dqn")
    )
    env: str = _like("env", "Pong", "ALE game, e.g. Pong or ALE/Pong-v5 (older name: game)")
    width: str = _f(
        "medium", "hidden width: small (32) | medium (512) | large (2048) | an int", nonempty=True
    )
    env_steps: int = _like("env_steps", 10_000_000, "agent steps in total (frames = 4x)")
    prune_start: int = _like("prune_start", 2_000_000)
    prune_end: int = _like("prune_end", 8_000_000)
    prune_every: int = _like("prune_every", 4000)
    # DQN
    lr: float = _like("lr", 6.25e-5)
    lr_end_fraction: float = _lr_end_fraction()
    adam_eps: float = _like("adam_eps", 1.5e-4)
    learning_starts: int = _like("learning_starts", 20_000)
    train_freq: int = _like("train_freq", 4)
    eps_start: float = _f(1.0, "initial epsilon", min=0.0, max=1.0)
    eps_end: float = _f(0.01, "final epsilon", min=0.0, max=1.0)
    eps_decay_steps: int = _f(250_000, "env steps of linear epsilon decay", min=1)
    # environment
    sticky_actions: float = _f(0.25, "repeat-action probability", min=0.0, max=1.0)
    frame_skip: int = _f(4, "frames per agent step (max-pooled)", min=1)
    max_episode_steps: int = _like("max_episode_steps", 27_000, "agent-step cap per episode")
    terminal_on_life_loss: bool = _f(
        False,
        "a lost life ends the learning target (Nature DQN; not the paper's Dopamine "
        "setting); the game goes on and scores stay whole-game",
    )
    num_envs: int = _f(1, "envs stepped together (for fast learners)", min=1)
    collector: str = _f(
        "lean",
        "lean (AtariCollector: plain env + network) | torchrl (TorchRL Collector + transforms)",
        choices=("lean", "torchrl"),
    )
    overlap: str = _f(
        "auto",
        "lean collector in a thread beside the learner: auto (on when cores are spare) | "
        "true | false",
        choices=("auto", "true", "false"),
    )
    # evaluation
    eval_every: int = _like("eval_every", 250_000)
    eval_epsilon: float = _f(0.01, "epsilon during evaluation", min=0.0, max=1.0)
    eval_max_steps: int = _like("eval_max_steps", 27_000, "agent-step cap per evaluation episode")
    # tracking, checkpoints, registry
    experiment: str = _like("experiment", "eaudeqn-atari")
    register_name: str = _like(
        "register_name", "", "registered model name (empty: eaudeqn-<game>-<method>-<width>)"
    )
    register_format: str = _f(
        "compact",
        "registered form: dense | compact (sparse layers in CSR, docs/export.md) | both "
        "(dense as NAME, compact as NAME-compact)",
        choices=("dense", "compact", "both"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        w = str(self.width)
        if w not in ("small", "medium", "large") and not (w.isdigit() and int(w) > 0):
            raise ConfigError(
                f"width: expected small | medium | large or a positive int, got {w!r}"
            )

    @property
    def tags(self) -> dict[str, str]:
        """MLflow tags of a new run: method, env, width, and ``run_tags``.

        Example:
            >>> AtariConfig(run_tags="study.key=Pong/dqn/small/seed0").tags["study.key"]
            'Pong/dqn/small/seed0'
        """
        return self._tags(env=self.env, width=str(self.width))

    @property
    def task_name(self) -> str:
        """The game without its ALE prefix and version (``ALE/Pong-v5`` -> ``Pong``)."""
        return self.env.split("/")[-1].split("-")[0]

    @property
    def model_name(self) -> str:
        """Registered model name."""
        return self.register_name or f"eaudeqn-{self.task_name}-{self.method}-{self.width}"

    @property
    def run_key(self) -> str:
        """Names the run's checkpoint directory and its default MLflow run name."""
        return f"{self.task_name}-{self.method}-{self.width}-seed{self.seed}"


@_accepts_aliases
@dataclass
class SACConfig(RunConfig):
    """EauDeSAC / PolyPruneSAC / dense SAC on a continuous-control task (MuJoCo).

    Defaults are the standard SAC settings (Haarnoja et al. 2018, docs/algorithm.md):
    Adam 3e-4, batch 256, gamma 0.99, tau 0.005, replay 1M, two hidden layers
    of 256, automatic entropy tuning. The selection period, the pruning
    speeds and the PolyPruneSAC schedule are unpublished for MuJoCo; their
    defaults are this project's choices.

    Example:
        >>> cfg = load_config(SACConfig, overrides=["env=Hopper-v5", "num_members=3"])
        >>> cfg.env, cfg.members, cfg.hidden_sizes, cfg.run_key
        ('Hopper-v5', 3, (256, 256), 'Hopper-v5-eaudesac-256x2-seed0')
    """

    ADAPTIVE_METHOD: ClassVar[str] = "eaudesac"
    ALIASES: ClassVar[dict[str, str]] = {"selection_period": "target_period", "hidden": "width"}

    method: str = _f(
        "eaudesac", "eaudesac | polyprune | sac", choices=("eaudesac", "polyprune", "sac")
    )
    env: str = _like("env", "HalfCheetah-v5", "Gymnasium id with a continuous (Box) action space")
    # EauDeSAC
    num_members: int = _like("num_members", 5, "K actor and K critic members (eaudesac)")
    target_period: int = _like(
        "target_period",
        1000,
        "env steps between member selections (eaudesac): the Polyak target then follows the "
        "selected critic (older name: selection_period)",
    )
    max_speed: float = _like("max_speed", 0.01, "fastest pruning speed per selection")
    reset_optimizer: bool = _like(
        "reset_optimizer", True, "reset the optimizer state of the members at each selection"
    )
    hard_copy_on_selection: bool = _f(
        False, "copy the critic winner into the target at selections (else Polyak only)"
    )
    # SAC
    lr: float = _like("lr", 3e-4, "learning rate (actor, critics, alpha)")
    batch_size: int = _like("batch_size", 256)
    learning_starts: int = _like(
        "learning_starts", 5000, "uniformly random env steps before learning"
    )
    tau: float = _f(0.005, "Polyak coefficient of the target critic, in (0, 1]")
    width: int = _f(
        256, "width of every hidden layer, actor and critics (older name: hidden)", min=1
    )
    depth: int = _f(2, "hidden layers per network", min=1)
    loss_function: str = _like("loss_function", "l2", "critic loss: l2 | smooth_l1 | l1")
    alpha_init: float = _f(1.0, "initial entropy coefficient", min=1e-12)
    fixed_alpha: bool = _f(False, "keep alpha at alpha_init (no entropy tuning)")
    target_entropy: str = _f("auto", "auto (-action_dim) or a number", nonempty=True)
    # evaluation
    eval_every: int = _like("eval_every", 50_000)
    eval_episodes: int = _like(
        "eval_episodes", 10, "episodes per evaluation (deterministic selected actor)"
    )
    # tracking, checkpoints, registry
    experiment: str = _like("experiment", "eaudeqn-mujoco")
    register_name: str = _like(
        "register_name",
        "",
        "registered model name (empty: eaudesac-<env>-<method>-<hidden>x<depth>)",
    )
    register_format: str = _f(
        "compact",
        "registered actor form: dense | compact (sparse layers in CSR, docs/export.md) | "
        "both (dense as NAME, compact as NAME-compact)",
        choices=("dense", "compact", "both"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau: must be in (0, 1], got {self.tau!r}")
        if self.target_entropy != "auto":
            try:
                value = float(self.target_entropy)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ConfigError(
                    "target_entropy: expected auto or a number (a finite one), "
                    f"got {self.target_entropy!r}"
                )

    @property
    def tags(self) -> dict[str, str]:
        """MLflow tags of a new run: method, env, width, depth, and ``run_tags``.

        Example:
            >>> SACConfig(run_tags="study.key=HalfCheetah-v5/sac/narrow/seed0").tags["study.key"]
            'HalfCheetah-v5/sac/narrow/seed0'
        """
        return self._tags(env=self.env, width=str(self.width), depth=str(self.depth))

    @property
    def task_name(self) -> str:
        """The env id (it has no family prefix)."""
        return self.env

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Hidden widths of every MLP (actor and each Q network)."""
        return (self.width,) * self.depth

    @property
    def target_entropy_value(self) -> str | float:
        """``"auto"`` or the number, as :class:`~torchrl_eaudeqn.EauDeSACLoss` takes it."""
        return "auto" if self.target_entropy == "auto" else float(self.target_entropy)

    @property
    def model_name(self) -> str:
        """Registered model name of the selected actor."""
        return self.register_name or f"eaudesac-{self.run_key.rsplit('-seed', 1)[0]}"

    @property
    def run_key(self) -> str:
        """Names the run's checkpoint directory and its default MLflow run name."""
        return f"{self.env}-{self.method}-{self.width}x{self.depth}-seed{self.seed}"


#: MinAtar games, as ``minatar:<game>`` task names take them.
MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")


@_accepts_aliases
@dataclass
class ControlConfig(RunConfig):
    """EauDeQN / PolyPruneQN / DQN on a small discrete task (classic control or MinAtar).

    All step counts are env steps (the updater converts them to gradient
    steps with ``train_freq``). Defaults suit CartPole in 30k steps; the
    study's configs (``configs/study/``) set them per task.

    Example:
        >>> cfg = load_config(ControlConfig, overrides=["env=Acrobot-v1", "width=32"])
        >>> cfg.env, cfg.width, cfg.members, cfg.run_key
        ('Acrobot-v1', 32, 5, 'Acrobot-v1-eaudeqn-w32-seed0')
    """

    ALIASES: ClassVar[dict[str, str]] = {"task": "env"}
    #: What a field meant before it existed: a checkpoint written without it ran so.
    LEGACY_VALUES: ClassVar[dict[str, Any]] = {"collector": "torchrl"}

    method: str = _f(
        "eaudeqn", "eaudeqn | polyprune | dqn", choices=("eaudeqn", "polyprune", "dqn")
    )
    env: str = _like(
        "env",
        "CartPole-v1",
        "Gymnasium id with a Discrete action space, or minatar:<game> (older name: task)",
    )
    width: int = _f(
        128, "hidden width (MLP: both hidden layers; MinAtar CNN: the dense layer)", min=1
    )
    action_set: str = _f(
        "minimal",
        "MinAtar actions: minimal (the game's own set, MinAtar/<Game>-v1) | full (all 6, -v0, "
        "as the MinAtar paper's DQN)",
        choices=("minimal", "full"),
    )
    env_steps: int = _like("env_steps", 30_000)
    max_speed: float = _like("max_speed", 0.1)
    prune_start: int = _like("prune_start", 3_000)
    prune_end: int = _like("prune_end", 24_000)
    prune_every: int = _like("prune_every", 300)
    # DQN
    lr_end_fraction: float = _lr_end_fraction()
    batch_size: int = _like("batch_size", 64)
    buffer_size: int = _like("buffer_size", 50_000)
    eps_start: float = _f(1.0, "initial epsilon", min=0.0, max=1.0)
    eps_end: float = _f(0.05, "final epsilon", min=0.0, max=1.0)
    eps_decay_steps: int = _f(10_000, "env steps of linear epsilon decay", min=1)
    target_period: int = _like("target_period", 300)
    # Lightning's loop costs ~150-300 us per training_step, a quarter of a CartPole step.
    steps_per_call: int = _like("steps_per_call", 16)
    # environment
    max_episode_steps: int = _like(
        "max_episode_steps", 0, "step cap per training episode (0: the task's own)", min=0
    )
    collector: str = _f(
        "lean",
        "lean (ControlCollector and TransitionReplay: Gymnasium env, plain network, tensors) | "
        "torchrl (TorchRL Collector, transforms and ReplayBuffer)",
        choices=("lean", "torchrl"),
    )
    # evaluation
    eval_epsilon: float = _f(0.0, "epsilon during evaluation", min=0.0, max=1.0)
    eval_random_baseline: bool = _like("eval_random_baseline", True)
    # tracking, checkpoints, registry
    experiment: str = _like("experiment", "eaudeqn-control")
    log_every: int = _like("log_every", 500)
    register: bool = _f(False, "register the final acting network in the model registry")
    register_name: str = _like(
        "register_name", "", "registered model name (empty: eaudeqn-<task>-<method>-w<width>)"
    )
    register_alias: str = _like("register_alias", "final", "alias set on the new model version")
    checkpoint_every: int = _like("checkpoint_every", 10_000)
    # compute
    device: str = _like("device", "cpu")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.env.startswith("minatar:") and self.env[8:] not in MINATAR_GAMES:
            raise ConfigError(f"env: unknown MinAtar game {self.env[8:]!r} ({MINATAR_GAMES})")
        if self.action_set == "full" and not self.env.startswith("minatar:"):
            raise ConfigError(f"action_set: full applies to MinAtar games, not {self.env!r}")

    @property
    def tags(self) -> dict[str, str]:
        """MLflow tags of a new run: method, env, width, and ``run_tags``."""
        return self._tags(env=self.env, width=str(self.width))

    @property
    def task_name(self) -> str:
        """The task without its family prefix (``minatar:breakout`` -> ``breakout``)."""
        return self.env.split(":", 1)[-1]

    @property
    def model_name(self) -> str:
        """Registered model name."""
        return self.register_name or f"eaudeqn-{self.task_name}-{self.method}-w{self.width}"

    @property
    def run_key(self) -> str:
        """Names the run's checkpoint directory and its default MLflow run name."""
        return f"{self.task_name}-{self.method}-w{self.width}-seed{self.seed}"


def _validate(cfg: Any) -> None:
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        typ = hints[f.name]
        if typ is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{f.name}: expected true or false, got {value!r}")
        elif typ is int:
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)  # 1e6 (a float in YAML) for a count
                setattr(cfg, f.name, value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{f.name}: expected an integer, got {value!r}")
        elif typ is float:
            if isinstance(value, str):  # a quoted number
                with contextlib.suppress(ValueError):
                    value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{f.name}: expected a number, got {value!r}")
            value = float(value)
            # NaN compares False with every bound: without this it passed min/max.
            if not math.isfinite(value):
                raise ConfigError(f"{f.name}: expected a finite number, got {value!r}")
            setattr(cfg, f.name, value)
        elif typ is str:
            if isinstance(value, bool):  # YAML reads true/yes/on as booleans
                value = str(value).lower()
                setattr(cfg, f.name, value)
            if isinstance(value, (int, float)):
                value = str(value)
                setattr(cfg, f.name, value)
            if not isinstance(value, str):
                raise ConfigError(f"{f.name}: expected a string, got {value!r}")
        meta = f.metadata
        if meta.get("nonempty") and not value.strip():
            raise ConfigError(f"{f.name}: expected a non-empty string, got {value!r}")
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(
                f"{f.name}: expected one of {' | '.join(meta['choices'])}, got {value!r}"
            )
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{f.name}: must be >= {meta['min']}, got {value!r}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{f.name}: must be <= {meta['max']}, got {value!r}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``5e-4`` and ``1e6`` as numbers (YAML 1.2).

    YAML 1.1, which PyYAML implements, needs a dot and a signed exponent
    (``5.0e-4``): ``lr: 5e-4`` was the string ``'5e-4'``.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    # safe: a config is data; YAML tags that build Python objects are refused.
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _parse_value(text: str) -> Any:
    try:
        return _yaml_load(text)
    except yaml.YAMLError:
        return text


def _check_keys(data: dict[Any, Any], where: str) -> None:
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r}: expected a config field name (a string)")


def _read_yaml(
    path: pathlib.Path, cls: type, seen: tuple[pathlib.Path, ...] = ()
) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    if path in seen:
        raise ConfigError(f"config file {path}: circular 'extends'")
    try:
        data = _yaml_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"config file {path}: not valid YAML ({str(err).splitlines()[0]})"
        ) from None
    except OSError as err:
        raise ConfigError(f"config file {path}: unreadable ({err.strerror or err})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values")
    _check_keys(data, f"config file {path}")
    _rename_aliases(cls, data, f"config file {path}")
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"config file {path}: extends: expected a file name, got {base!r}")
        parent = _read_yaml((path.parent / base).resolve(), cls, (*seen, path))
        parent.update(data)
        data = parent
    return data


def load_config(
    cls: type[C],
    path: str | pathlib.Path | None = None,
    overrides: list[str] | None = None,
) -> C:
    """Read a YAML config (``extends: other.yaml`` allowed), apply overrides, validate.

    Values are YAML scalars, read as YAML 1.2 reads numbers (``lr=5e-4`` is
    a float); an override of a string field keeps its text as given
    (``run_name=007``). Every float must be finite (``.nan``, ``.inf`` are
    refused) and a count may be written ``1e6``.

    Args:
        cls: the config dataclass.
        path: YAML file; ``None`` starts from the defaults.
        overrides: ``"key=value"`` strings (values parsed as YAML scalars).

    Raises:
        ConfigError: unknown key, bad value or unreadable file; the message
            names the key (and suggests close matches for typos).

    Example:
        >>> load_config(ControlConfig, overrides=["lr=5e-4", "buffer_size=1e4"]).lr
        0.0005
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data.update(_read_yaml(pathlib.Path(path).resolve(), cls))
    hints = get_type_hints(cls)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = cls.ALIASES.get(key.strip(), key.strip())  # an override wins in either spelling
        data[key] = value if hints.get(key) is str else _parse_value(value)
        source = f"{source} + overrides"
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, [*names, *cls.ALIASES], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: unknown config key in {source}{hint}")
    return cls(**data)


def config_diff(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs: ``{name: (a, b)}``."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return {k: (da[k], db.get(k)) for k in da if k not in ignore and da[k] != db.get(k)}
