"""Lightning training for EauDeQN and its baselines (Atari).

* :class:`TargetSelectionCallback`: the updater as a Lightning callback
  (``updater.step`` after every gradient step; its state in checkpoints).
* :class:`DQNLightningModule`: the online loop with manual optimisation.
  Each ``training_step`` collects ``train_freq`` env steps (epsilon-greedy on
  the acting member), stores them in the frame replay, and, once
  ``learning_starts`` steps are in, takes one gradient step on a replay
  batch. ``collector: overlapped`` (default) collects with
  :class:`~torchrl_eaudeqn.collectors.AtariCollector` in a worker thread
  while the learner runs its forward and backward passes;
  ``collector: torchrl`` uses TorchRL's ``Collector`` on
  :func:`~torchrl_eaudeqn.envs.make_atari_env`, sequentially.
* :class:`MLflowMetrics`: buffered metric logging keyed by env step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.modules import EGreedyModule

from .collectors import AtariCollector, CollectedSteps, aliased_member_network, linear_epsilon
from .config import AtariConfig
from .envs import make_atari_gym_env
from .modules import MaskedEnsembleQValueActor, nature_cnn
from .objectives import EauDeQNLoss
from .replay import FrameReplayBuffer
from .sparsity import make_speed_policy, sparsity_stats
from .updaters import PolyPruneUpdater, TargetSelectionUpdater

__all__ = ["DQNLightningModule", "MLflowMetrics", "TargetSelectionCallback", "build_updater"]


class TargetSelectionCallback(L.Callback):
    """Runs a target updater after every gradient step of a LightningModule.

    The module's ``training_step`` returns a dict with ``loss_per_member``
    when it took a gradient step (and ``None`` otherwise); the callback
    passes it to ``updater.step``. The updater's state (sums, history,
    counters) is saved in and restored from Lightning checkpoints.

    Args:
        updater: a :class:`~torchrl_eaudeqn.TargetSelectionUpdater` or
            :class:`~torchrl_eaudeqn.PolyPruneUpdater`.
        on_update: optional ``fn(history_entry)`` called after each target update.

    Example:
        >>> from torchrl.data import OneHot
        >>> from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor, mlp
        >>> actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(8,)), 2, action_spec=OneHot(2))
        >>> loss = EauDeQNLoss(actor)
        >>> cb = TargetSelectionCallback(
        ...     TargetSelectionUpdater(loss, period=1, reset_optimizer=False))
        >>> cb.on_train_batch_end(None, None, {"loss_per_member": torch.tensor([2., 1.])}, None, 0)
        >>> cb.updater.history[-1]["selected"]
        1
    """

    def __init__(
        self,
        updater: TargetSelectionUpdater | PolyPruneUpdater,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.updater = updater
        self.on_update = on_update

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not outputs or "loss_per_member" not in outputs:
            return
        n_before = len(self.updater.history)
        self.updater.step(outputs["loss_per_member"])
        if self.on_update is not None:
            for entry in self.updater.history[n_before:]:
                self.on_update(entry)

    def state_dict(self) -> dict[str, Any]:
        return self.updater.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updater.load_state_dict(state_dict)


def build_updater(
    cfg: AtariConfig, loss: EauDeQNLoss, optimizer: torch.optim.Optimizer
) -> TargetSelectionUpdater | PolyPruneUpdater:
    """The config's updater; periods given in env steps become gradient steps."""
    per = cfg.train_freq
    period = max(1, cfg.target_period // per)
    if cfg.method == "polyprune":
        return PolyPruneUpdater(
            loss,
            optimizer,
            period=period,
            final_sparsity=cfg.final_sparsity,
            start=max(0, (cfg.prune_start - cfg.learning_starts) // per),
            end=max(1, (cfg.prune_end - cfg.learning_starts) // per),
            prune_every=max(1, cfg.prune_every // per),
            scope=cfg.prune_scope,
        )
    if cfg.method == "dqn":
        policy = make_speed_policy("grid", max_speed=0.0)
        return TargetSelectionUpdater(
            loss, optimizer, period=period, speed_policy=policy, reset_optimizer=False
        )
    kwargs = {"max_speed": cfg.max_speed}
    if cfg.speed_policy == "noisy":
        kwargs.update(max_noise=cfg.max_noise, seed=cfg.seed)
    return TargetSelectionUpdater(
        loss,
        optimizer,
        period=period,
        speed_policy=make_speed_policy(cfg.speed_policy, **kwargs),
        scope=cfg.prune_scope,
        reset_optimizer=cfg.reset_optimizer,
    )


class MLflowMetrics:
    """Buffers ``(key, value, env_step)`` and writes them in one ``log_batch`` call.

    Metrics are keyed by env step, so a resumed run continues the same
    curves; a flush that fails keeps the buffer for the next try.

    Example:
        >>> m = MLflowMetrics(client=None, run_id=None)
        >>> m.add("score", 1.0, step=10); len(m.pending)
        1
    """

    def __init__(self, client: Any, run_id: str | None) -> None:
        self.client = client
        self.run_id = run_id
        self.pending: list[Any] = []

    def add(self, key: str, value: float, step: int) -> None:
        if math.isfinite(float(value)):
            self.pending.append((key, float(value), int(step), int(time.time() * 1000)))

    def flush(self) -> None:
        if not self.pending or self.client is None:
            return
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, s) for k, v, s, ts in self.pending]
        for i in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        self.pending.clear()


class _StepStream(IterableDataset):
    """Yields until the module has collected its env-step budget (resume-aware)."""

    def __init__(self, module: DQNLightningModule) -> None:
        self.module = module

    def __iter__(self) -> Iterator[int]:
        while self.module.env_steps < self.module.cfg.env_steps:
            yield self.module.env_steps

    def __len__(self) -> int:
        cfg = self.module.cfg
        return max(0, math.ceil((cfg.env_steps - self.module.env_steps) / cfg.train_freq))


class DQNLightningModule(L.LightningModule):
    """EauDeQN, PolyPruneQN or DQN on one Atari game, trained online.

    Args:
        cfg: the validated :class:`~torchrl_eaudeqn.config.AtariConfig`.
        env_fn: ``fn(seed, num_envs, eval) -> EnvBase``; builds training
            and evaluation envs (the recipe passes ``make_atari_env``).
        metrics: where metrics go (an :class:`MLflowMetrics`), or ``None``.

    Example:
        >>> from torchrl_eaudeqn.envs import make_atari_env
        >>> cfg = AtariConfig(game="Pong", width="small", num_members=2, buffer_size=1000)
        >>> module = DQNLightningModule(
        ...     cfg, lambda seed, num_envs, eval: make_atari_env("Pong", seed=seed))
        >>> module.actor.num_members, module.n_actions, type(module.updater).__name__
        (2, 6, 'TargetSelectionUpdater')

        ``recipes/atari_dqn.py`` wires it to a Lightning ``Trainer``, MLflow and the registry.
    """

    def __init__(
        self,
        cfg: AtariConfig,
        env_fn: Callable[..., EnvBase],
        metrics: MLflowMetrics | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.env_fn = env_fn
        self.metrics = metrics or MLflowMetrics(None, None)
        self.automatic_optimization = False
        probe = env_fn(seed=cfg.seed, num_envs=1, eval=True)
        action_spec = probe.action_spec
        if action_spec.ndim > 1:
            action_spec = action_spec[0]
        probe.close()
        self.n_actions = int(action_spec.space.n)
        width = int(cfg.width) if str(cfg.width).isdigit() else cfg.width
        use_vmap = {"auto": None, "true": True, "false": False}[cfg.use_vmap]
        self.actor = MaskedEnsembleQValueActor(
            nature_cnn(self.n_actions, width),
            cfg.members,
            action_spec=action_spec,
            use_vmap=use_vmap,
        )
        self.loss_module = EauDeQNLoss(self.actor, loss_function=cfg.loss_function)
        self.loss_module.make_value_estimator(gamma=cfg.gamma)
        # fused Adam: the default (foreach) implementation was 8x the dense
        # step's optimizer time for K=5 on CPU (docs/benchmarks.md).
        self.optimizer = torch.optim.Adam(
            self.loss_module.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True
        )
        self.updater = build_updater(cfg, self.loss_module, self.optimizer)
        self.explore = EGreedyModule(
            action_spec,
            eps_init=cfg.eps_start,
            eps_end=cfg.eps_end,
            annealing_num_steps=cfg.eps_decay_steps,
        )
        self.replay = FrameReplayBuffer(
            capacity=cfg.buffer_size,
            frame_shape=(84, 84),
            stack=4,
            num_streams=cfg.num_envs,
            seed=cfg.seed,
            action_encoding="one_hot",
            n_actions=self.n_actions,
        )
        self.env_steps = 0
        self.episodes = 0
        self.last_score = float("nan")
        self._credit = 0
        self._member_losses: list[torch.Tensor] = []
        self._scores: list[float] = []
        self._collector: Collector | None = None
        self._iter: Iterator[TensorDictBase] | None = None
        self._fast: AtariCollector | None = None
        self._fast_state: dict[str, Any] | None = None
        self._acting_nets: dict[int, tuple[int, torch.nn.Module]] = {}
        self._clock = (time.perf_counter(), 0)
        self._last_log = 0
        self._last_eval = 0
        # A dict, not an attribute: an env is an nn.Module and would otherwise
        # put its transform buffers into the checkpoint's state_dict.
        self._envs: dict[str, EnvBase] = {}
        self.eval_results: list[dict[str, float]] = []

    # ------------------------------------------------------------ plumbing
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepStream(self), batch_size=None)

    def on_train_start(self) -> None:
        cfg = self.cfg
        if cfg.collector == "overlapped":
            self._start_fast_collector()
        else:
            self._start_torchrl_collector()
        if cfg.eval_random_baseline and self.env_steps == 0:
            self.evaluate(cfg.eval_episodes, epsilon=1.0, prefix="eval_random")
        self._clock = (time.perf_counter(), self.env_steps)

    def _start_fast_collector(self) -> None:
        cfg = self.cfg
        env_fn = functools.partial(
            make_atari_gym_env,
            cfg.game,
            frame_skip=cfg.frame_skip,
            sticky_actions=cfg.sticky_actions,
            max_episode_steps=cfg.max_episode_steps,
        )
        self._fast = AtariCollector(
            [env_fn] * cfg.num_envs,
            self._acting_network,
            self.n_actions,
            seed=cfg.seed + self.env_steps,
            device=self.device,
        )
        if self._fast_state is not None:
            self._fast.load_state_dict(self._fast_state)

    def _acting_network(self) -> torch.nn.Module:
        """The selected member as a plain module aliasing its parameters (cached)."""
        k = self.actor.selected
        ptr = next(iter(self.actor.params.values(True, True))).data_ptr()
        cached = self._acting_nets.get(k)
        if cached is None or cached[0] != ptr:
            cached = (ptr, aliased_member_network(self.actor, k))
            self._acting_nets[k] = cached
        return cached[1]

    def epsilon(self, step: int | None = None) -> float:
        """Exploration rate at env step ``step`` (default: now); 1 before ``learning_starts``."""
        cfg = self.cfg
        return linear_epsilon(
            self.env_steps if step is None else step,
            start=cfg.eps_start,
            end=cfg.eps_end,
            decay_steps=cfg.eps_decay_steps,
            warmup=cfg.learning_starts,
        )

    def _start_torchrl_collector(self) -> None:
        cfg = self.cfg
        env = self.env_fn(seed=cfg.seed + self.env_steps, num_envs=cfg.num_envs, eval=False)
        policy = TensorDictSequential(self.actor.policy, self.explore)
        self._collector = Collector(
            env,
            policy,
            frames_per_batch=cfg.num_envs * max(1, cfg.train_freq // cfg.num_envs),
            total_frames=-1,
            init_random_frames=max(0, cfg.learning_starts - self.env_steps),
            device=self.device,
            storing_device="cpu",
        )
        self._iter = iter(self._collector)

    def on_train_epoch_end(self) -> None:
        # Epochs carry no meaning here (the budget is env steps); stopping on
        # the budget lets a resumed run continue whatever epoch it was saved in.
        if self.env_steps >= self.cfg.env_steps:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        self.metrics.flush()
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = None
        if self._fast is not None:
            self._fast_state = self._fast.state_dict()
            self._fast.close()
            self._fast = None

    # ------------------------------------------------------------ training
    def _learning(self) -> bool:
        cfg = self.cfg
        # After a resume the replay starts empty (its contents are not in the
        # checkpoint): learning waits until it holds learning_starts again.
        warm = max(cfg.batch_size, min(cfg.learning_starts, cfg.buffer_size))
        return self.env_steps >= cfg.learning_starts and len(self.replay) >= warm

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        cfg = self.cfg
        # One call = ``train_freq`` env steps of credit and at most one gradient
        # step. With vectorised envs a batch holds ``num_envs`` steps per env
        # step, so a batch can pay for several calls: the ratio of one gradient
        # step per ``train_freq`` env steps holds for any ``num_envs``.
        self._credit += cfg.train_freq
        if self._fast is not None:
            out = self._overlapped_step()
        else:
            out = self._sequential_step()
        if self.env_steps - self._last_log >= cfg.log_every:
            self._log_progress()
        if cfg.eval_every and self.env_steps - self._last_eval >= cfg.eval_every:
            self._last_eval = self.env_steps
            self.evaluate(cfg.eval_episodes)
        return out

    def _overlapped_step(self) -> dict[str, torch.Tensor] | None:
        learn = self._learning()
        n = self.cfg.num_envs
        if self._credit > 0:
            step0 = self.env_steps
            self._fast.submit(
                -(-self._credit // n),
                lambda t: self.epsilon(step0 + t * n),
                network=self._acting_network(),
            )
        losses = None
        if learn:
            # Forward and backward only read the parameters, so the worker can
            # act with them meanwhile; the optimizer writes after the join.
            losses = self.loss_module(self.replay.sample(self.cfg.batch_size).to(self.device))
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(losses["loss"])
        if self._credit > 0:
            self._store(self._fast.result())
        if losses is None:
            return None
        opt.step()
        self._member_losses.append(losses["loss_per_member"])
        return {"loss_per_member": losses["loss_per_member"]}

    def _store(self, steps: CollectedSteps) -> None:
        for i in range(steps.action.shape[0]):
            self.replay.extend_stream(
                i,
                steps.observation[i],
                steps.action[i],
                steps.reward[i],
                steps.next_observation[i],
                steps.terminated[i],
                steps.truncated[i],
            )
        n = steps.num_steps
        self._credit -= n
        self.env_steps += n
        for _, score, length in steps.episodes:
            self._episode_end(score, length)

    def _episode_end(self, score: float, length: int) -> None:
        self.episodes += 1
        self.last_score = float(score)
        self._scores.append(float(score))
        self.metrics.add("episode_score", score, self.env_steps)
        self.metrics.add("episode_length", length, self.env_steps)

    def _sequential_step(self) -> dict[str, torch.Tensor] | None:
        cfg = self.cfg
        while self._credit > 0:
            batch_td = next(self._iter)
            self.replay.extend(batch_td)  # [num_envs, T] maps to one stream per env
            data = batch_td.reshape(-1)
            n = data.numel()
            self._credit -= n
            self.env_steps += n
            if self.env_steps > cfg.learning_starts:
                self.explore.step(n)
            self._record_episodes(data)
        if not self._learning():
            return None
        sample = self.replay.sample(cfg.batch_size).to(self.device)
        losses = self.loss_module(sample)
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(losses["loss"])
        opt.step()
        self._member_losses.append(losses["loss_per_member"])
        return {"loss_per_member": losses["loss_per_member"]}

    def _record_episodes(self, data: TensorDictBase) -> None:
        done = data.get(("next", "done")).reshape(-1)
        if done.any():
            scores = data.get(("next", "episode_score")).reshape(-1)[done]
            steps = data.get(("next", "step_count")).reshape(-1)[done]
            for score, length in zip(scores.tolist(), steps.tolist(), strict=True):
                self._episode_end(score, length)

    def _log_progress(self) -> None:
        now = time.perf_counter()
        t0, s0 = self._clock
        sps = (self.env_steps - s0) / max(now - t0, 1e-9)
        self._clock = (now, self.env_steps)
        self._last_log = self.env_steps
        m, step = self.metrics, self.env_steps
        sparsity = self.actor.sparsity()
        m.add("steps_per_sec", sps, step)
        eps = self.epsilon() if self.cfg.collector == "overlapped" else float(self.explore.eps)
        m.add("epsilon", eps, step)
        for k, s in enumerate(sparsity.tolist()):
            m.add(f"sparsity/member_{k}", s, step)
        target = sparsity_stats(
            dict(self.loss_module.target_value_network_params.flatten_keys(".").items()),
            dict(self.loss_module.target_masks.flatten_keys(".").items()),
        )
        m.add("sparsity/target", float(target["prunable"]), step)
        stats = self.actor.sparsity_stats()
        m.add("sparsity/selected_overall", float(stats["overall"][self.actor.selected]), step)
        if self._member_losses:
            mean = torch.stack(self._member_losses).mean(0).tolist()
            for k, v in enumerate(mean):
                m.add(f"td_loss/member_{k}", v, step)
            self._member_losses.clear()
        history = self.updater.history
        selected = history[-1].get("selected", 0) if history else 0
        m.add("selected_member", selected, step)
        m.flush()
        self.log_dict(
            {
                "env_steps": float(self.env_steps),
                "sps": sps,
                "score": self.last_score,
                "sparsity": float(sparsity[self.actor.selected]),
                "sel": float(selected),
            },
            prog_bar=True,
            logger=False,
            on_step=True,
        )

    # ---------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(
        self, episodes: int, epsilon: float | None = None, prefix: str = "eval"
    ) -> dict[str, float]:
        """Play ``episodes`` episodes (epsilon ``eval_epsilon``); log and return the scores.

        ``epsilon=1.0, prefix="eval_random"`` scores a uniformly random policy.
        """
        cfg = self.cfg
        eps = cfg.eval_epsilon if epsilon is None else epsilon
        if "eval" not in self._envs:
            self._envs["eval"] = self.env_fn(seed=cfg.seed + 10_000, num_envs=1, eval=True)
        env = self._envs["eval"]
        greedy = EGreedyModule(self.explore.spec, eps_init=eps, eps_end=eps).to(self.device)
        policy = TensorDictSequential(self.actor.policy, greedy)
        scores = []
        with set_exploration_type(ExplorationType.RANDOM):
            for _ in range(episodes):
                td = env.rollout(
                    cfg.eval_max_steps, policy, break_when_any_done=True, auto_cast_to_device=True
                )
                scores.append(float(td.get(("next", "score_reward")).sum()))
        result = {
            f"{prefix}/score_mean": float(np.mean(scores)),
            f"{prefix}/score_std": float(np.std(scores)),
            f"{prefix}/episodes": float(len(scores)),
        }
        for key, value in result.items():
            self.metrics.add(key, value, self.env_steps)
        self.metrics.flush()
        self.eval_results.append({"env_steps": self.env_steps, **result})
        return result

    # --------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["eaudeqn"] = {
            "config": dataclasses.asdict(self.cfg),
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "last_score": self.last_score,
            "credit": self._credit,
            "last_log": self._last_log,
            "last_eval": self._last_eval,
            "eval_results": list(self.eval_results),
            "rng": {
                "torch": torch.get_rng_state(),
                # Plain tensors and lists, so the checkpoint loads with
                # torch.load(weights_only=True).
                "numpy": _numpy_state_to_plain(np.random.get_state()),
                "python": _python_state_to_plain(random.getstate()),
            },
            "mlflow_run_id": self.metrics.run_id,
        }
        fast = self._fast.state_dict() if self._fast is not None else self._fast_state
        if fast is not None:
            checkpoint["eaudeqn"]["collector_rng"] = fast

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["eaudeqn"]
        self.env_steps = int(state["env_steps"])
        self.episodes = int(state["episodes"])
        self.last_score = float(state["last_score"])
        self._credit = int(state["credit"])
        self._last_log = int(state["last_log"])
        self._last_eval = int(state["last_eval"])
        self.eval_results = list(state["eval_results"])
        self._fast_state = state.get("collector_rng")
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_numpy_state_from_plain(state["rng"]["numpy"]))
        random.setstate(_python_state_from_plain(state["rng"]["python"]))


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}  # fmt: skip


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
