"""EauDeSAC's updaters: selection of an actor and a critic member, and the PolyPrune baseline."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal

import torch
from tensordict import TensorDictBase

from ..modules.ensemble import prune_member_to
from ..objectives.sac import OPTIMIZED_LOSS_KEYS, EauDeSACLoss
from ..sparsity import (
    LinearSpeedGrid,
    PolynomialSchedule,
    PruningSpeedPolicy,
)
from .common import MaskedUpdater, role_view

__all__ = ["PolyPruneSACUpdater", "SACTargetSelectionUpdater"]


class _SACUpdaterBase(MaskedUpdater):
    """SAC's additions to the base: the Polyak-averaged target critic and ``tau``."""

    optimized_loss_keys = OPTIMIZED_LOSS_KEYS

    def __init__(
        self,
        loss_module: EauDeSACLoss,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
        *,
        tau: float,
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_module, EauDeSACLoss):
            raise TypeError(
                f"loss_module must be an EauDeSACLoss, got {type(loss_module).__name__}"
            )
        tau = float(tau)
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.tau = tau
        self.actor = loss_module.actor_network
        self.critic = loss_module.qvalue_network
        # Critic first: its speeds are drawn and its members rebuilt before the actor's.
        networks = {"critic": self.critic, "actor": self.actor}
        super().__init__(loss_module, optimizer, networks=networks, **kwargs)

    @torch.no_grad()
    def polyak_update(self, tau: float | None = None) -> None:
        """``target <- (1 - tau) target + tau * selected critic member``."""
        tau = self.tau if tau is None else tau
        src = self.critic.params.unbind(0)[self.critic.selected]
        target = self.loss_module.target_qvalue_network_params
        keys = list(target.keys(True, True))
        torch._foreach_lerp_(
            [target.get(k).data for k in keys], [src.get(k).data for k in keys], tau
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tau={self.tau}, num_steps={self.num_steps})"


