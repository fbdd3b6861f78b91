"""EauDeQN / PolyPruneQN / DQN on small discrete tasks: the CPU testbed of the study.

The same components as the Atari recipe (masked ensemble actor, EauDeQN
loss, target-selection and polynomial-pruning updaters, the Lightning base
:class:`~torchrl_eaudeqn.trainers.OnlineRLModule`), on tasks that learn in
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
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import RandomSampler
from torchrl.envs import EnvBase

from ..collectors import CollectedSteps, ControlCollector
from ..config import ControlConfig  # defined there: no torch needed to validate
from ..data.transitions import TransitionReplay
from ..envs.control import make_task_env, make_task_gym_env
from ..modules.dqn import minatar_cnn, mlp
from ..tracking.metrics import MLflowMetrics
from ..updaters.common import UpdateEvent
from .callbacks import TargetSelectionCallback
from .dqn import EnsembleDQNModule

__all__ = ["ControlDQNModule", "regression_trace"]


# --------------------------------------------------------------------------- module
class ControlDQNModule(EnsembleDQNModule):
    """EauDeQN, PolyPruneQN or DQN on a small discrete task, trained online.

    Each ``training_step`` collects ``train_freq`` env steps, stores them,
    and once ``learning_starts`` steps are in takes one gradient step of
    :class:`~torchrl_eaudeqn.EauDeQNLoss`; the updater
    (:func:`~torchrl_eaudeqn.lightning.build_updater`) runs after it through
    :class:`~torchrl_eaudeqn.lightning.TargetSelectionCallback`. Two
    collection paths (``cfg.collector``), the same learning:

    * ``lean`` (default): :class:`~torchrl_eaudeqn.collectors.ControlCollector`
      steps the Gymnasium env with the plain acting network, epsilon
      :meth:`epsilon_at` (uniformly random for the first ``learning_starts``
      steps), into a :class:`~torchrl_eaudeqn.data.TransitionReplay`; the
      loss runs on plain tensors (:meth:`~torchrl_eaudeqn.EauDeQNLoss.td_losses`).
      The collector's state is checkpointed, so a resume with the replay
      (``checkpoint_replay``) continues bit for bit.
    * ``torchrl``: TorchRL's :class:`~torchrl.collectors.Collector` over
      ``env_fn`` (epsilon-greedy through :class:`~torchrl.modules.EGreedyModule`),
      a TorchRL ``ReplayBuffer`` (``LazyTensorStorage``, uniform) and the
      loss on TensorDicts. Passing ``env_fn`` (a TorchRL env) selects it.

    Args:
        cfg: the validated :class:`ControlConfig`.
        env_fn: ``fn(seed, eval) -> EnvBase``; default :func:`make_task_env`.
            Training then collects with TorchRL whatever ``cfg.collector`` says.
        metrics: where metrics go (an :class:`~torchrl_eaudeqn.lightning.MLflowMetrics`).

    Example:
        >>> cfg = ControlConfig(env="CartPole-v1", num_members=3, width=16, buffer_size=100)
        >>> module = ControlDQNModule(cfg)
        >>> module.actor.num_members, module.n_actions, type(module.updater).__name__
        (3, 2, 'TargetSelectionUpdater')
    """

    episode_metric = "episode_return"
    episode_return_key = "episode_reward"
    progress_return_name = "return"

    def __init__(
        self,
        cfg: ControlConfig,
        env_fn: Callable[..., EnvBase] | None = None,
        metrics: MLflowMetrics | None = None,
    ) -> None:
        self._own_env = env_fn is None
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
        if self._uses_lean():
            # MinAtar observations are 0/1: uint8 storage is exact and a quarter the size.
            dtype = torch.uint8 if cfg.env.startswith("minatar:") else torch.float32
            # Its own generator, checkpointed: Lightning's data-loader start draws from
            # the global one again on resume, which would shift every later batch.
            self.replay = TransitionReplay(
                cfg.buffer_size,
                obs_shape,
                obs_dtype=dtype,
                generator=torch.Generator().manual_seed(cfg.seed),
            )
        else:
            self.replay = ReplayBuffer(
                storage=LazyTensorStorage(cfg.buffer_size),
                sampler=RandomSampler(),
                batch_size=cfg.batch_size,
            )

    def _uses_lean(self) -> bool:
        return self.cfg.collector == "lean" and self._own_env

    # ------------------------------------------------------------ plumbing
    def _start_collection(self) -> None:
        cfg = self.cfg
        if self._uses_lean():
            self._lean = ControlCollector(
                functools.partial(make_task_gym_env, cfg),
                self.actor.acting_network,
                self.n_actions,
                seed=cfg.seed + self.env_steps,
                device=self.device,
            )
            if self._lean_state is not None:
                self._lean.load_state_dict(self._lean_state)
            return
        self._collect_with_torchrl(
            self.env_fn(seed=cfg.seed + self.env_steps, eval=False),
            TensorDictSequential(self.actor.policy, self.explore),
            frames_per_batch=cfg.train_freq,
        )

    def _extend_replay(self, steps: CollectedSteps) -> None:
        self.replay.extend(
            steps.observation[0],
            steps.action[0],
            steps.reward[0],
            steps.next_observation[0],
            steps.terminated[0],
        )

    def _checkpoint_extras(self) -> dict[str, Any]:
        extras = super()._checkpoint_extras()
        if self._uses_lean():
            extras["replay_rng"] = self.replay.generator.get_state()
        return extras

    def _load_checkpoint_extras(self, state: dict[str, Any]) -> None:
        super()._load_checkpoint_extras(state)
        if self._uses_lean() and "replay_rng" in state:
            self.replay.generator.set_state(state["replay_rng"])

    def _forward_backward(self) -> dict[str, torch.Tensor] | TensorDictBase:
        if not self._uses_lean():
            return super()._forward_backward()
        batch = self.replay.sample(self.cfg.batch_size)
        if self.device.type != "cpu":
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return self._tensor_forward_backward(batch)


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

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = ControlDQNModule(cfg)
        updates: list[dict[str, Any]] = []

        def on_update(entry: UpdateEvent) -> None:
            if not entry.updates_target:
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
