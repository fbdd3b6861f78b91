"""EauDeQN / PolyPruneQN / DQN on small discrete tasks: the CPU testbed of the study.

The same components as the Atari recipe (masked ensemble actor, EauDeQN
loss, target-selection and polynomial-pruning updaters, the Lightning base
:class:`~torchrl_eaudeqn.lightning.OnlineRLModule`), on tasks that learn in
minutes on one CPU core:

* classic control (``CartPole-v1``, ``Acrobot-v1``, any discrete Gymnasium
  id) with an MLP of two hidden layers of ``width`` units;
* MinAtar games (``minatar:breakout``, ``minatar:asterix``, ...; the
  ``minatar`` package) with a small CNN: one 16-channel 3x3 convolution and a
  hidden dense layer of ``width`` units, as in the MinAtar paper's DQN.

``recipes/control_dqn.py`` runs one config; ``recipes/study.py`` runs a grid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import RandomSampler
from torchrl.envs import Compose, EnvBase, RewardSum, StepCounter, TransformedEnv

from .config import ConfigError, _f, _validate
from .envs import make_control_env
from .lightning import EnsembleDQNModule, MLflowMetrics
from .modules import mlp

__all__ = [
    "MINATAR_GAMES",
    "ControlConfig",
    "ControlDQNModule",
    "make_minatar_env",
    "make_task_env",
    "minatar_cnn",
    "regression_trace",
]

#: MinAtar games, as ``minatar:<game>`` task names take them.
MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")


@dataclass
class ControlConfig:
    """EauDeQN / PolyPruneQN / DQN on a small discrete task (classic control or MinAtar).

    All step counts are env steps (the updater converts them to gradient
    steps with ``train_freq``). Defaults suit CartPole in 30k steps; the
    study's configs (``configs/study/``) set them per task.

    Example:
        >>> from torchrl_eaudeqn.config import load_config
        >>> cfg = load_config(ControlConfig, overrides=["task=Acrobot-v1", "width=32"])
        >>> cfg.task, cfg.width, cfg.members, cfg.run_key
        ('Acrobot-v1', 32, 5, 'Acrobot-v1-eaudeqn-w32-seed0')
    """

    method: str = _f(
        "eaudeqn", "eaudeqn | polyprune | dqn", choices=("eaudeqn", "polyprune", "dqn")
    )
    task: str = _f("CartPole-v1", "Gymnasium id with a Discrete action space, or minatar:<game>")
    width: int = _f(
        128, "hidden width (MLP: both hidden layers; MinAtar CNN: the dense layer)", min=1
    )
    seed: int = _f(0, "random seed (torch, numpy, env)", min=0)
    env_steps: int = _f(30_000, "env steps in total", min=1)
    # EauDeQN
    num_members: int = _f(5, "K online networks (eaudeqn)", min=1)
    max_speed: float = _f(0.1, "fastest pruning speed per target update", min=0.0, max=1.0)
    speed_policy: str = _f("grid", "grid | noisy", choices=("grid", "noisy"))
    max_noise: float = _f(3.0, "spread of the noisy speed policy", min=1.0)
    prune_scope: str = _f("global", "global | layer magnitude ranking", choices=("global", "layer"))
    reset_optimizer: bool = _f(True, "reset Adam state at each target update (eaudeqn)")
    # PolyPruneQN
    final_sparsity: float = _f(0.95, "polyprune final sparsity", min=0.0, max=0.999999)
    prune_start: int = _f(3_000, "polyprune schedule start (env steps)", min=0)
    prune_end: int = _f(24_000, "polyprune schedule end (env steps)", min=1)
    prune_every: int = _f(300, "polyprune mask update interval (env steps)", min=1)
    # DQN
    lr: float = _f(1e-3, "Adam learning rate", min=0.0)
    adam_eps: float = _f(1e-8, "Adam epsilon", min=0.0)
    batch_size: int = _f(64, "replay batch size", min=1)
    buffer_size: int = _f(50_000, "replay capacity (transitions)", min=1)
    learning_starts: int = _f(1_000, "random env steps before learning", min=0)
    train_freq: int = _f(1, "env steps per gradient step", min=1)
    gamma: float = _f(0.99, "discount", min=0.0, max=1.0)
    loss_function: str = _f("l2", "l2 | smooth_l1 | l1", choices=("l2", "smooth_l1", "l1"))
    eps_start: float = _f(1.0, "initial epsilon", min=0.0, max=1.0)
    eps_end: float = _f(0.05, "final epsilon", min=0.0, max=1.0)
    eps_decay_steps: int = _f(10_000, "env steps of linear epsilon decay", min=1)
    target_period: int = _f(300, "env steps between target updates", min=1)
    # environment
    max_episode_steps: int = _f(0, "step cap per training episode (0: the task's own)", min=0)
    # evaluation
    eval_every: int = _f(0, "env steps between evaluations (0: only at the end)", min=0)
    eval_episodes: int = _f(10, "episodes per evaluation", min=1)
    eval_epsilon: float = _f(0.0, "epsilon during evaluation", min=0.0, max=1.0)
    eval_max_steps: int = _f(1000, "step cap per evaluation episode", min=1)
    eval_random_baseline: bool = _f(True, "also score a uniformly random policy at the start")
    # tracking, checkpoints, registry
    tracking_uri: str = _f("sqlite:///mlflow.db", "MLflow tracking URI")
    experiment: str = _f("eaudeqn-control", "MLflow experiment name")
    run_name: str = _f("", "MLflow run name (empty: generated)")
    run_tags: str = _f("", "extra MLflow run tags, key=value,key=value (the study's grid key)")
    log_every: int = _f(500, "env steps between metric logs", min=1)
    register: bool = _f(False, "register the final acting network in the model registry")
    register_name: str = _f("", "registered model name (empty: eaudeqn-<task>-<method>-w<width>)")
    register_alias: str = _f("final", "alias set on the new model version")
    checkpoint_dir: str = _f("checkpoints", "where Lightning checkpoints go")
    checkpoint_every: int = _f(10_000, "env steps between checkpoints", min=1)
    # compute
    use_vmap: str = _f("auto", "auto | true | false", choices=("auto", "true", "false"))
    threads: int = _f(0, "torch CPU threads (0: all cores)", min=0)
    device: str = _f("cpu", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
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
        if self.task.startswith("minatar:") and self.task[8:] not in MINATAR_GAMES:
            raise ConfigError(f"task: unknown MinAtar game {self.task[8:]!r} ({MINATAR_GAMES})")

    @property
    def members(self) -> int:
        """Online networks actually used: K for eaudeqn, 1 for the baselines."""
        return self.num_members if self.method == "eaudeqn" else 1

    @property
    def tags(self) -> dict[str, str]:
        """MLflow tags of a new run: method, task, width, and ``run_tags``."""
        tags = {"method": self.method, "task": self.task, "width": str(self.width)}
        for item in filter(None, self.run_tags.split(",")):
            key, _, value = item.partition("=")
            tags[key.strip()] = value.strip()
        return tags

    @property
    def task_name(self) -> str:
        """The task without its family prefix (``minatar:breakout`` -> ``breakout``)."""
        return self.task.split(":", 1)[-1]

    @property
    def model_name(self) -> str:
        """Registered model name."""
        return self.register_name or f"eaudeqn-{self.task_name}-{self.method}-w{self.width}"

    @property
    def run_key(self) -> str:
        """Names the run's checkpoint directory and its default MLflow run name."""
        return f"{self.task_name}-{self.method}-w{self.width}-seed{self.seed}"


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