class SACTargetSelectionUpdater(_SACUpdaterBase):
    """EauDeSAC's updater: masks, Polyak target, and selection of actor and critic members.

    Call :meth:`step` once after every optimizer step. It re-applies both
    mask sets, Polyak-updates the target critic towards the selected critic
    member (``tau``), adds the members' detached losses to per-period sums,
    and every ``period`` calls (exactly):

    1. selects the critic member with the smallest summed critic loss and the
       actor member with the smallest summed actor loss (ties: less sparse,
       then lower index; NaN never wins);
    2. rebuilds each ensemble from its winner: member 0 = copy (steady),
       member ``k >= 1`` = copy magnitude-pruned to ``s_j + v_k (1 - s_j)``;
       member 0 becomes the selected member of both;
    3. resets the sums and (by default) the optimizer state of the members
       (``log_alpha``'s state is kept).

    Target critic (this project's choice): by default it stays a continuous
    Polyak average; after a selection it follows member 0, which is the
    winner's copy, so no jump is introduced. It has no mask of its own:
    weights pruned in the selected member decay geometrically towards 0 in
    the target. ``hard_copy_on_selection=True`` instead copies the critic
    winner into the target at each selection (DQN-like).

    Dense SAC: one member each, ``reset_optimizer=False`` (the speeds of a
    one-member :class:`~torchrl_eaudeqn.sparsity.LinearSpeedGrid` are 0).

    Args:
        loss_module: the :class:`EauDeSACLoss`.
        optimizer: optimizer(s) over the loss parameters (required when
            ``reset_optimizer``).

    Keyword Args:
        period: optimizer steps between selections (unpublished for MuJoCo;
            1000 is this project's placeholder default).
        tau: Polyak coefficient in (0, 1] (0.005).
        speed_policy: critic pruning speeds (default ``LinearSpeedGrid(0.01)``).
        actor_speed_policy: actor pruning speeds (default: a copy of ``speed_policy``).
        scope: ``"global"`` or ``"layer"`` magnitude ranking.
        reset_optimizer: reset the members' optimizer state at each selection.
        prune_at_init: start the first period with pruned copies.
        hard_copy_on_selection: copy the critic winner into the target at selections.
        structure: ``"weights"`` or ``"filters"`` (see
            :class:`~torchrl_eaudeqn.TargetSelectionUpdater`; an MLP has no filters).

    Example:
        >>> from torchrl.data import Bounded
        >>> from tensordict import TensorDict
        >>> from torchrl_eaudeqn.modules import MaskedEnsembleTanhGaussianActor, MaskedEnsembleTwinQ
        >>> actor = MaskedEnsembleTanhGaussianActor(3, Bounded(-1.0, 1.0, shape=(2,)), 3,
        ...     hidden=(8,))
        >>> critic = MaskedEnsembleTwinQ(3, 2, 3, hidden=(8,))
        >>> loss = EauDeSACLoss(actor, critic)
        >>> opt = torch.optim.Adam(loss.parameters())
        >>> up = SACTargetSelectionUpdater(loss, opt, period=2, speed_policy=LinearSpeedGrid(0.5))
        >>> [round(float(s), 2) for s in actor.sparsity()]
        [0.0, 0.25, 0.5]
        >>> losses = TensorDict(loss_actor_per_member=torch.tensor([3.0, 1.0, 2.0]),
        ...                     loss_qvalue_per_member=torch.tensor([1.0, 2.0, 3.0]))
        >>> up.step(losses); up.step(losses)
        >>> up.history[-1]["actor_selected"], up.history[-1]["critic_selected"]
        (1, 0)
    """

    def __init__(
        self,
        loss_module: EauDeSACLoss,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
        *,
        period: int = 1000,
        tau: float = 0.005,
        speed_policy: PruningSpeedPolicy | None = None,
        actor_speed_policy: PruningSpeedPolicy | None = None,
        scope: Literal["global", "layer"] = "global",
        reset_optimizer: bool = True,
        prune_at_init: bool = True,
        hard_copy_on_selection: bool = False,
        structure: Literal["weights", "filters"] = "weights",
    ) -> None:
        speed_policy = LinearSpeedGrid(0.01) if speed_policy is None else speed_policy
        if actor_speed_policy is None:
            actor_speed_policy = copy.deepcopy(speed_policy)
        super().__init__(
            loss_module,
            optimizer,
            tau=tau,
            period=period,
            scope=scope,
            structure=structure,
            require_optimizer=reset_optimizer,
            speed_policies={"critic": speed_policy, "actor": actor_speed_policy},
            reset_optimizer=reset_optimizer,
            prune_at_init=prune_at_init,
        )
        self.hard_copy_on_selection = hard_copy_on_selection
        self.init_()

    speed_policy = role_view("speed_policy", "critic", "The critic's pruning-speed policy.")
    actor_speed_policy = role_view("speed_policy", "actor", "The actor's pruning-speed policy.")
    critic_speeds = role_view("speeds", "critic", "The critic members' speeds in the period.")
    actor_speeds = role_view("speeds", "actor", "The actor members' speeds in the period.")
    critic_loss_sums = role_view(
        "loss_sums", "critic", "Summed critic member losses of the period (CPU, float64, a copy)."
    )
    actor_loss_sums = role_view(
        "loss_sums", "actor", "Summed actor member losses of the period (CPU, float64, a copy)."
    )

    def init_(self) -> None:
        """Apply masks, copy the selected critic into the target, build the first members."""
        self.loss_module._has_update_associated["qvalue_network"] = True
        self._init_selection()

    def _copy_target(self, winners: dict[str, int], *, at_init: bool) -> None:
        if at_init:
            self.polyak_update(1.0)

    def _after_rebuild(self, winners: dict[str, int]) -> None:
        # Member 0 (the selected one) is now the critic winner's copy.
        if self.hard_copy_on_selection:
            self.polyak_update(1.0)

    def _per_step_target(self) -> None:
        self.polyak_update()

    def update_target(self) -> tuple[int, int]:
        """Run the selection now (``step`` calls it at each period end); returns (critic, actor)."""
        winners = self._run_selection()
        return winners["critic"], winners["actor"]

    def _member_losses(self, losses: TensorDictBase | None) -> dict[str, torch.Tensor]:
        if losses is None:
            losses = self.loss_module.last_losses
            if losses is None:
                raise RuntimeError("step() needs member losses: call the loss module first")
        if not isinstance(losses, TensorDictBase):
            raise TypeError(f"losses must be a TensorDict, got {type(losses).__name__}")
        lc = losses.get("loss_qvalue_per_member").detach()
        la = losses.get("loss_actor_per_member").detach()
        if lc.shape != (self.critic.num_members,) or la.shape != (self.actor.num_members,):
            raise ValueError(
                f"per-member losses must have shapes [{self.critic.num_members}] (critic) and "
                f"[{self.actor.num_members}] (actor), got {tuple(lc.shape)} and {tuple(la.shape)}"
            )
        return {"critic": lc, "actor": la}

    def step(self, losses: TensorDictBase | None = None) -> None:
        """Call once after every optimizer step.

        Args:
            losses: the loss output (``loss_actor_per_member`` and
                ``loss_qvalue_per_member``); ``None`` reads the loss module's
                latest forward.
        """
        self._selection_step(losses)


