"""What the online recipes share: env-step budget, counters, logging, evaluation, checkpoints."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from ..checkpointing import CheckpointError, load_checkpoint_file, verify_dir, write_dir_atomic
from ..config import EVAL_SEED_OFFSET
from ..credentials import redacted_config
from ..data.replay import FrameReplayBuffer
from ..modules.ensemble import MaskedEnsemble
from ..tracking.metrics import MLflowMetrics
from .callbacks import TargetSelectionCallback

__all__ = ["OnlineRLModule", "build_optimizer"]


def build_optimizer(cfg: Any, params: Any) -> torch.optim.Optimizer:
    """The run's optimizer over ``params``: ``cfg.optimizer`` with ``cfg.lr``.

    ``adam``: fused Adam with ``adam_eps`` (foreach is several times slower for
    K members on CPU, docs/benchmarks.md). ``rmsprop``: centered RMSprop with
    ``rmsprop_alpha`` and ``rmsprop_eps``, the optimizer of the MinAtar
    paper's DQN (torch has no fused RMSprop; foreach it is). Both keep their
    state per parameter, which the updaters' optimizer reset clears.

    Example:
        >>> from torchrl_eaudeqn.config import ControlConfig
        >>> cfg = ControlConfig(env="CartPole-v1", optimizer="rmsprop")
        >>> opt = build_optimizer(cfg, torch.nn.Linear(2, 1).parameters())
        >>> type(opt).__name__, opt.defaults["centered"], opt.defaults["alpha"], opt.defaults["eps"]
        ('RMSprop', True, 0.95, 0.01)
    """
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=cfg.lr,
            alpha=cfg.rmsprop_alpha,
            eps=cfg.rmsprop_eps,
            centered=True,
            foreach=True,
        )
    return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)


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

    One round = ``train_freq`` env steps of credit and at most one gradient
    step; a ``training_step`` runs ``cfg.steps_per_call`` rounds (default 1),
    ending early wherever a log, an evaluation, a checkpoint, a stop or the
    end of the budget falls (:meth:`_call_ends`), and runs the
    :class:`TargetSelectionCallback` itself after the gradient step of every
    round but the last (Lightning does it for the last), so the run is the
    same for any ``steps_per_call``; other callbacks' ``on_train_batch_end``
    runs once per call. The "dataset" yields until ``cfg.env_steps`` env
    steps are collected, so a resumed run continues where it stopped. Subclasses
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
    #: What the replay keeps of a collected step (nothing else is read by the losses).
    REPLAY_KEYS: tuple = (
        "observation",
        "action",
        ("next", "observation"),
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
    )

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
        self._collector: Collector | None = None
        self._iter: Iterator[TensorDictBase] | None = None
        #: While a fit runs where Lightning's gradient-step wrappers may be skipped:
        #: the callbacks each hook calls, the raw optimizer and its step counter.
        self._direct: _DirectStep | None = None

    # ------------------------------------------------------- subclass hooks
    def collect_and_learn(self) -> dict[str, Any] | None:
        """Spend ``self._credit`` on env steps, then at most one gradient step.

        The one loop of every family: :meth:`_begin_collect` collects (or
        starts collecting in the background and returns a handle), the
        gradient is computed from a replay sample while that runs,
        :meth:`_finish_collect` stores what the background collection got,
        and only then the optimizer writes the parameters (the collector may
        act with them until the join). Returns what the updater callback reads.
        """
        pending = self._begin_collect()
        out = self._forward_backward() if self._learning() else None
        if pending is not None:
            self._finish_collect(pending)
        if out is None:
            return None
        self._optimizer_step()
        return self._after_step(out)

    def _backward(self, loss: torch.Tensor) -> None:
        """``manual_backward(loss)``, or what it does, directly (:class:`_DirectStep`)."""
        direct = self._direct
        if direct is None:
            self.manual_backward(loss)
            return
        trainer = self._trainer
        for cb in direct.before_backward:
            cb.on_before_backward(trainer, self, loss)
        loss.backward()
        for cb in direct.after_backward:
            cb.on_after_backward(trainer, self)

    def _zero_grad(self) -> None:
        direct = self._direct
        (self.optimizers() if direct is None else direct.optimizer).zero_grad()

    def _optimizer_step(self) -> None:
        """``self.optimizers().step()``, or what it does, directly (:class:`_DirectStep`)."""
        direct = self._direct
        if direct is None:
            self.optimizers().step()
            return
        direct.progress.increment_ready()
        for cb in direct.before_optimizer_step:
            cb.on_before_optimizer_step(self._trainer, self, direct.optimizer)
        direct.optimizer.step()
        direct.progress.increment_completed()

    def _begin_collect(self) -> Any:
        """Collect until the credit is spent (TorchRL collector); ``None``: nothing pending."""
        while self._credit > 0:
            data = self._store_batch(next(self._iter))
            n = data.numel()
            self._credit -= n
            self.env_steps += n
            self._collected(n)
            self._record_episodes(data)
        return None

    def _finish_collect(self, pending: Any) -> None:
        """Store the steps a background collection (``pending``) brought."""
        raise NotImplementedError

    def _store_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """Put a collector batch into the replay; return it flat (one row per env step)."""
        data = batch.reshape(-1)
        self.replay.extend(data.select(*self.REPLAY_KEYS))
        return data

    def _collected(self, n: int) -> None:
        """Called after ``n`` env steps were stored (DQN: the epsilon schedule moves)."""

    def _sample(self) -> TensorDictBase:
        return self.replay.sample()

    def _total_loss(self, out: TensorDictBase) -> torch.Tensor:
        """What the one backward pass differentiates."""
        return out["loss"]

    def _calibrate(self, batch: TensorDictBase) -> None:
        """Called with every batch before the loss (``EnsembleDQNModule``: the vmap choice)."""

    def _forward_backward(self) -> TensorDictBase:
        batch = self._sample().to(self.device)
        self._calibrate(batch)
        out = self.loss_module(batch)
        self._zero_grad()
        self._backward(self._total_loss(out))
        return out

    def _after_step(self, out: TensorDictBase) -> dict[str, Any]:
        """Keep what the logs average and return what the updater callback reads."""
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
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = None

    def _collect_with_torchrl(
        self, env: EnvBase, policy: Any, frames_per_batch: int, **kwargs: Any
    ) -> None:
        """Collect from ``env`` with a TorchRL ``Collector`` that :meth:`_begin_collect` reads.

        Random actions until ``learning_starts`` env steps (counted across a
        resume); batches are stored on the CPU whatever the module's device.
        """
        self._collector = Collector(
            env,
            policy,
            frames_per_batch=frames_per_batch,
            total_frames=-1,
            init_random_frames=max(0, self.cfg.learning_starts - self.env_steps),
            device=self.device,
            storing_device="cpu",
            **kwargs,
        )
        self._iter = iter(self._collector)

    def _ensembles(self) -> dict[str, MaskedEnsemble]:
        """The module's masked ensembles by attribute path (each once)."""
        seen: dict[int, str] = {}
        out: dict[str, MaskedEnsemble] = {}
        for name, mod in self.named_modules():
            if isinstance(mod, MaskedEnsemble) and id(mod) not in seen:
                seen[id(mod)] = name
                out[name] = mod
        return out

    def _vmap_paths(self) -> dict[str, bool | None]:
        """Which path each ensemble whose ``use_vmap`` is auto took (``None``: not yet)."""
        return {
            name: ens.auto_vmap
            for name, ens in self._ensembles().items()
            if ens.use_vmap is None and ens.num_members > 1
        }

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
        self._direct = _DirectStep.resolve(self)
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
        self._direct = None
        self.metrics.flush()
        self._stop_collection()

    # ------------------------------------------------------------ training
    def _learning(self) -> bool:
        cfg = self.cfg
        # After a resume the replay starts empty (its contents are not in the
        # checkpoint): learning waits until it holds learning_starts again.
        warm = max(cfg.batch_size, min(cfg.learning_starts, cfg.buffer_size))
        return self.env_steps >= cfg.learning_starts and self._replay_stored() >= warm

    def _schedule_lr(self) -> None:
        """Set the learning rate for the coming gradient step (default: leave it)."""

    def _replay_stored(self) -> int:
        """Transitions the replay holds, cheaply (called twice per gradient step).

        TorchRL's buffers answer ``len()`` in O(1); a subclass whose replay
        does not overrides this.
        """
        return len(self.replay)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any] | None:
        cfg = self.cfg
        if self.env_steps >= cfg.env_steps:
            # Lightning fetches a batch ahead, and with several rounds per call
            # the stream's length overcounts: the budget is spent, do nothing.
            return None
        rounds = 0
        while True:
            # Credit of train_freq env steps per round keeps the update ratio for any num_envs.
            self._credit += cfg.train_freq
            self._schedule_lr()
            out = self.collect_and_learn()
            rounds += 1
            log_due = self.env_steps - self._last_log >= cfg.log_every
            # Not at the last step: the recipe's final evaluation logs that step.
            eval_due = bool(
                cfg.eval_every
                and self.env_steps - self._last_eval >= cfg.eval_every
                and self.env_steps < cfg.env_steps
            )
            if log_due or eval_due or self._call_ends(rounds):
                break
            # Mid-call rounds get what Lightning gives the last one after it returns.
            self._after_round(out, batch_idx)
        if log_due or eval_due:
            # Adam's step has moved pruned weights off zero and the updater
            # callback re-applies the masks only after this: score the real network.
            self.updater.apply_masks_()
        if log_due:
            self._log_progress()
        if eval_due:
            self._last_eval = self.env_steps
            self.evaluate(cfg.eval_episodes)
        return out

    def _call_ends(self, rounds: int) -> bool:
        """Whether this ``training_step`` returns after ``rounds`` rounds of ``train_freq``.

        ``cfg.steps_per_call`` rounds at most; fewer at the end of the budget,
        when the trainer should stop, or when a callback with ``ends_call``
        (:class:`~torchrl_eaudeqn.trainers.EnvStepCheckpoint`,
        :class:`~torchrl_eaudeqn.trainers.GracefulStop`) has work at this env
        step. Calls end where one round per call would have run the same
        callbacks, so the run is the same for any ``steps_per_call``.
        """
        trainer = self._trainer
        if trainer is None or rounds >= getattr(self.cfg, "steps_per_call", 1):
            return True
        if self.env_steps >= self.cfg.env_steps or trainer.should_stop:
            return True
        return any(getattr(cb, "ends_call", _never)(self) for cb in trainer.callbacks)

    def _after_round(self, out: dict[str, Any] | None, batch_idx: int) -> None:
        """Run the updater callbacks on a mid-call round's gradient step (``out``)."""
        if out is None:
            return
        for cb in self._trainer.callbacks:
            if isinstance(cb, TargetSelectionCallback):
                cb.after_gradient_step(out)

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
        for name, vmap in self._vmap_paths().items():
            if vmap is not None:  # 1: the ensemble runs under vmap, 0: a loop
                self.metrics.add(f"vmap/{name}", float(vmap), self.env_steps)
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
            # use_vmap=auto's measured choice: the paths differ in float rounding,
            # so a resume must take the same one to continue bit for bit.
            "vmap_paths": self._vmap_paths(),
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
        # Checkpoints from before the calibration ran auto as vmap for K > 1.
        saved = state.get("vmap_paths")
        for name, ens in self._ensembles().items():
            if ens.use_vmap is None and ens.num_members > 1:
                ens.auto_vmap = True if saved is None else saved.get(name)
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


