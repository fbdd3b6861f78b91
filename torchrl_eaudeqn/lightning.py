"""Lightning training for EauDeQN (Atari) and EauDeSAC (MuJoCo) and their baselines.

* :class:`TargetSelectionCallback`: the updater as a Lightning callback
  (``updater.step`` after every gradient step; its state in checkpoints).
  DQN and SAC updaters alike.
* :class:`OnlineRLModule`: what the online recipes share: the env-step
  budget, one gradient step per ``train_freq`` env steps, episode counters,
  periodic metric logging, the evaluation schedule and the checkpoint
  extras (config, counters, RNG states, MLflow run id, evaluation results).
* :class:`DQNLightningModule`: the Atari loop with manual optimisation.
  Each ``training_step`` collects ``train_freq`` env steps (epsilon-greedy on
  the acting member), stores them in the frame replay, and, once
  ``learning_starts`` steps are in, takes one gradient step on a replay
  batch. ``collector: lean`` (default) collects with
  :class:`~torchrl_eaudeqn.collectors.AtariCollector` (the Gymnasium env and
  the plain member network, no TensorDict on the hot path), in a worker
  thread beside the learner's forward and backward passes when
  ``overlap`` says so; ``collector: torchrl`` uses TorchRL's ``Collector``
  on :func:`~torchrl_eaudeqn.envs.make_atari_env`.
* :class:`SACLightningModule`: the MuJoCo loop: TorchRL ``Collector`` on
  :func:`~torchrl_eaudeqn.envs.make_continuous_env` acting with the selected
  actor member, TorchRL ``ReplayBuffer`` (``LazyTensorStorage``, uniform),
  :class:`~torchrl_eaudeqn.EauDeSACLoss`, one gradient step per
  ``train_freq`` env steps, evaluation with the deterministic selected actor.
* :class:`MLflowMetrics`: buffered metric logging keyed by env step.
* :class:`EnvStepProgressBar`: Lightning's tqdm bar counting env steps of the budget.
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import RandomSampler
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.modules import EGreedyModule

from .checkpointing import CheckpointError, load_checkpoint_file, verify_dir, write_dir_atomic
from .collectors import AtariCollector, CollectedSteps, aliased_member_network, linear_epsilon
from .config import EVAL_SEED_OFFSET, AtariConfig, SACConfig
from .console import human_count, human_percent, human_value
from .credentials import redact_text, redacted_config
from .envs import make_atari_gym_env
from .modules import MaskedEnsembleQValueActor, nature_cnn
from .objectives import EauDeQNLoss
from .replay import FrameReplayBuffer
from .sac import (
    EauDeSACLoss,
    MaskedEnsembleTanhGaussianActor,
    MaskedEnsembleTwinQ,
    PolyPruneSACUpdater,
    SACTargetSelectionUpdater,
)
from .sparsity import make_speed_policy, sparsity_stats
from .updaters import PolyPruneUpdater, TargetSelectionUpdater

__all__ = [
    "FLUSHED_TAG",
    "MAX_PENDING",
    "DQNLightningModule",
    "EnsembleDQNModule",
    "EnvStepProgressBar",
    "MLflowMetrics",
    "MLflowUnavailable",
    "OnlineRLModule",
    "SACLightningModule",
    "TargetSelectionCallback",
    "build_sac_updater",
    "build_updater",
]

#: Per-member loss keys a SAC updater reads (``training_step`` returns them as ``member_losses``).
SAC_MEMBER_LOSS_KEYS = ("loss_actor_per_member", "loss_qvalue_per_member")


class TargetSelectionCallback(L.Callback):
    """Runs a target updater after every gradient step of a LightningModule.

    The module's ``training_step`` returns, when it took a gradient step, a
    dict with ``loss_per_member`` (DQN updaters: a ``[K]`` tensor) or
    ``member_losses`` (SAC updaters: a TensorDict with
    ``loss_actor_per_member`` and ``loss_qvalue_per_member``), and ``None``
    otherwise; the callback passes it to ``updater.step``. The updater's
    state (sums, history, counters) is saved in and restored from Lightning
    checkpoints.

    Args:
        updater: a :class:`~torchrl_eaudeqn.TargetSelectionUpdater`,
            :class:`~torchrl_eaudeqn.PolyPruneUpdater`,
            :class:`~torchrl_eaudeqn.SACTargetSelectionUpdater` or
            :class:`~torchrl_eaudeqn.PolyPruneSACUpdater`.
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
        updater: TargetSelectionUpdater
        | PolyPruneUpdater
        | SACTargetSelectionUpdater
        | PolyPruneSACUpdater,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.updater = updater
        self.on_update = on_update

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not outputs:
            return
        losses = outputs.get("loss_per_member", outputs.get("member_losses"))
        if losses is None:
            return
        before = self.updater.history_total
        self.updater.step(losses)
        if self.on_update is not None:
            for entry in self.updater.recent(self.updater.history_total - before):
                self.on_update(entry)

    def state_dict(self) -> dict[str, Any]:
        return self.updater.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updater.load_state_dict(state_dict)


class _EnvStepTqdm(Tqdm):
    """Lightning's tqdm writing env steps with :func:`~torchrl_eaudeqn.console.human_count`."""

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        d["steps"] = human_count(d["n"])
        d["budget"] = human_count(d["total"]) if d["total"] else "?"
        return d


class EnvStepProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, counting the env steps of an :class:`OnlineRLModule`.

    Its total is the env-step budget (``cfg.env_steps``) and it starts at the
    module's env steps (a resumed run starts where it stopped); the rate is
    env steps per second of this fit (the random baseline before the first
    step is not counted). The postfix shows the last training episode's
    score, the last evaluation, the acting network's sparsity and the
    selected member (:meth:`OnlineRLModule._log_metrics`), formatted by
    :mod:`torchrl_eaudeqn.console` (``17.0k``, ``1,520``, ``75.8%``).

    Args:
        description: text before the bar (the recipes pass the task).
        refresh_rate: training steps between redraws.

    Example:
        >>> EnvStepProgressBar.format_postfix(
        ...     {"score": 1520.0, "sparsity": 0.7581, "member": 2.0}, last_eval=float("nan"))
        'score 1,520 | eval - | 75.8% sparse, member 2'
        >>> EnvStepProgressBar.format_postfix({"return": -36.2, "sparsity_actor": 0.3,
        ...     "sparsity_critic": 0.0, "member_actor": 2.0, "member_critic": 0.0}, 757.5)
        'return -36.2 | eval 758 | actor 30.0% sparse, member 2 | critic 0.0% sparse, member 0'

    A run shows ``EauDeQN on RoadRunner:  34%|███▍ | 17.0k/50.0k [01:52<03:38,
    152 steps/s, score 900 | eval 940 | 75.8% sparse, member 2]``.
    """

    BAR_FORMAT = "{l_bar}{bar}| {steps}/{budget} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"

    def __init__(self, description: str = "training", refresh_rate: int = 50) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=False)
        self.description = description

    @staticmethod
    def format_postfix(progress: dict[str, float], last_eval: float) -> str:
        """The postfix: last episode score, last evaluation, then sparsity and member per network.

        ``progress``'s first entry is the episode score; ``sparsity`` /
        ``member`` (or ``sparsity_<network>`` / ``member_<network>``) the rest.
        """
        items = list(progress.items())
        parts = [f"{k} {human_value(v)}" for k, v in items[:1]]
        parts.append(f"eval {human_value(last_eval)}")
        networks: dict[str, dict[str, float]] = {}
        for key, value in items[1:]:
            what, _, network = key.partition("_")
            networks.setdefault(network, {})[what] = value
        for network, values in networks.items():
            text = [f"{human_percent(values['sparsity'])} sparse"] if "sparsity" in values else []
            if "member" in values and math.isfinite(values["member"]):
                text.append(f"member {values['member']:.0f}")
            parts.append(f"{network} " * bool(network) + ", ".join(text))
        return " | ".join(parts)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._budget = (int(pl_module.cfg.env_steps), int(pl_module.env_steps))
        super().on_train_start(trainer, pl_module)

    def init_train_tqdm(self) -> Tqdm:
        total, initial = getattr(self, "_budget", (None, 0))
        return _EnvStepTqdm(
            desc=self.description,
            total=total,
            initial=initial,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            unit=" steps",
            unit_scale=True,
            bar_format=self.BAR_FORMAT,
        )

    def _show(self, pl_module: Any, postfix: bool = True) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        if postfix:
            bar.set_postfix_str(self.postfix(pl_module), refresh=False)
        bar.n = int(pl_module.env_steps)
        bar.refresh()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning's bar counts batches of the epoch; this one counts env steps
        # of the whole budget, and its clock starts here (after any baseline).
        bar = self.train_progress_bar
        bar.reset(total=int(pl_module.cfg.env_steps))
        bar.initial = bar.n = bar.last_print_n = int(pl_module.env_steps)
        bar.set_description(self.description, refresh=False)
        self._show(pl_module)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = pl_module.env_steps >= pl_module.cfg.env_steps
        if self.is_enabled and ((batch_idx + 1) % self.refresh_rate == 0 or done):
            self._show(pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._show(pl_module)

    def postfix(self, pl_module: Any) -> str:
        """:meth:`format_postfix` of the module's latest progress and evaluation."""
        key = f"eval/{pl_module.EVAL_NAME}_mean"
        evals = [r[key] for r in pl_module.eval_results if key in r]
        return self.format_postfix(dict(pl_module.progress), evals[-1] if evals else float("nan"))

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, str]:
        # Lightning's own hooks would set these as the postfix; this bar writes postfix().
        return {}


def build_updater(
    cfg: AtariConfig, loss: EauDeQNLoss, optimizer: torch.optim.Optimizer
) -> TargetSelectionUpdater | PolyPruneUpdater:
    """The config's updater; periods given in env steps become gradient steps."""
    per = cfg.train_freq
    period = max(1, cfg.target_period // per)
    # ControlConfig (MLPs, no convolutions) has no prune_structure field.
    structure = getattr(cfg, "prune_structure", "weights")
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
            structure=structure,
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
        structure=structure,
        reset_optimizer=cfg.reset_optimizer,
    )