def make_minatar_env(
    game: str,
    *,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    sticky_actions: float = 0.1,
) -> EnvBase:
    """A MinAtar game as a TorchRL env: observation float ``[C, 10, 10]``, one-hot actions.

    Uses the minimal action set (``MinAtar/<Game>-v1``) and MinAtar's own
    sticky actions (0.1, the package default). Adds ``episode_reward``
    (:class:`~torchrl.envs.RewardSum`) and ``step_count``.

    Args:
        game: one of :data:`MINATAR_GAMES` (``"breakout"``, ...).
        seed: env seed.
        max_episode_steps: a step cap (``None``: none, as MinAtar).
        sticky_actions: probability that the previous action repeats.

    Example:
        >>> env = make_minatar_env("breakout", seed=0)
        >>> td = env.rollout(3)
        >>> td["observation"].shape, td["observation"].dtype, td["action"].shape
        (torch.Size([3, 4, 10, 10]), torch.float32, torch.Size([3, 3]))
    """
    import gymnasium as gym
    from minatar.gym import register_envs
    from torchrl.envs import GymWrapper

    if game not in MINATAR_GAMES:
        raise ValueError(f"game must be one of {MINATAR_GAMES}, got {game!r}")
    env_id = f"MinAtar/{game.title().replace('_', '')}-v1"
    if env_id not in gym.registry:
        register_envs()
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    genv = _channels_first(gym.make(env_id, sticky_action_prob=sticky_actions, **kwargs))
    env = TransformedEnv(GymWrapper(genv), Compose(RewardSum(), StepCounter()))
    if seed is not None:
        env.set_seed(seed)
    return env


