"""The SAC Lightning module: EauDeSAC, PolyPruneSAC or dense SAC on a continuous-control task."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import RandomSampler
from torchrl.envs import EnvBase, ExplorationType

from ..config import SACConfig
from ..modules.sac import MaskedEnsembleTanhGaussianActor, MaskedEnsembleTwinQ
from ..objectives.sac import EauDeSACLoss
from ..tracking.metrics import MLflowMetrics
from ..updaters.builders import build_sac_updater
from .base import OnlineRLModule, build_optimizer
from .callbacks import SAC_MEMBER_LOSS_KEYS

__all__ = ["SACLightningModule"]


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
        >>> cfg = SACConfig(env="Pendulum-v1", num_members=3, width=16, buffer_size=1000)
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
    REPLAY_KEYS = (*OnlineRLModule.REPLAY_KEYS, ("next", "truncated"))

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
        # One optimizer for actor, critics and alpha: Adam and RMSprop are
        # per-parameter and the three losses reach disjoint parameters, so this
        # equals three optimizers with the same settings.
        self.optimizer = build_optimizer(cfg, self.loss_module.parameters())
        self.updater = build_sac_updater(cfg, self.loss_module, self.optimizer)
        self.replay = ReplayBuffer(
            storage=LazyTensorStorage(cfg.buffer_size),
            sampler=RandomSampler(),
            batch_size=cfg.batch_size,
        )
        self._losses: list[TensorDictBase] = []

    def acting_policy(self) -> torch.nn.Module:
        """The selected actor member as a plain deterministic module (a copy, masks applied)."""
        return self.actor.member_network()

    # ------------------------------------------------------------ plumbing
    def _start_collection(self) -> None:
        cfg = self.cfg
        self._collect_with_torchrl(
            self.env_fn(seed=cfg.seed + self.env_steps, eval=False),
            self.actor.policy,
            frames_per_batch=cfg.train_freq,
            # The acting view holds no parameters of its own (they live in the
            # ensemble on self.device), and it reads no transform-made keys.
            trust_policy=True,
            auto_register_policy_transforms=False,
        )

    # ------------------------------------------------------------ training
    def _total_loss(self, out: TensorDictBase) -> torch.Tensor:
        return out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]

    def _after_step(self, out: TensorDictBase) -> dict[str, TensorDictBase]:
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
        last = self.updater.last_selection()
        sel_a = last.selected("actor") if last is not None else 0
        sel_c = last.selected("critic") if last is not None else 0
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