def build_sac_updater(
    cfg: SACConfig, loss: EauDeSACLoss, optimizer: torch.optim.Optimizer
) -> SACTargetSelectionUpdater | PolyPruneSACUpdater:
    """The SAC config's updater; periods given in env steps become gradient steps.

    * ``eaudesac``: :class:`~torchrl_eaudeqn.SACTargetSelectionUpdater`, selection
      every ``selection_period`` env steps, the same speed policy (separate
      objects) for critics and actors;
    * ``polyprune``: :class:`~torchrl_eaudeqn.PolyPruneSACUpdater`, schedule
      counted from the first gradient step;
    * ``sac``: one member each, zero speeds, Adam state kept (dense SAC).
    """
    per = cfg.train_freq
    if cfg.method == "polyprune":
        return PolyPruneSACUpdater(
            loss,
            optimizer,
            tau=cfg.tau,
            final_sparsity=cfg.final_sparsity,
            start=max(0, (cfg.prune_start - cfg.learning_starts) // per),
            end=max(1, (cfg.prune_end - cfg.learning_starts) // per),
            prune_every=max(1, cfg.prune_every // per),
            scope=cfg.prune_scope,
        )
    period = max(1, cfg.selection_period // per)
    if cfg.method == "sac":
        return SACTargetSelectionUpdater(
            loss,
            optimizer,
            period=period,
            tau=cfg.tau,
            speed_policy=make_speed_policy("grid", max_speed=0.0),
            reset_optimizer=False,
        )

    def policy(seed: int):
        kwargs = {"max_speed": cfg.max_speed}
        if cfg.speed_policy == "noisy":
            kwargs.update(max_noise=cfg.max_noise, seed=seed)
        return make_speed_policy(cfg.speed_policy, **kwargs)

    return SACTargetSelectionUpdater(
        loss,
        optimizer,
        period=period,
        tau=cfg.tau,
        speed_policy=policy(cfg.seed),
        # Its own random stream: the actor's speeds are drawn independently.
        actor_speed_policy=policy(cfg.seed + 1),
        scope=cfg.prune_scope,
        reset_optimizer=cfg.reset_optimizer,
        hard_copy_on_selection=cfg.hard_copy_on_selection,
    )


class MLflowUnavailable(RuntimeError):
    """The tracking store stayed unreachable for longer than the metric buffer allows."""


#: Metric points :class:`MLflowMetrics` keeps while the store is down (~170 bytes each in
#: memory, ~30 in a checkpoint: 17 MB and 3 MB at the limit).
MAX_PENDING = 100_000


#: Run tag holding the last env step whose metrics reached the store.
FLUSHED_TAG = "torchrl_eaudeqn.flushed_step"


class MLflowMetrics:
    """Buffers ``(key, value, env_step)`` and writes them in one ``log_batch`` call.

    Metrics are keyed by env step, so a resumed run continues the same curves.
    Nothing is lost silently:

    * a flush that fails (tracking server down, database locked) keeps the
      buffer and is retried at the next flush; once the store has failed
      every flush for ``max_outage_s`` seconds (and at least 3 in a row),
      :class:`MLflowUnavailable` stops training (the recipe then
      checkpoints, and the unsent metrics travel in the checkpoint, see
      ``pending``). Time, not a count of flushes: how many flushes an
      outage spans depends on ``log_every`` and the run's speed;
    * the buffer is bounded: a failed flush with ``max_pending`` points or
      more kept stops training the same way, whatever the time (a fast run
      with per-episode metrics fills memory long before ``max_outage_s``);
    * each successful flush records the newest env step it sent in the run's
      ``torchrl_eaudeqn.flushed_step`` tag; a resumed run
      (:meth:`resume_from_store`) skips points at or below it, and below each
      key's newest stored step (a kill between a batch and its tag write
      leaves the tag behind), so the steps it replays after its checkpoint
      are not logged twice.

    Args:
        client: an ``MlflowClient`` (``None``: buffer only).
        run_id: the run the points go to.
        max_outage_s: seconds of failed flushes before training stops.
        max_pending: points kept before a failed flush stops training
            (``None``: :data:`MAX_PENDING`).
        clock: the time source (tests).

    Example:
        >>> m = MLflowMetrics(client=None, run_id=None)
        >>> m.add("score", 1.0, step=10); len(m.pending)
        1
        >>> m.skip_through = 10; m.add("score", 2.0, step=10); len(m.pending)
        1
    """

    def __init__(
        self,
        client: Any,
        run_id: str | None,
        max_outage_s: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.pending: list[Any] = []
        self.skip_through = -1
        self.max_outage_s = max_outage_s
        self.max_pending = MAX_PENDING if max_pending is None else int(max_pending)
        self.clock = clock
        self._down_since = 0.0
        self.failures = 0
        self.last_error: str | None = None
        self._tag_due = -1  # newest env step sent whose flushed-step tag is not written yet
        self.skip_keys: dict[str, int] = {}  # per key: newest step already in the store

    def _sent(self, key: str, step: int) -> bool:
        return step <= self.skip_through or step <= self.skip_keys.get(key, -1)

    def resume_from_store(self) -> None:
        """Read what the run's store already holds (called once, on resume)."""
        run = self.client.get_run(self.run_id)
        flushed = run.data.tags.get(FLUSHED_TAG)
        self.skip_through = max(self.skip_through, int(flushed) if flushed else -1)
        # Newest step per key: RunData keeps them (MLflow's latest_metrics);
        # the public fallback reads each key's history.
        latest = getattr(run.data, "_metric_objs", None)
        if latest is None:
            latest = [
                m
                for key in run.data.metrics
                for m in self.client.get_metric_history(self.run_id, key)
            ]
        for m in latest:
            self.skip_keys[m.key] = max(self.skip_keys.get(m.key, -1), int(m.step))

    def add(self, key: str, value: float, step: int) -> None:
        if self._sent(key, int(step)):
            return
        if math.isfinite(float(value)):
            self.pending.append((key, float(value), int(step), int(time.time() * 1000)))

    def flush(self) -> bool:
        """Send the buffer; ``False`` (buffer kept) when the store did not take it."""
        if (not self.pending and self._tag_due < 0) or self.client is None:
            return True
        from mlflow.entities import Metric

        todo = [p for p in self.pending if not self._sent(p[0], p[2])]
        metrics = [Metric(k, v, ts, s) for k, v, s, ts in todo]
        sent = 0
        try:
            for i in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
                self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
                sent = min(len(todo), i + 1000)
                # Points sent must be named by the tag even if the tag write
                # below fails: a resume would log them twice otherwise.
                self._tag_due = max(self._tag_due, max(p[2] for p in todo[:sent]))
            if self._tag_due >= 0:
                self.client.set_tag(self.run_id, FLUSHED_TAG, str(self._tag_due))
                self._tag_due = -1
        except Exception as err:  # noqa: BLE001 - any store error: keep the buffer, retry later
            # Batches already sent are dropped from the buffer, so a retry does
            # not send them twice.
            self.pending = todo[sent:]
            self.failures += 1
            first = str(err).splitlines()[0] if str(err) else ""
            self.last_error = redact_text(f"{type(err).__name__}: {first}")  # it names the URI
            if self.failures == 1:
                self._down_since = self.clock()
                print(
                    f"warning: MLflow store unreachable ({self.last_error}); keeping "
                    f"{len(self.pending)} metric points, retrying at each log",
                    file=sys.stderr,
                )
            down = self.clock() - self._down_since
            if self.failures >= 3 and down >= self.max_outage_s:
                raise MLflowUnavailable(
                    f"MLflow tracking store unreachable for {down:.0f} s ({self.failures} "
                    f"flushes in a row; {self.last_error}); {len(self.pending)} metric points "
                    "kept in the checkpoint"
                ) from None
            if len(self.pending) >= self.max_pending:
                raise MLflowUnavailable(
                    f"MLflow tracking store unreachable ({self.failures} flushes in a row, "
                    f"{down:.0f} s; {self.last_error}) and {len(self.pending)} metric points "
                    f"buffered, the limit (max_pending {self.max_pending}): training stopped, "
                    "the points are kept in the checkpoint"
                ) from None
            return False
        if self.failures:
            print(f"MLflow store back after {self.failures} failed flushes", file=sys.stderr)
        self.pending.clear()
        # skip_through only changes on resume: later points at an already sent
        # step (the final evaluation at the last log step) must still go out.
        self.failures = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        """Unsent points (they go into checkpoints, so an outage loses nothing)."""
        return {"pending": [list(p) for p in self.pending], "tag_due": self._tag_due}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = [tuple(p) for p in state.get("pending", [])] + self.pending
        # Points sent before the checkpoint whose tag write failed: skip them
        # too, and write the tag at the next flush.
        due = int(state.get("tag_due", -1))
        if due > self.skip_through:
            self.skip_through = self._tag_due = due


class _StepStream(IterableDataset):
    """Yields until the module has collected its env-step budget (resume-aware)."""

    def __init__(self, module: OnlineRLModule) -> None:
        self.module = module

    def __iter__(self) -> Iterator[int]:
        while self.module.env_steps < self.module.cfg.env_steps:
            yield self.module.env_steps

    def __len__(self) -> int:
        cfg = self.module.cfg
        return max(0, math.ceil((cfg.env_steps - self.module.env_steps) / cfg.train_freq))


class OnlineRLModule(L.LightningModule):
    """Base of the online recipes: budget, credit, counters, logging, evaluation, checkpoints.

    One ``training_step`` = ``train_freq`` env steps of credit and at most one
    gradient step; the "dataset" yields until ``cfg.env_steps`` env steps are
    collected, so a resumed run continues where it stopped. Subclasses
    build the networks, the loss, ``optimizer``, ``updater`` (with
    ``step(losses)`` and ``apply_masks_()``) and ``replay`` in ``__init__``
    and implement:

    * :meth:`collect_and_learn`: spend the credit on env steps (store them,
      call :meth:`_episode_end` for finished episodes), then take one
      gradient step when :meth:`_learning`; return what the updater callback
      reads (see :class:`TargetSelectionCallback`) or ``None``;
    * :meth:`evaluate` and :meth:`evaluate_random_baseline`;
    * :meth:`_log_metrics`: metrics of the current state, and what the
      progress bar shows;
    * optionally :meth:`_start_collection` / :meth:`_stop_collection`,
      :meth:`_checkpoint_extras` / :meth:`_load_checkpoint_extras`.

    Config fields read here: ``env_steps``, ``train_freq``, ``learning_starts``,
    ``batch_size``, ``buffer_size``, ``log_every``, ``eval_every``,
    ``eval_episodes``, ``eval_random_baseline``.

    Args:
        cfg: a validated config dataclass (:class:`~torchrl_eaudeqn.config.AtariConfig`,
            :class:`~torchrl_eaudeqn.config.SACConfig`).
        env_fn: builds training and evaluation envs (keyword arguments are
            the subclass's business).
        metrics: where metrics go (an :class:`MLflowMetrics`), or ``None``.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Cfg:
        ...     env_steps: int = 8
        ...     train_freq: int = 2
        >>> class Counter(OnlineRLModule):
        ...     def collect_and_learn(self):
        ...         self.env_steps += self._credit
        ...         self._credit = 0
        >>> module = Counter(Cfg(), env_fn=None)
        >>> len(module.train_dataloader().dataset), module.env_steps
        (4, 0)
    """

    #: Metric key of an episode's return (``_episode_end``).
    episode_metric = "episode_score"
    #: Key under ``"next"`` holding the running return (TorchRL ``RewardSum``).
    episode_return_key = "episode_score"
    #: Progress-bar name of the last episode's return.
    progress_return_name = "score"

    def __init__(self, cfg: Any, env_fn: Callable[..., EnvBase], metrics: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.env_fn = env_fn
        self.metrics = metrics or MLflowMetrics(None, None)
        self.automatic_optimization = False
        self.env_steps = 0
        self.episodes = 0
        self.last_score = float("nan")
        self._credit = 0
        self._clock = (time.perf_counter(), 0)
        self._last_log = 0
        self._last_eval = 0
        # A dict, not an attribute: an env is an nn.Module and would otherwise
        # put its transform buffers into the checkpoint's state_dict.
        self._envs: dict[str, EnvBase] = {}
        self.eval_results: list[dict[str, float]] = []
        #: What the progress bar shows beside the env steps (see :meth:`_log_metrics`).
        self.progress: dict[str, float] = {self.progress_return_name: float("nan")}
        #: Env steps when this fit started (the resumed step after a resume).
        self.start_steps = 0

    # ------------------------------------------------------- subclass hooks
    def collect_and_learn(self) -> dict[str, Any] | None:
        """Spend ``self._credit`` on env steps, then at most one gradient step."""
        raise NotImplementedError

    def evaluate(self, episodes: int, **kwargs: Any) -> dict[str, float]:
        """Play ``episodes`` evaluation episodes; log and return the results."""
        raise NotImplementedError

    def evaluate_random_baseline(self) -> dict[str, float]:
        """Score a uniformly random policy the way :meth:`evaluate` scores the agent."""
        raise NotImplementedError

    #: what an evaluation episode sums, and the metric name (``eval/<name>_mean``)
    EVAL_REWARD_KEY: tuple[str, str] = ("next", "reward")
    EVAL_NAME: str = "return"
    #: extra keyword arguments of ``env_fn`` for the evaluation env
    EVAL_ENV_KWARGS: dict[str, Any] = {}

    def _play_eval(
        self, policy: Any, episodes: int, exploration: ExplorationType, prefix: str
    ) -> dict[str, float]:
        """Play ``episodes`` episodes in the (kept) evaluation env; log and return the stats."""
        cfg = self.cfg
        if "eval" not in self._envs:
            self._envs["eval"] = self.env_fn(
                seed=cfg.seed + EVAL_SEED_OFFSET, eval=True, **self.EVAL_ENV_KWARGS
            )
        env = self._envs["eval"]
        totals, lengths = [], []
        with set_exploration_type(exploration):
            for _ in range(episodes):
                td = env.rollout(
                    cfg.eval_max_steps, policy, break_when_any_done=True, auto_cast_to_device=True
                )
                totals.append(float(td.get(self.EVAL_REWARD_KEY).sum()))
                lengths.append(td.shape[-1])
        name = self.EVAL_NAME
        return self._record_eval(
            {
                f"{prefix}/{name}_mean": float(np.mean(totals)),
                f"{prefix}/{name}_std": float(np.std(totals)),
                f"{prefix}/episode_length": float(np.mean(lengths)),
                f"{prefix}/episodes": float(len(totals)),
            }
        )

    def _log_metrics(self, step: int) -> dict[str, float]:
        """Add metrics at ``step``; return extra progress-bar entries.

        :class:`EnvStepProgressBar` shows a key starting with ``sparsity`` as a
        percentage and one starting with ``member`` as an index.
        """
        return {}

    def _start_collection(self) -> None:
        """Build collectors (called at the start of every fit, after device placement)."""

    def _stop_collection(self) -> None:
        """Release collectors at the end of a fit."""

    def _checkpoint_extras(self) -> dict[str, Any]:
        """Extra entries of the checkpoint's ``"eaudeqn"`` section."""
        return {}

    def _load_checkpoint_extras(self, state: dict[str, Any]) -> None:
        """Read back what :meth:`_checkpoint_extras` wrote."""

    # ------------------------------------------------------------ plumbing
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepStream(self), batch_size=None)

    def on_train_start(self) -> None:
        self.start_steps = self.env_steps
        self._start_collection()
        if self.cfg.eval_random_baseline and self.env_steps == 0:
            self.evaluate_random_baseline()
        self._clock = (time.perf_counter(), self.env_steps)

    def on_train_epoch_end(self) -> None:
        # Epochs carry no meaning here (the budget is env steps); stopping on
        # the budget lets a resumed run continue whatever epoch it was saved in.
        if self.env_steps >= self.cfg.env_steps:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        self.metrics.flush()
        self._stop_collection()

    # ------------------------------------------------------------ training
    def _learning(self) -> bool:
        cfg = self.cfg
        # After a resume the replay starts empty (its contents are not in the
        # checkpoint): learning waits until it holds learning_starts again.
        warm = max(cfg.batch_size, min(cfg.learning_starts, cfg.buffer_size))
        return self.env_steps >= cfg.learning_starts and self._replay_stored() >= warm

    def _replay_stored(self) -> int:
        """Transitions the replay holds, cheaply (called twice per gradient step).

        TorchRL's buffers answer ``len()`` in O(1); a subclass whose replay
        does not overrides this.
        """
        return len(self.replay)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any] | None:
        cfg = self.cfg
        # One call = ``train_freq`` env steps of credit and at most one gradient
        # step. With vectorised envs a batch holds ``num_envs`` steps per env
        # step, so a batch can pay for several calls: the ratio of one gradient
        # step per ``train_freq`` env steps holds for any ``num_envs``.
        self._credit += cfg.train_freq
        out = self.collect_and_learn()
        log_due = self.env_steps - self._last_log >= cfg.log_every
        # Not at the last step: the recipe's final evaluation logs that step.
        eval_due = (
            cfg.eval_every
            and self.env_steps - self._last_eval >= cfg.eval_every
            and self.env_steps < cfg.env_steps
        )
        if log_due or eval_due:
            # The optimizer step just ran and the updater callback has not yet
            # re-applied the masks: Adam has moved pruned weights off zero
            # (right after a selection's optimizer reset, each by ~lr), and an
            # evaluation here scored a different network from the one that
            # acts and is registered (RoadRunner, width 512: 980 at the 50k
            # evaluation; the checkpoint of that step scores 0 in every replay).
            self.updater.apply_masks_()
        if log_due:
            self._log_progress()
        if eval_due:
            self._last_eval = self.env_steps
            self.evaluate(cfg.eval_episodes)
        return out

    def _episode_end(self, score: float, length: int) -> None:
        self.episodes += 1
        self.last_score = float(score)
        self.metrics.add(self.episode_metric, score, self.env_steps)
        self.metrics.add("episode_length", length, self.env_steps)

    def _record_episodes(self, data: TensorDictBase) -> None:
        """Episodes that ended in a flat batch of collected steps (TorchRL keys)."""
        done = data.get(("next", "done")).reshape(-1)
        if done.any():
            scores = data.get(("next", self.episode_return_key)).reshape(-1)[done]
            steps = data.get(("next", "step_count")).reshape(-1)[done]
            for score, length in zip(scores.tolist(), steps.tolist(), strict=True):
                self._episode_end(score, length)

    def _log_progress(self) -> None:
        now = time.perf_counter()
        t0, s0 = self._clock
        sps = (self.env_steps - s0) / max(now - t0, 1e-9)
        self._clock = (now, self.env_steps)
        self._last_log = self.env_steps
        self.metrics.add("steps_per_sec", sps, self.env_steps)
        bar = self._log_metrics(self.env_steps)
        self.metrics.flush()
        # Read by EnvStepProgressBar (which counts env steps and shows its own rate).
        self.progress = {self.progress_return_name: self.last_score, **bar}

    def _record_eval(self, result: dict[str, float]) -> dict[str, float]:
        for key, value in result.items():
            self.metrics.add(key, value, self.env_steps)
        self.metrics.flush()
        self.eval_results.append({"env_steps": self.env_steps, **result})
        return result

    # --------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["eaudeqn"] = {
            # Without credentials: tracking_uri may change on resume, so nothing needs them.
            "config": redacted_config(self.cfg),
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
            "mlflow_pending": self.metrics.state_dict(),
            **self._checkpoint_extras(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["eaudeqn"]
        self.env_steps = int(state["env_steps"])
        self.episodes = int(state["episodes"])
        self.last_score = float(state["last_score"])
        self._credit = int(state["credit"])
        self._last_log = int(state["last_log"])
        self._last_eval = int(state["last_eval"])
        self.eval_results = list(state["eval_results"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_numpy_state_from_plain(state["rng"]["numpy"]))
        random.setstate(_python_state_from_plain(state["rng"]["python"]))
        if "mlflow_pending" in state:
            self.metrics.load_state_dict(state["mlflow_pending"])
        self._load_checkpoint_extras(state)

    # -------------------------------------------------------------- replay
    def save_replay(self, path: str | Path) -> None:
        """Write the replay buffer to directory ``path``: atomic, ``fsync``-ed, checksummed.

        :class:`~torchrl_eaudeqn.replay.FrameReplayBuffer` writes ``.npy``
        arrays and a JSON state; TorchRL's ``ReplayBuffer`` writes its
        ``state_dict()`` as one ``replay.pt`` (read back with
        ``weights_only=True``). Both go through
        :func:`~torchrl_eaudeqn.checkpointing.write_dir_atomic` (a temporary
        directory, a ``MANIFEST.sha256``, then a rename).

        Raises:
            CheckpointError: the write failed (one line; checkpoints untouched).
        """
        path = Path(path)

        def fill(tmp: Path) -> None:
            if isinstance(self.replay, FrameReplayBuffer):
                self.replay.dumps(tmp)
            else:
                # Not TorchRL's dumps(): its loads() unpickles a prefetch.pkl and
                # lets tensordict unpickle non-tensor leaves.
                torch.save(self.replay.state_dict(), tmp / _REPLAY_STATE)

        try:
            write_dir_atomic(path, fill)
        except CheckpointError as err:
            raise CheckpointError(f"replay buffer: {err}") from None

    def load_replay(self, path: str | Path, *, verify: bool = True) -> None:
        """Load a replay buffer written by :meth:`save_replay`; nothing in it can run code.

        Args:
            path: the ``stepN.replay`` directory.
            verify: check its ``MANIFEST.sha256`` first
                (:func:`~torchrl_eaudeqn.checkpointing.verify_dir`); ``False``
                when the caller has just done so.

        Raises:
            CheckpointError: the directory is damaged, holds something other
                than tensors, arrays and JSON, or does not fit this buffer (one line).
        """
        path = Path(path)
        if verify:
            verify_dir(path)
        try:
            if isinstance(self.replay, FrameReplayBuffer):
                self.replay.loads(path)
            else:
                state = load_checkpoint_file(path / _REPLAY_STATE)
                self.replay.load_state_dict(state)
        except CheckpointError as err:
            raise CheckpointError(f"replay buffer {path}: {err}") from None
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(
                f"replay buffer {path} does not load into this run's buffer ({first[:200]})"
            ) from None


#: The file of a TorchRL replay's ``state_dict()`` in its ``stepN.replay`` directory.
_REPLAY_STATE = "replay.pt"


class EnsembleDQNModule(OnlineRLModule):
    """What the DQN-family modules share: the ensemble, its loss, optimizer, updater and metrics.

    Subclasses (:class:`DQNLightningModule` for Atari,
    :class:`~torchrl_eaudeqn.control.ControlDQNModule` for the study's small
    tasks) build their network and replay, call :meth:`_build_ensemble`, and
    say how exploration is read (:meth:`epsilon_now`).

    Example:
        >>> from torchrl_eaudeqn.control import ControlConfig, ControlDQNModule
        >>> module = ControlDQNModule(ControlConfig(task="CartPole-v1", width=8, num_members=3))
        >>> isinstance(module, EnsembleDQNModule), module.actor.num_members, module.epsilon_now()
        (True, 3, 1.0)
    """

    def _build_ensemble(self, net: torch.nn.Module, action_spec: Any) -> None:
        cfg = self.cfg
        use_vmap = {"auto": None, "true": True, "false": False}[cfg.use_vmap]
        self.actor = MaskedEnsembleQValueActor(
            net, cfg.members, action_spec=action_spec, use_vmap=use_vmap
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
        self._member_losses: list[torch.Tensor] = []

    def epsilon_now(self) -> float:
        """The exploration rate acting uses now (TorchRL's annealed ``EGreedyModule``)."""
        return float(self.explore.eps)

    def _log_metrics(self, step: int) -> dict[str, float]:
        m = self.metrics
        sparsity = self.actor.sparsity()
        m.add("epsilon", self.epsilon_now(), step)
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
        return {"sparsity": float(sparsity[self.actor.selected]), "member": float(selected)}

    @torch.no_grad()
    def evaluate(
        self, episodes: int, epsilon: float | None = None, prefix: str = "eval"
    ) -> dict[str, float]:
        """Play ``episodes`` episodes (epsilon ``eval_epsilon``); log and return the returns.

        ``epsilon=1.0, prefix="eval_random"`` scores a uniformly random policy.
        """
        eps = self.cfg.eval_epsilon if epsilon is None else epsilon
        greedy = EGreedyModule(self.explore.spec, eps_init=eps, eps_end=eps).to(self.device)
        policy = TensorDictSequential(self.actor.policy, greedy)
        return self._play_eval(policy, episodes, ExplorationType.RANDOM, prefix)

    def evaluate_random_baseline(self) -> dict[str, float]:
        return self.evaluate(self.cfg.eval_episodes, epsilon=1.0, prefix="eval_random")


class DQNLightningModule(EnsembleDQNModule):
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

    # The raw game score (rewards are clipped only for learning), one env.
    EVAL_REWARD_KEY = ("next", "score_reward")
    EVAL_NAME = "score"
    EVAL_ENV_KWARGS = {"num_envs": 1}

    def __init__(
        self,
        cfg: AtariConfig,
        env_fn: Callable[..., EnvBase],
        metrics: MLflowMetrics | None = None,
    ) -> None:
        super().__init__(cfg, env_fn, metrics)
        probe = env_fn(seed=cfg.seed, num_envs=1, eval=True)
        action_spec = probe.action_spec
        if action_spec.ndim > 1:
            action_spec = action_spec[0]
        probe.close()
        self.n_actions = int(action_spec.space.n)
        width = int(cfg.width) if str(cfg.width).isdigit() else cfg.width
        self._build_ensemble(nature_cnn(self.n_actions, width), action_spec)
        self.replay = FrameReplayBuffer(
            capacity=cfg.buffer_size,
            frame_shape=(84, 84),
            stack=4,
            num_streams=cfg.num_envs,
            seed=cfg.seed,
            action_encoding="one_hot",
            n_actions=self.n_actions,
        )
        self._collector: Collector | None = None
        self._iter: Iterator[TensorDictBase] | None = None
        self._fast: AtariCollector | None = None
        self._fast_state: dict[str, Any] | None = None
        self._acting_nets: dict[int, tuple[int, torch.nn.Module]] = {}

    def _replay_stored(self) -> int:
        # FrameReplayBuffer's len() scans the whole capacity (13 ms at 1M) and,
        # once the buffer wraps, stays a few slots below capacity (so with
        # learning_starts >= buffer_size learning never began); num_stored is O(1).
        return self.replay.num_stored

    # ------------------------------------------------------------ plumbing
    def _start_collection(self) -> None:
        if self.cfg.collector == "lean":
            self._start_fast_collector()
        else:
            self._start_torchrl_collector()

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
            threaded=self.overlap,
            terminal_on_life_loss=cfg.terminal_on_life_loss,
        )
        if self._fast_state is not None:
            self._fast.load_state_dict(self._fast_state)

    @property
    def overlap(self) -> bool:
        """Whether the lean collector runs in a thread beside the learner.

        ``auto`` turns it on with a GPU learner or with cores to spare. On the
        2-core CPU machines it loses: the learner's OpenMP team uses both
        cores, and a third busy thread makes every parallel region wait for
        the descheduled one (dense DQN, Breakout: 0.75-0.78 of the learner
        bound overlapped vs 0.79 sequential; docs/benchmarks.md).
        """
        mode = self.cfg.overlap
        if mode != "auto":
            return mode == "true"
        if self.device.type == "cuda":
            return True
        return (os.cpu_count() or 1) >= torch.get_num_threads() + 2

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

    def _stop_collection(self) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = None
        if self._fast is not None:
            self._fast_state = self._fast.state_dict()
            self._fast.close()
            self._fast = None

    # ------------------------------------------------------------ training
    def collect_and_learn(self) -> dict[str, torch.Tensor] | None:
        if self._fast is not None:
            return self._lean_step()
        return self._sequential_step()

    def _lean_step(self) -> dict[str, torch.Tensor] | None:
        overlap = self._fast.threaded
        learn = self._learning()
        n = self.cfg.num_envs
        collecting = self._credit > 0
        if collecting:
            step0 = self.env_steps
            self._fast.submit(
                -(-self._credit // n),
                lambda t: self.epsilon(step0 + t * n),
                network=self._acting_network(),
            )
            if not overlap:
                # Sequential: the new steps are in the replay before sampling.
                self._store(self._fast.result())
                collecting = False
                learn = self._learning()
        losses = None
        if learn:
            # Forward and backward only read the parameters, so the worker can
            # act with them meanwhile; the optimizer writes after the join.
            losses = self.loss_module(self.replay.sample(self.cfg.batch_size).to(self.device))
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(losses["loss"])
        if collecting:
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

    def _sequential_step(self) -> dict[str, torch.Tensor] | None:
        cfg = self.cfg
        while self._credit > 0:
            batch_td = next(self._iter)
            if cfg.terminal_on_life_loss:
                nxt = batch_td.get("next")
                if "end-of-life" not in nxt.keys():
                    raise KeyError(
                        "terminal_on_life_loss needs the training env to write "
                        "('next', 'end-of-life'): make_atari_env(..., end_of_life=True)"
                    )
                nxt.set("terminated", nxt.get("terminated") | nxt.get("end-of-life"))
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

    def epsilon_now(self) -> float:
        if self.cfg.collector == "lean":
            return self.epsilon()
        return float(self.explore.eps)

    # --------------------------------------------------------- checkpoints
    def _checkpoint_extras(self) -> dict[str, Any]:
        fast = self._fast.state_dict() if self._fast is not None else self._fast_state
        return {} if fast is None else {"collector_rng": fast}

    def _load_checkpoint_extras(self, state: dict[str, Any]) -> None:
        self._fast_state = state.get("collector_rng")


class SACLightningModule(OnlineRLModule):
    """EauDeSAC, PolyPruneSAC or dense SAC on one continuous-control task, trained online.

    Each ``training_step`` collects ``train_freq`` env steps with TorchRL's
    :class:`~torchrl.collectors.Collector` (uniformly random actions for the
    first ``learning_starts`` steps, then samples of the selected actor
    member), stores them in a TorchRL :class:`~torchrl.data.ReplayBuffer`
    (``LazyTensorStorage``, uniform sampling) and, once ``learning_starts``
    steps are in, takes one gradient step of :class:`~torchrl_eaudeqn.EauDeSACLoss`
    on a replay batch: ``loss_actor + loss_qvalue + loss_alpha`` in one
    backward (each term only reaches its own parameters), one fused Adam
    over actor members, critic members and ``log_alpha``. The updater
    (:func:`build_sac_updater`) runs after it through
    :class:`TargetSelectionCallback`.

    Args:
        cfg: the validated :class:`~torchrl_eaudeqn.config.SACConfig`.
        env_fn: ``fn(seed, eval) -> EnvBase``; builds training and evaluation
            envs (the recipe passes :func:`~torchrl_eaudeqn.envs.make_continuous_env`).
        metrics: where metrics go (an :class:`MLflowMetrics`), or ``None``.

    Example:
        >>> from torchrl_eaudeqn.envs import make_continuous_env
        >>> cfg = SACConfig(env="Pendulum-v1", num_members=3, hidden=16, buffer_size=1000)
        >>> module = SACLightningModule(
        ...     cfg, lambda seed, eval: make_continuous_env(cfg.env, seed=seed))
        >>> module.actor.num_members, module.critic.num_members, type(module.updater).__name__
        (3, 3, 'SACTargetSelectionUpdater')
        >>> module.acting_policy()(torch.zeros(2, 3)).shape  # the deterministic selected actor
        torch.Size([2, 1])

        ``recipes/mujoco_sac.py`` wires it to a Lightning ``Trainer``, MLflow and the registry.
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
        ("next", "truncated"),
    )

    def __init__(
        self,
        cfg: SACConfig,
        env_fn: Callable[..., EnvBase],
        metrics: MLflowMetrics | None = None,
    ) -> None:
        super().__init__(cfg, env_fn, metrics)
        probe = env_fn(seed=cfg.seed, eval=True)
        action_spec = probe.action_spec
        if action_spec.ndim > 1:
            action_spec = action_spec[0]
        self.observation_dim = int(probe.observation_spec["observation"].shape[-1])
        probe.close()
        self.action_dim = int(action_spec.shape[-1])
        use_vmap = {"auto": None, "true": True, "false": False}[cfg.use_vmap]
        self.actor = MaskedEnsembleTanhGaussianActor(
            self.observation_dim,
            action_spec,
            cfg.members,
            hidden=cfg.hidden_sizes,
            use_vmap=use_vmap,
        )
        self.critic = MaskedEnsembleTwinQ(
            self.observation_dim,
            self.action_dim,
            cfg.members,
            hidden=cfg.hidden_sizes,
            use_vmap=use_vmap,
        )
        self.loss_module = EauDeSACLoss(
            self.actor,
            self.critic,
            loss_function=cfg.loss_function,
            alpha_init=cfg.alpha_init,
            fixed_alpha=cfg.fixed_alpha,
            target_entropy=cfg.target_entropy_value,
        )
        self.loss_module.make_value_estimator(gamma=cfg.gamma)
        # One Adam for actor, critics and alpha: Adam is per-parameter and the
        # three losses reach disjoint parameters, so this equals three Adams
        # with the same settings. fused: see DQNLightningModule.
        self.optimizer = torch.optim.Adam(
            self.loss_module.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True
        )
        self.updater = build_sac_updater(cfg, self.loss_module, self.optimizer)
        self.replay = ReplayBuffer(
            storage=LazyTensorStorage(cfg.buffer_size),
            sampler=RandomSampler(),
            batch_size=cfg.batch_size,
        )
        self._losses: list[TensorDictBase] = []
        self._collector: Collector | None = None
        self._iter: Iterator[TensorDictBase] | None = None

    def acting_policy(self) -> torch.nn.Module:
        """The selected actor member as a plain deterministic module (a copy, masks applied)."""
        return self.actor.member_network()

    # ------------------------------------------------------------ plumbing
    def _start_collection(self) -> None:
        cfg = self.cfg
        env = self.env_fn(seed=cfg.seed + self.env_steps, eval=False)
        self._collector = Collector(
            env,
            self.actor.policy,
            frames_per_batch=cfg.train_freq,
            total_frames=-1,
            init_random_frames=max(0, cfg.learning_starts - self.env_steps),
            device=self.device,
            storing_device="cpu",
            # The acting view holds no parameters of its own (they live in the
            # ensemble on self.device), and it reads no transform-made keys.
            trust_policy=True,
            auto_register_policy_transforms=False,
        )
        self._iter = iter(self._collector)

    def _stop_collection(self) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = None

    # ------------------------------------------------------------ training
    def collect_and_learn(self) -> dict[str, TensorDictBase] | None:
        while self._credit > 0:
            data = next(self._iter).reshape(-1)
            self.replay.extend(data.select(*self.REPLAY_KEYS))
            n = data.numel()
            self._credit -= n
            self.env_steps += n
            self._record_episodes(data)
        if not self._learning():
            return None
        out = self.loss_module(self.replay.sample().to(self.device))
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"])
        opt.step()
        self._losses.append(
            out.select("loss_alpha", "alpha", "entropy", *SAC_MEMBER_LOSS_KEYS).detach()
        )
        return {"member_losses": out.select(*SAC_MEMBER_LOSS_KEYS)}

    def _log_metrics(self, step: int) -> dict[str, float]:
        m = self.metrics
        bar = {}
        for name, ens in (("actor", self.actor), ("critic", self.critic)):
            sparsity = ens.sparsity()
            for k, s in enumerate(sparsity.tolist()):
                m.add(f"sparsity/{name}/member_{k}", s, step)
            stats = ens.sparsity_stats()
            m.add(f"sparsity/{name}_selected", float(sparsity[ens.selected]), step)
            m.add(f"sparsity/{name}_selected_overall", float(stats["overall"][ens.selected]), step)
            bar[f"sparsity_{name}"] = float(sparsity[ens.selected])
        if self._losses:
            mean = torch.stack(self._losses).mean(0)
            for k, v in enumerate(mean["loss_actor_per_member"].tolist()):
                m.add(f"loss_actor/member_{k}", v, step)
            for k, v in enumerate(mean["loss_qvalue_per_member"].tolist()):
                m.add(f"loss_qvalue/member_{k}", v, step)
            for key in ("loss_alpha", "alpha", "entropy"):
                m.add(key, float(mean[key]), step)
            self._losses.clear()
        last = next((h for h in reversed(self.updater.history) if "actor_selected" in h), {})
        sel_a = last.get("actor_selected", 0)
        sel_c = last.get("critic_selected", 0)
        m.add("selected/actor", sel_a, step)
        m.add("selected/critic", sel_c, step)
        bar.update(member_actor=float(sel_a), member_critic=float(sel_c))
        return bar

    # ---------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(
        self, episodes: int, random: bool = False, prefix: str = "eval"
    ) -> dict[str, float]:
        """Play ``episodes`` episodes with the deterministic selected actor; log the returns.

        ``random=True, prefix="eval_random"`` scores uniformly random actions.
        """
        policy = None if random else self.actor.policy
        return self._play_eval(policy, episodes, ExplorationType.DETERMINISTIC, prefix)

    def evaluate_random_baseline(self) -> dict[str, float]:
        return self.evaluate(self.cfg.eval_episodes, random=True, prefix="eval_random")


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