def minatar_cnn(in_channels: int, n_actions: int, width: int = 128) -> nn.Sequential:
    """The MinAtar paper's DQN network with a configurable hidden width.

    Conv 16 3x3 (stride 1) + ReLU, a dense layer of ``width`` units + ReLU,
    a linear head. On 10x10 inputs the dense layer holds most weights
    (``1024 * width``), as the first dense layer does in the Nature CNN.

    Example:
        >>> minatar_cnn(4, 3, width=32)(torch.zeros(2, 4, 10, 10)).shape
        torch.Size([2, 3])
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(-3),  # also for unbatched [C, H, W] input (single env step)
        nn.Linear(16 * 8 * 8, int(width)),
        nn.ReLU(),
        nn.Linear(int(width), int(n_actions)),
    )


def make_task_env(cfg: ControlConfig, seed: int, eval: bool = False) -> EnvBase:
    """The env of ``cfg.task`` (classic control or MinAtar), one-hot actions.

    Example:
        >>> make_task_env(ControlConfig(task="CartPole-v1"), seed=0).action_spec.shape
        torch.Size([2])
    """
    cap = cfg.eval_max_steps if eval else (cfg.max_episode_steps or None)
    if cfg.task.startswith("minatar:"):
        return make_minatar_env(cfg.task_name, seed=seed, max_episode_steps=cap)
    return make_control_env(cfg.task, seed=seed, max_episode_steps=cap)


# --------------------------------------------------------------------------- module
class ControlDQNModule(EnsembleDQNModule):
    """EauDeQN, PolyPruneQN or DQN on a small discrete task, trained online.

    Each ``training_step`` collects ``train_freq`` env steps with TorchRL's
    :class:`~torchrl.collectors.Collector` (epsilon-greedy on the acting
    member through :class:`~torchrl.modules.EGreedyModule`; uniformly random
    for the first ``learning_starts`` steps), stores them in a TorchRL
    :class:`~torchrl.data.ReplayBuffer` (``LazyTensorStorage``, uniform), and
    once ``learning_starts`` steps are in takes one gradient step of
    :class:`~torchrl_eaudeqn.EauDeQNLoss`. The updater
    (:func:`~torchrl_eaudeqn.lightning.build_updater`) runs after it through
    :class:`~torchrl_eaudeqn.lightning.TargetSelectionCallback`.

    Args:
        cfg: the validated :class:`ControlConfig`.
        env_fn: ``fn(seed, eval) -> EnvBase``; default :func:`make_task_env`.
        metrics: where metrics go (an :class:`~torchrl_eaudeqn.lightning.MLflowMetrics`).

    Example:
        >>> cfg = ControlConfig(task="CartPole-v1", num_members=3, width=16, buffer_size=100)
        >>> module = ControlDQNModule(cfg)
        >>> module.actor.num_members, module.n_actions, type(module.updater).__name__
        (3, 2, 'TargetSelectionUpdater')
    """

    episode_metric = "episode_return"
    episode_return_key = "episode_reward"
    progress_return_name = "return"
    #: What the replay keeps of a collected step (nothing else is read by the loss).
    REPLAY_KEYS = (
        "observation",
        "action",
        ("next", "observation"),
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
    )

    def __init__(
        self,
        cfg: ControlConfig,
        env_fn: Callable[..., EnvBase] | None = None,
        metrics: MLflowMetrics | None = None,
    ) -> None:
        env_fn = env_fn or functools.partial(make_task_env, cfg)
        super().__init__(cfg, env_fn, metrics)
        probe = env_fn(seed=cfg.seed, eval=True)
        action_spec = probe.action_spec
        obs_shape = tuple(probe.observation_spec["observation"].shape)
        probe.close()
        self.n_actions = int(action_spec.space.n)
        if len(obs_shape) == 3:
            net = minatar_cnn(obs_shape[0], self.n_actions, cfg.width)
        else:
            net = mlp(obs_shape[-1], self.n_actions, hidden=(cfg.width, cfg.width))
        self._build_ensemble(net, action_spec)
        self.replay = ReplayBuffer(
            storage=LazyTensorStorage(cfg.buffer_size),
            sampler=RandomSampler(),
            batch_size=cfg.batch_size,
        )
        self._collector: Collector | None = None
        self._iter: Iterator[TensorDictBase] | None = None

    # ------------------------------------------------------------ plumbing
    def _start_collection(self) -> None:
        cfg = self.cfg
        env = self.env_fn(seed=cfg.seed + self.env_steps, eval=False)
        self._collector = Collector(
            env,
            TensorDictSequential(self.actor.policy, self.explore),
            frames_per_batch=cfg.train_freq,
            total_frames=-1,
            init_random_frames=max(0, cfg.learning_starts - self.env_steps),
            device=self.device,
            storing_device="cpu",
        )
        self._iter = iter(self._collector)

    def _stop_collection(self) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = None

    # ------------------------------------------------------------ training
    def collect_and_learn(self) -> dict[str, torch.Tensor] | None:
        cfg = self.cfg
        while self._credit > 0:
            data = next(self._iter).reshape(-1)
            self.replay.extend(data.select(*self.REPLAY_KEYS))
            n = data.numel()
            self._credit -= n
            self.env_steps += n
            if self.env_steps > cfg.learning_starts:
                self.explore.step(n)
            self._record_episodes(data)
        if not self._learning():
            return None
        losses = self.loss_module(self.replay.sample().to(self.device))
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(losses["loss"])
        opt.step()
        self._member_losses.append(losses["loss_per_member"])
        return {"loss_per_member": losses["loss_per_member"]}


# --------------------------------------------------------------------------- regression
def regression_trace(cfg: ControlConfig) -> dict[str, Any]:
    """Train ``cfg`` without tracking and return what a behaviour change would alter.

    One torch thread and fixed seeds make the run deterministic on one
    machine; the trace holds, per target update, the env step, the selected
    member, every member's sparsity after the update and the period's
    summed losses, plus the final evaluation return.

    Example:
        >>> cfg = ControlConfig(env_steps=40, learning_starts=20, target_period=10,
        ...     batch_size=8, num_members=2, width=8, eval_episodes=1,
        ...     eval_random_baseline=False, progress_bar=False)
        >>> trace = regression_trace(cfg)
        >>> len(trace["updates"]), sorted(trace["updates"][0])
        (2, ['env_step', 'loss_sums', 'selected', 'sparsity'])
    """
    import lightning as L

    from .lightning import TargetSelectionCallback

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = ControlDQNModule(cfg)
        updates: list[dict[str, Any]] = []

        def on_update(entry: dict[str, Any]) -> None:
            if entry.get("event", "target") != "target":
                return
            updates.append(
                {
                    "env_step": module.env_steps,
                    "selected": int(entry.get("selected", 0)),
                    "sparsity": [round(float(s), 8) for s in entry["sparsity"]],
                    "loss_sums": [float(x) for x in entry.get("loss_sums", [])],
                }
            )

        trainer = L.Trainer(
            max_epochs=-1,
            accelerator="cpu",
            devices=1,
            logger=False,
            callbacks=[TargetSelectionCallback(module.updater, on_update=on_update)],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module)
        result = module.evaluate(cfg.eval_episodes)
        return {
            "env_steps": module.env_steps,
            "updates": updates,
            "final_sparsity": [round(float(s), 8) for s in module.actor.sparsity()],
            "eval_return_mean": result["eval/return_mean"],
        }
    finally:
        torch.set_num_threads(threads)
