"""Config-to-updater builders (no Lightning needed: they return TorchRL target updaters)."""

from __future__ import annotations

from typing import Any

import torch

from ..config import AtariConfig, ControlConfig, SACConfig
from ..objectives.dqn import EauDeQNLoss
from ..objectives.sac import EauDeSACLoss
from ..sparsity import make_speed_policy
from .dqn import PolyPruneUpdater, TargetSelectionUpdater
from .sac import PolyPruneSACUpdater, SACTargetSelectionUpdater

__all__ = ["build_sac_updater", "build_updater"]


def _polyprune_schedule(cfg: AtariConfig | ControlConfig | SACConfig) -> dict[str, Any]:
    """The PolyPrune schedule in gradient steps, counted from the first one."""
    per = cfg.train_freq
    return {
        "final_sparsity": cfg.final_sparsity,
        "start": max(0, (cfg.prune_start - cfg.learning_starts) // per),
        "end": max(1, (cfg.prune_end - cfg.learning_starts) // per),
        "prune_every": max(1, cfg.prune_every // per),
        "scope": cfg.prune_scope,
        "structure": cfg.prune_structure,
    }


def build_updater(
    cfg: AtariConfig | ControlConfig, loss: EauDeQNLoss, optimizer: torch.optim.Optimizer
) -> TargetSelectionUpdater | PolyPruneUpdater:
    """The config's updater; periods given in env steps become gradient steps."""
    period = max(1, cfg.target_period // cfg.train_freq)
    if cfg.method == "polyprune":
        return PolyPruneUpdater(
            loss,
            optimizer,
            period=period,
            **_polyprune_schedule(cfg),
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
        structure=cfg.prune_structure,
        reset_optimizer=cfg.reset_optimizer,
    )


def build_sac_updater(
    cfg: SACConfig, loss: EauDeSACLoss, optimizer: torch.optim.Optimizer
) -> SACTargetSelectionUpdater | PolyPruneSACUpdater:
    """The SAC config's updater; periods given in env steps become gradient steps.

    * ``eaudesac``: :class:`~torchrl_eaudeqn.SACTargetSelectionUpdater`, selection
      every ``target_period`` env steps, the same speed policy (separate
      objects) for critics and actors;
    * ``polyprune``: :class:`~torchrl_eaudeqn.PolyPruneSACUpdater`, schedule
      counted from the first gradient step;
    * ``sac``: one member each, zero speeds, Adam state kept (dense SAC).
    """
    if cfg.method == "polyprune":
        return PolyPruneSACUpdater(
            loss,
            optimizer,
            tau=cfg.tau,
            **_polyprune_schedule(cfg),
        )
    period = max(1, cfg.target_period // cfg.train_freq)
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
        structure=cfg.prune_structure,
        reset_optimizer=cfg.reset_optimizer,
        hard_copy_on_selection=cfg.hard_copy_on_selection,
    )