class _DirectStep:
    """What Lightning's ``manual_backward`` and ``LightningOptimizer.step`` do, to call directly.

    With 32-bit precision on one device they run the callbacks' and the
    module's ``on_before_backward`` / ``on_after_backward`` /
    ``on_before_optimizer_step`` hooks around ``loss.backward()`` and
    ``optimizer.step()`` and count the step (``trainer.global_step``); the
    wrappers around that cost ~0.12 ms and ~0.15 ms per gradient step
    (CartPole, K=1, one torch thread on a busy 2-core CPU, medians of 750
    steps taken alternately each way), a tenth of a small-task env step
    (a CartPole K=1 run measured 1.2x faster without them; docs/benchmarks.md).
    :meth:`resolve` returns the hooks that do something (overridden by a
    callback) when that is all Lightning would do, else ``None`` and the
    module goes through Lightning: another precision or strategy, a profiler,
    gradient clipping, or a module overriding those hooks or ``backward``.
    ``tests/test_direct_step.py`` checks that both paths call the same hooks
    in the same order, count the same steps and train the same weights.
    """

    HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")

    def __init__(self, trainer: Any, optimizer: torch.optim.Optimizer, progress: Any) -> None:
        def overriding(hook: str) -> list[Any]:
            return [
                cb for cb in trainer.callbacks
                if getattr(type(cb), hook, None) is not getattr(L.Callback, hook)
            ]  # fmt: skip

        self.before_backward, self.after_backward, self.before_optimizer_step = (
            overriding(h) for h in self.HOOKS
        )
        self.optimizer = optimizer
        self.progress = progress

    @classmethod
    def resolve(cls, module: OnlineRLModule) -> _DirectStep | None:
        from lightning.pytorch.plugins.precision import Precision
        from lightning.pytorch.profilers import PassThroughProfiler
        from lightning.pytorch.strategies import SingleDeviceStrategy

        trainer = module._trainer
        if trainer is None or module.automatic_optimization:
            return None
        plain = (
            type(trainer.precision_plugin) is Precision
            and type(trainer.strategy) is SingleDeviceStrategy
            and isinstance(trainer.profiler, PassThroughProfiler)
            and not trainer.gradient_clip_val
            and len(trainer.optimizers) == 1
        )
        own = ("backward", *cls.HOOKS)
        if not plain or any(
            getattr(type(module), h) is not getattr(L.LightningModule, h) for h in own
        ):
            return None
        try:
            progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        except AttributeError:  # another Lightning layout: let Lightning count
            return None
        return cls(trainer, trainer.optimizers[0], progress)


def _never(module: Any) -> bool:
    return False


#: The file of a TorchRL replay's ``state_dict()`` in its ``stepN.replay`` directory.
_REPLAY_STATE = "replay.pt"


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
