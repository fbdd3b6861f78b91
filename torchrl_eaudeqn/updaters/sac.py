"""EauDeSAC's updaters: selection of an actor and a critic member, and the PolyPrune baseline."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torchrl.objectives.utils import TargetNetUpdater

from ..modules.ensemble import _positive_int, prune_member_to, rebuild_members
from ..objectives.sac import OPTIMIZED_LOSS_KEYS, EauDeSACLoss
from ..sparsity import (
    LinearSpeedGrid,
    PolynomialSchedule,
    PruningSpeedPolicy,
)
from .common import TrainerHooks, optimizer_list, select_member

__all__ = ["PolyPruneSACUpdater", "SACTargetSelectionUpdater"]


class _SACUpdaterBase(TrainerHooks, TargetNetUpdater):
    optimized_loss_keys = OPTIMIZED_LOSS_KEYS

    """Checks, mask re-application, Polyak target, optimizer reset, Trainer hooks."""

    def __init__(
        self,
        loss_module: EauDeSACLoss,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
        *,
        tau: float,
        scope: Literal["global", "layer"],
        require_optimizer: bool,
    ) -> None:
        # TargetNetUpdater.__init__ pairs same-shape source/target parameters;
        # ours are an ensemble [K] and one twin-Q pair, so it is not called.
        if not isinstance(loss_module, EauDeSACLoss):
            raise TypeError(
                f"loss_module must be an EauDeSACLoss, got {type(loss_module).__name__}"
            )
        tau = float(tau)
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.tau, self.scope = tau, scope
        self.loss_module = loss_module
        self.actor = loss_module.actor_network
        self.critic = loss_module.qvalue_network
        self.optimizers = optimizer_list(optimizer)
        if not self.optimizers and require_optimizer:
            raise ValueError("optimizer is required to reset the members' optimizer state")
        if self.optimizers:
            held = {id(p) for opt in self.optimizers for g in opt.param_groups for p in g["params"]}
            for name, ens in (("actor", self.actor), ("critic", self.critic)):
                missing = [n for n, p in ens.named_parameters() if id(p) not in held]
                if missing:
                    raise ValueError(
                        f"optimizer does not hold the {name} members' parameters (missing "
                        f"{missing[:3]}); build it from loss_module.parameters()"
                    )
        self.num_steps = 0
        self._init_history()
        self.initialized = False

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

    def apply_masks_(self) -> None:
        """Zero every pruned actor and critic weight now.

        ``step`` does it after each optimizer step; call it before using the
        networks in between.
        """
        self.actor.apply_masks_()
        self.critic.apply_masks_()

    def _reset_optimizer(self) -> None:
        params = [*self.actor.parameters(), *self.critic.parameters()]
        for opt in self.optimizers:
            for p in params:
                opt.state.pop(p, None)

    def step(self, losses: TensorDictBase | None = None) -> None:
        raise NotImplementedError

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
    ) -> None:
        super().__init__(
            loss_module, optimizer, tau=tau, scope=scope, require_optimizer=reset_optimizer
        )
        self.period = _positive_int(period, "period")
        self.speed_policy = LinearSpeedGrid(0.01) if speed_policy is None else speed_policy
        self.actor_speed_policy = (
            copy.deepcopy(self.speed_policy) if actor_speed_policy is None else actor_speed_policy
        )
        for name, pol in (
            ("speed_policy", self.speed_policy),
            ("actor_speed_policy", self.actor_speed_policy),
        ):
            if not isinstance(pol, PruningSpeedPolicy):
                raise TypeError(f"{name} must be a PruningSpeedPolicy, got {type(pol).__name__}")
        if self.actor_speed_policy is self.speed_policy:
            # A stateful policy (NoisySpeedPolicy) remembers the last winner's speed.
            raise ValueError("actor_speed_policy must be a different object from speed_policy")
        self.reset_optimizer = reset_optimizer
        self.prune_at_init = prune_at_init
        self.hard_copy_on_selection = hard_copy_on_selection
        self.steps_in_period = 0
        self.critic_loss_sums = torch.zeros(self.critic.num_members, dtype=torch.float64)
        self.actor_loss_sums = torch.zeros(self.actor.num_members, dtype=torch.float64)
        self.critic_speeds = [0.0] * self.critic.num_members
        self.actor_speeds = [0.0] * self.actor.num_members
        self.init_()

    def init_(self) -> None:
        """Apply masks, copy the selected critic into the target, build the first members."""
        self.loss_module._has_update_associated["qvalue_network"] = True
        self.apply_masks_()
        self.polyak_update(1.0)
        if self.prune_at_init:
            self._rebuild(self.critic.selected, self.actor.selected)
        self.initialized = True

    def _rebuild(self, j_critic: int, j_actor: int) -> None:
        self.critic_speeds = list(self.speed_policy.speeds(self.critic.num_members, j_critic))
        self.actor_speeds = list(self.actor_speed_policy.speeds(self.actor.num_members, j_actor))
        rebuild_members(self.critic, j_critic, self.critic_speeds, self.scope)
        rebuild_members(self.actor, j_actor, self.actor_speeds, self.scope)
        if self.reset_optimizer:
            self._reset_optimizer()

    def update_target(self) -> tuple[int, int]:
        """Run the selection now (``step`` calls it at each period end); returns (critic, actor)."""
        c_sp = [float(s) for s in self.critic.sparsity()]
        a_sp = [float(s) for s in self.actor.sparsity()]
        j_c = select_member(self.critic_loss_sums, c_sp)
        j_a = select_member(self.actor_loss_sums, a_sp)
        entry = {
            "step": self.num_steps,
            "critic_selected": j_c,
            "actor_selected": j_a,
            "critic_selected_sparsity": c_sp[j_c],
            "actor_selected_sparsity": a_sp[j_a],
            "critic_loss_sums": self.critic_loss_sums.tolist(),
            "actor_loss_sums": self.actor_loss_sums.tolist(),
            "critic_speeds_before": list(self.critic_speeds),
            "actor_speeds_before": list(self.actor_speeds),
        }
        self._rebuild(j_c, j_a)
        if self.hard_copy_on_selection:
            self.polyak_update(1.0)
        entry["critic_sparsity"] = [float(s) for s in self.critic.sparsity()]
        entry["actor_sparsity"] = [float(s) for s in self.actor.sparsity()]
        self._record(entry)
        self.critic_loss_sums.zero_()
        self.actor_loss_sums.zero_()
        self.steps_in_period = 0
        return j_c, j_a

    def step(self, losses: TensorDictBase | None = None) -> None:
        """Call once after every optimizer step.

        Args:
            losses: the loss output (``loss_actor_per_member`` and
                ``loss_qvalue_per_member``); ``None`` reads the loss module's
                latest forward.
        """
        if losses is None:
            losses = self.loss_module.last_losses
            if losses is None:
                raise RuntimeError("step() needs member losses: call the loss module first")
        if not isinstance(losses, TensorDictBase):
            raise TypeError(f"losses must be a TensorDict, got {type(losses).__name__}")
        lc = losses.get("loss_qvalue_per_member").detach().double().cpu()
        la = losses.get("loss_actor_per_member").detach().double().cpu()
        if lc.shape != self.critic_loss_sums.shape or la.shape != self.actor_loss_sums.shape:
            raise ValueError(
                f"per-member losses must have shapes [{self.critic.num_members}] (critic) and "
                f"[{self.actor.num_members}] (actor), got {tuple(lc.shape)} and {tuple(la.shape)}"
            )
        self.apply_masks_()
        self.polyak_update()
        self.critic_loss_sums += lc
        self.actor_loss_sums += la
        self.num_steps += 1
        self.steps_in_period += 1
        if self.steps_in_period >= self.period:
            self.update_target()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            period=self.period,
            steps_in_period=self.steps_in_period,
            critic_loss_sums=self.critic_loss_sums.clone(),
            actor_loss_sums=self.actor_loss_sums.clone(),
            critic_speeds=list(self.critic_speeds),
            actor_speeds=list(self.actor_speeds),
            speed_policy=self.speed_policy.state_dict(),
            actor_speed_policy=self.actor_speed_policy.state_dict(),
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.steps_in_period = int(state_dict["steps_in_period"])
        self.critic_loss_sums = state_dict["critic_loss_sums"].clone().double()
        self.actor_loss_sums = state_dict["actor_loss_sums"].clone().double()
        self.critic_speeds = list(state_dict["critic_speeds"])
        self.actor_speeds = list(state_dict["actor_speeds"])
        self.speed_policy.load_state_dict(state_dict["speed_policy"])
        self.actor_speed_policy.load_state_dict(state_dict["actor_speed_policy"])


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
    ) -> None:
        super().__init__(loss_module, optimizer, tau=tau, scope=scope, require_optimizer=False)
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
            prune_member_to(self.actor, 0, s, self.scope)
            prune_member_to(self.critic, 0, s, self.scope)
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