class PolyPruneSACUpdater(_SACUpdaterBase):
    """PolyPruneSAC baseline: one actor and one critic pruned on a polynomial schedule.

    After every optimizer step both masks are re-applied and the target
    critic is Polyak-updated. Every ``prune_every`` steps between ``start``
    and ``end`` (and at ``end``) both networks are magnitude-pruned to
    ``polynomial_sparsity(step, final_sparsity, start, end)``. Steps count
    optimizer steps. The MuJoCo schedule bounds are unpublished: the
    defaults (20% to 80% of 1M steps, masks every 1000 steps) are this
    project's choice.

    Example:
        >>> from torchrl.data import Bounded
        >>> from torchrl_eaudeqn.modules import MaskedEnsembleTanhGaussianActor, MaskedEnsembleTwinQ
        >>> actor = MaskedEnsembleTanhGaussianActor(3, Bounded(-1.0, 1.0, shape=(2,)), 1,
        ...     hidden=(16,))
        >>> loss = EauDeSACLoss(actor, MaskedEnsembleTwinQ(3, 2, 1, hidden=(16,)))
        >>> up = PolyPruneSACUpdater(loss, final_sparsity=0.5, start=0, end=4, prune_every=2)
        >>> for _ in range(4): up.step()
        >>> round(float(actor.sparsity()[0]), 2), round(float(loss.qvalue_network.sparsity()[0]), 2)
        (0.5, 0.5)
    """

    def __init__(
        self,
        loss_module: EauDeSACLoss,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
        *,
        tau: float = 0.005,
        final_sparsity: float = 0.95,
        start: int = 200_000,
        end: int = 800_000,
        prune_every: int = 1000,
        power: float = 3.0,
        scope: Literal["global", "layer"] = "global",
        structure: Literal["weights", "filters"] = "weights",
    ) -> None:
        super().__init__(
            loss_module,
            optimizer,
            tau=tau,
            period=1,  # no selection period: the target is Polyak-averaged every step
            scope=scope,
            structure=structure,
            require_optimizer=False,
        )
        for name, ens in (("actor", self.actor), ("critic", self.critic)):
            if ens.num_members != 1:
                raise ValueError(
                    f"PolyPruneSACUpdater trains one network each: the {name} has "
                    f"{ens.num_members} members (use num_members=1)"
                )
        self.schedule = PolynomialSchedule(final_sparsity, start, end, prune_every, power)
        self.init_()

    def init_(self) -> None:
        self.loss_module._has_update_associated["qvalue_network"] = True
        self.apply_masks_()
        self.polyak_update(1.0)
        self.initialized = True

    def target_sparsity(self, step: int | None = None) -> float:
        """The schedule's sparsity at ``step`` (default: now)."""
        step = self.num_steps if step is None else step
        return self.schedule.sparsity(step)

    def step(self, losses: TensorDictBase | None = None) -> None:
        """Call once after every optimizer step (``losses`` is accepted and ignored)."""
        self.num_steps += 1
        t = self.num_steps
        if self.schedule.due(t):
            s = self.target_sparsity(t)
            for ens in (self.actor, self.critic):
                prune_member_to(ens, 0, s, scope=self.scope, structure=self.structure)
            self._record(
                {
                    "step": t,
                    "event": "prune",
                    "actor_sparsity": [float(self.actor.sparsity()[0])],
                    "critic_sparsity": [float(self.critic.sparsity()[0])],
                }
            )
        self.apply_masks_()
        self.polyak_update()
