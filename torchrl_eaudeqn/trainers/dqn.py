"""The DQN-family Lightning modules: the shared ensemble plumbing and the Atari loop."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torchrl.envs import EnvBase, ExplorationType
from torchrl.modules import EGreedyModule

from ..collectors import AtariCollector, CollectedSteps, ControlCollector, linear_epsilon
from ..config import AtariConfig
from ..data.replay import FrameReplayBuffer
from ..envs import make_atari_gym_env
from ..modules import MaskedEnsembleQValueActor, nature_cnn
from ..modules.ensemble import calibrate_vmap_by_step
from ..objectives import EauDeQNLoss
from ..sparsity import sparsity_stats
from ..tracking.metrics import MLflowMetrics
from ..updaters.builders import build_updater
from .base import OnlineRLModule, build_optimizer

__all__ = ["DQNLightningModule", "EnsembleDQNModule"]


class EnsembleDQNModule(OnlineRLModule):
    """What the DQN-family modules share: the ensemble, its loss, optimizer, updater and metrics.

    Subclasses (:class:`DQNLightningModule` for Atari,
    :class:`~torchrl_eaudeqn.control.ControlDQNModule` for the study's small
    tasks) build their network and replay, call :meth:`_build_ensemble`, and
    say how exploration is read (:meth:`epsilon_now`).

    Example:
        >>> from torchrl_eaudeqn.control import ControlConfig, ControlDQNModule
        >>> module = ControlDQNModule(ControlConfig(env="CartPole-v1", width=8, num_members=3))
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
        self.optimizer = build_optimizer(cfg, self.loss_module.parameters())
        self.updater = build_updater(cfg, self.loss_module, self.optimizer)
        self.explore = EGreedyModule(
            action_spec,
            eps_init=cfg.eps_start,
            eps_end=cfg.eps_end,
            annealing_num_steps=cfg.eps_decay_steps,
        )
        self._member_losses: list[torch.Tensor] = []
        #: The lean collector while a fit runs (``collector=lean``), and its state between fits.
        self._lean: AtariCollector | ControlCollector | None = None
        self._lean_state: dict[str, Any] | None = None

    def epsilon_at(self, step: int | None = None) -> float:
        """Exploration rate of the lean collector at env step ``step`` (default: now).

        1 before ``learning_starts``, then linear from ``eps_start`` to
        ``eps_end`` over ``eps_decay_steps``: a pure function of the env step,
        so a resumed run continues it exactly.
        """
        cfg = self.cfg
        return linear_epsilon(
            self.env_steps if step is None else step,
            start=cfg.eps_start,
            end=cfg.eps_end,
            decay_steps=cfg.eps_decay_steps,
            warmup=cfg.learning_starts,
        )

    def epsilon_now(self) -> float:
        """The exploration rate acting uses now.

        :meth:`epsilon_at` with the lean collector; TorchRL's annealed
        ``EGreedyModule`` with ``collector=torchrl``.
        """
        if self._uses_lean():
            return self.epsilon_at()
        return float(self.explore.eps)

    def _uses_lean(self) -> bool:
        return self.cfg.collector == "lean"

    def _path_undecided(self) -> bool:
        """Whether ``use_vmap=auto`` still has to choose (K > 1, no earlier or saved choice)."""
        actor = self.actor
        return actor.use_vmap is None and actor.num_members > 1 and actor.auto_vmap is None

    def _calibrate(self, batch: TensorDictBase) -> None:
        # Before the first gradient step: whole steps on both paths, on a copy
        # (calibrate_vmap_by_step); a check per step after that.
        if self._path_undecided():
            key = tuple((k, tuple(v.shape), v.dtype) for k, v in batch.items(True, True))
            calibrate_vmap_by_step(
                self.loss_module,
                self.optimizer,
                lambda loss: self._total_loss(loss(batch.clone(False))),
                key,
            )

    def _tensor_forward_backward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss and its backward on a batch of plain tensors (``td_losses``).

        ``batch`` holds ``observation``, ``action`` (index), ``reward``,
        ``next_observation`` and ``terminated``, each ``[B, ...]``. The same
        numbers as the loss on a TensorDict of that batch, without building
        one: on the small tasks that bookkeeping cost as much as the networks.
        """
        args = (
            batch["observation"],
            batch["action"],
            batch["reward"],
            batch["next_observation"],
            batch["terminated"],
        )
        if self._path_undecided():  # see _calibrate
            calibrate_vmap_by_step(
                self.loss_module,
                self.optimizer,
                lambda loss: loss.td_losses(*args)[0],
                tuple((a.shape, a.dtype) for a in args),
            )
        loss, per_member = self.loss_module.td_losses(*args)
        self._zero_grad()
        self._backward(loss)
        return {"loss": loss, "loss_per_member": per_member}

    # ------------------------------------------------- lean collection
    def _begin_collect(self) -> bool | None:
        if self._lean is None:
            return super()._begin_collect()
        if self._credit <= 0:
            return None
        n, step0 = self._lean.num_envs, self.env_steps
        self._lean.submit(
            -(-self._credit // n),
            lambda t: self.epsilon_at(step0 + t * n),
            network=self.actor.acting_network(),
        )
        if self._lean.threaded:
            # Forward and backward only read the parameters, so the worker
            # acts with them meanwhile; the optimizer writes after the join.
            return True
        self._store(self._lean.result())  # the new steps are in the replay before sampling
        return None

    def _finish_collect(self, pending: bool) -> None:
        self._store(self._lean.result())

    def _store(self, steps: CollectedSteps) -> None:
        self._extend_replay(steps)
        n = steps.num_steps
        self._credit -= n
        self.env_steps += n
        for _, score, length in steps.episodes:
            self._episode_end(score, length)

    def _extend_replay(self, steps: CollectedSteps) -> None:
        """Put what the lean collector brought into the replay."""
        raise NotImplementedError

    def _stop_collection(self) -> None:
        super()._stop_collection()
        if self._lean is not None:
            self._lean_state = self._lean.state_dict()
            self._lean.close()
            self._lean = None

    def _checkpoint_extras(self) -> dict[str, Any]:
        lean = self._lean.state_dict() if self._lean is not None else self._lean_state
        return {} if lean is None else {"collector_rng": lean}

    def _load_checkpoint_extras(self, state: dict[str, Any]) -> None:
        self._lean_state = state.get("collector_rng")

    def lr_now(self, step: int | None = None) -> float:
        """Learning rate at env step ``step`` (default: now).

        ``lr`` until ``learning_starts``, then linear down to
        ``lr * lr_end_fraction`` at ``env_steps``, then constant.
        """
        cfg = self.cfg
        step = self.env_steps if step is None else step
        span = max(1, cfg.env_steps - cfg.learning_starts)
        done = min(1.0, max(0.0, (step - cfg.learning_starts) / span))
        return cfg.lr * (1.0 - (1.0 - cfg.lr_end_fraction) * done)

    def _schedule_lr(self) -> None:
        # A function of the env step, not optimizer state: a resumed run and the
        # optimizer resets at target updates see the same rate.
        if self.cfg.lr_end_fraction != 1.0:
            lr = self.lr_now()
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def _collected(self, n: int) -> None:
        if self.env_steps > self.cfg.learning_starts:
            self.explore.step(n)

    def _after_step(self, out: TensorDictBase) -> dict[str, torch.Tensor]:
        self._member_losses.append(out["loss_per_member"])
        return {"loss_per_member": out["loss_per_member"]}

    def _log_metrics(self, step: int) -> dict[str, float]:
        m = self.metrics
        sparsity = self.actor.sparsity()
        m.add("epsilon", self.epsilon_now(), step)
        if self.cfg.lr_end_fraction != 1.0:
            m.add("lr", self.lr_now(), step)
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
        last = self.updater.last_selection()
        selected = last.selected() if last is not None else 0
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
        >>> cfg = AtariConfig(env="Pong", width="small", num_members=2, buffer_size=1000)
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

    def _replay_stored(self) -> int:
        # O(1); FrameReplayBuffer's len() scans the capacity and undercounts once it wraps.
        return self.replay.num_stored

    # ------------------------------------------------------------ plumbing
    def _start_collection(self) -> None:
        if self._uses_lean():
            self._start_lean_collector()
        else:
            self._start_torchrl_collector()

    def _start_lean_collector(self) -> None:
        cfg = self.cfg
        env_fn = functools.partial(
            make_atari_gym_env,
            cfg.env,
            frame_skip=cfg.frame_skip,
            sticky_actions=cfg.sticky_actions,
            max_episode_steps=cfg.max_episode_steps,
        )
        self._lean = AtariCollector(
            [env_fn] * cfg.num_envs,
            self._acting_network,
            self.n_actions,
            seed=cfg.seed + self.env_steps,
            device=self.device,
            threaded=self.overlap,
            terminal_on_life_loss=cfg.terminal_on_life_loss,
        )
        if self._lean_state is not None:
            self._lean.load_state_dict(self._lean_state)

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
        return self.actor.acting_network()

    def _start_torchrl_collector(self) -> None:
        cfg = self.cfg
        self._collect_with_torchrl(
            self.env_fn(seed=cfg.seed + self.env_steps, num_envs=cfg.num_envs, eval=False),
            TensorDictSequential(self.actor.policy, self.explore),
            frames_per_batch=cfg.num_envs * max(1, cfg.train_freq // cfg.num_envs),
        )

    # ------------------------------------------------------------ training
    def _extend_replay(self, steps: CollectedSteps) -> None:
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

    def _store_batch(self, batch: TensorDictBase) -> TensorDictBase:
        if self.cfg.terminal_on_life_loss:
            nxt = batch.get("next")
            if "end-of-life" not in nxt.keys():
                raise KeyError(
                    "terminal_on_life_loss needs the training env to write "
                    "('next', 'end-of-life'): make_atari_env(..., end_of_life=True)"
                )
            nxt.set("terminated", nxt.get("terminated") | nxt.get("end-of-life"))
        self.replay.extend(batch)  # [num_envs, T] maps to one stream per env
        return batch.reshape(-1)

    def _sample(self) -> TensorDictBase:
        return self.replay.sample(self.cfg.batch_size)

    def _forward_backward(self) -> dict[str, torch.Tensor]:
        # The replay's plain tensors straight into the loss, skipping the batch's
        # TensorDict, one-hot actions and the value estimator's TensorDict work:
        # the recipe went from 0.88x to 1.02x a plain loop (docs/benchmarks.md).
        return self._tensor_forward_backward(self.replay.sample_tensors(self.cfg.batch_size))
