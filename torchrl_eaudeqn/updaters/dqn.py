"""Target updaters: EauDeQN's target selection and the polynomial-pruning baseline.

Both keep the masks (pruned weights exactly zero after every optimizer step)
and replace the target network; they subclass TorchRL's
:class:`~torchrl.objectives.utils.TargetNetUpdater` so they slot in where a
``HardUpdate`` would, with the same ``init_``/``step``/``state_dict`` API.

"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from tensordict import TensorDictBase

from ..modules.ensemble import prune_member_to
from ..objectives.dqn import EauDeQNLoss
from ..sparsity import (
    LinearSpeedGrid,
    PolynomialSchedule,
    PruningSpeedPolicy,
)
from .common import MaskedUpdater, role_view

__all__ = ["PolyPruneUpdater", "TargetSelectionUpdater"]


def _copy_member_to_target(loss: EauDeQNLoss, k: int) -> None:
    loss.target_value_network_params.data.update_(loss.value_network.params[k].data)
    loss.target_masks.update_(loss.value_network.masks[k])


class _DQNUpdaterBase(MaskedUpdater):
    """DQN's additions to the base: one role, ``"value"``, the loss's Q-network."""

    def __init__(
        self,
        loss_module: EauDeQNLoss,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_module, EauDeQNLoss):
            raise TypeError(f"loss_module must be an EauDeQNLoss, got {type(loss_module).__name__}")
        networks = {"value": loss_module.value_network}
        super().__init__(loss_module, optimizer, networks=networks, **kwargs)
        self.actor = loss_module.value_network


class TargetSelectionUpdater(_DQNUpdaterBase):
    """EauDeQN's target update: select the best member, copy, prune, reset.

    Call :meth:`step` once after every optimizer step. It re-applies the
    masks (pruned weights exactly 0), adds the members' detached losses to
    per-period sums, and every ``period`` calls (exactly) it:

    1. selects ``j = argmin`` of the summed losses (ties: the less sparse
       member, then the lower index; NaN sums never win);
    2. copies member ``j`` (weights and mask) into the target network;
    3. sets member 0 to a copy of ``j`` (the steady member);
    4. sets member ``k >= 1`` to a copy of ``j`` magnitude-pruned to
       ``s_k = s_j + v_k * (1 - s_j)``, ``v_k`` from ``speed_policy``;
    5. resets the sums and (by default) the optimizer state of the members,
       and makes member 0 the acting member.

    Args:
        loss_module: the :class:`~torchrl_eaudeqn.EauDeQNLoss` whose actor and
            target are updated.
        optimizer: the optimizer over the members' parameters (required when
            ``reset_optimizer``).

    Keyword Args:
        period: optimizer steps between target updates (Atari: 2000).
        speed_policy: pruning speeds; default
            :class:`~torchrl_eaudeqn.sparsity.LinearSpeedGrid` ``(0.01)``.
        scope: magnitude ranking ``"global"`` (all layers together) or
            ``"layer"`` (each layer pruned to the same fraction).
        structure: ``"weights"`` (unstructured) or ``"filters"``: convolutions
            lose whole output filters (as many weights as the magnitude
            threshold takes from them, each removed filter counted once),
            which the compact export removes
            (:func:`~torchrl_eaudeqn.sparsity.magnitude_masks`).
        reset_optimizer: reset the members' optimizer state at each target
            update (released config: ``true``).
        prune_at_init: start the first period with pruned copies (``True``,
            this project's choice) or with K identical dense members.

    Example:
        >>> from torchrl.data import OneHot
        >>> from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor, mlp
        >>> actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(16,)), 3, action_spec=OneHot(2))
        >>> loss = EauDeQNLoss(actor)
        >>> opt = torch.optim.Adam(loss.parameters())
        >>> updater = TargetSelectionUpdater(loss, opt, period=2,
        ...     speed_policy=LinearSpeedGrid(0.5))
        >>> [round(float(s), 3) for s in actor.sparsity()]
        [0.0, 0.25, 0.5]
        >>> updater.step(torch.tensor([3.0, 1.0, 2.0])); updater.step(torch.tensor([3.0, 1.0, 2.0]))
        >>> updater.history[-1]["selected"], [round(float(s), 3) for s in actor.sparsity()]
        (1, [0.25, 0.438, 0.625])
    """

    def __init__(
        self,
        loss_module: EauDeQNLoss,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
        *,
        period: int = 2000,
        speed_policy: PruningSpeedPolicy | None = None,
        scope: Literal["global", "layer"] = "global",
        reset_optimizer: bool = True,
        prune_at_init: bool = True,
        structure: Literal["weights", "filters"] = "weights",
    ) -> None:
        super().__init__(
            loss_module,
            optimizer,
            period=period,
            scope=scope,
            structure=structure,
            require_optimizer=reset_optimizer,
            speed_policies={
                "value": LinearSpeedGrid(0.01) if speed_policy is None else speed_policy
            },
            reset_optimizer=reset_optimizer,
            prune_at_init=prune_at_init,
        )
        self.init_()

    speed_policy = role_view("speed_policy", "value", "The members' pruning-speed policy.")
    speeds = role_view("speeds", "value", "The members' pruning speeds in the current period.")
    loss_sums = role_view(
        "loss_sums", "value", "Summed member losses of the current period (CPU, float64, a copy)."
    )

    @loss_sums.setter
    def loss_sums(self, value: torch.Tensor) -> None:
        self._sums["value"].set_(value)

    def init_(self) -> None:
        """Apply the masks, copy the acting member into the target, build the first members."""
        self.loss_module._has_update_associated["value_network"] = True
        self._init_selection()

    def _copy_target(self, winners: dict[str, int], *, at_init: bool) -> None:
        _copy_member_to_target(self.loss_module, winners["value"])

    def select(self) -> int:
        """Index of the member with the smallest summed loss (ties: less sparse, lower index)."""
        return self._select()["value"]

    def update_target(self) -> int:
        """Run the selection now (``step`` calls it at the end of each period)."""
        return self._run_selection()["value"]

    def _member_losses(self, losses: TensorDictBase | torch.Tensor | None) -> dict:
        if losses is None:
            losses = self.loss_module.last_losses
            if losses is None:
                raise RuntimeError("step() needs member losses: call the loss module first")
        if isinstance(losses, TensorDictBase):
            losses = losses.get("loss_per_member")
        losses = torch.as_tensor(losses).detach()
        if losses.shape != (self.actor.num_members,):
            raise ValueError(
                f"losses must have shape [{self.actor.num_members}], got {tuple(losses.shape)}"
            )
        return {"value": losses}

    def step(self, losses: TensorDictBase | torch.Tensor | None = None) -> None:
        """Call once after every optimizer step.

        Args:
            losses: the loss module's output (a TensorDict with
                ``loss_per_member``) or the ``[K]`` member losses; ``None``
                reads the loss module's latest forward.
        """
        self._selection_step(losses)


class PolyPruneUpdater(_DQNUpdaterBase):
    """PolyPruneQN baseline: one network pruned on a polynomial schedule, hard target updates.

    After every optimizer step the mask is re-applied; every ``prune_every``
    steps between ``start`` and ``end`` (and at ``end``) the mask is
    recomputed by magnitude to ``polynomial_sparsity(step, final_sparsity,
    start, end)``; every ``period`` steps the network (weights and mask) is
    copied into the target. Steps count optimizer steps.

    Args:
        loss_module: an :class:`~torchrl_eaudeqn.EauDeQNLoss` over a one-member actor.

    Keyword Args:
        period: steps between hard target updates.
        final_sparsity: sparsity reached at ``end`` (paper: 0.95).
        start, end: schedule bounds, in optimizer steps.
        prune_every: steps between mask updates.
        power: exponent of the schedule (3).
        scope: ``"global"`` or ``"layer"`` magnitude ranking.
        structure: ``"weights"`` or ``"filters"`` (see :class:`TargetSelectionUpdater`).

    Example:
        >>> from torchrl.data import OneHot
        >>> from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor, mlp
        >>> actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(16,)), 1, action_spec=OneHot(2))
        >>> up = PolyPruneUpdater(EauDeQNLoss(actor), period=5, final_sparsity=0.5,
        ...     start=0, end=4, prune_every=2)
        >>> for _ in range(4): up.step()
        >>> round(float(actor.sparsity()[0]), 2)
        0.5
    """

    def __init__(
        self,
        loss_module: EauDeQNLoss,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        period: int = 2000,
        final_sparsity: float = 0.95,
        start: int = 500_000,
        end: int = 2_000_000,
        prune_every: int = 1000,
        power: float = 3.0,
        scope: Literal["global", "layer"] = "global",
        structure: Literal["weights", "filters"] = "weights",
    ) -> None:
        super().__init__(
            loss_module,
            optimizer,
            period=period,
            scope=scope,
            structure=structure,
            require_optimizer=False,
        )
        if self.actor.num_members != 1:
            raise ValueError(
                f"PolyPruneUpdater trains one network: value_network has {self.actor.num_members} "
                "members (use num_members=1)"
            )
        self.schedule = PolynomialSchedule(final_sparsity, start, end, prune_every, power)
        self.init_()

    def init_(self) -> None:
        self.loss_module._has_update_associated["value_network"] = True
        self.actor.apply_masks_()
        _copy_member_to_target(self.loss_module, 0)
        self.initialized = True

    def target_sparsity(self, step: int | None = None) -> float:
        """The schedule's sparsity at ``step`` (default: now)."""
        step = self.num_steps if step is None else step
        return self.schedule.sparsity(step)

    def step(self, losses: TensorDictBase | torch.Tensor | None = None) -> None:
        """Call once after every optimizer step (``losses`` is accepted and ignored)."""
        self.num_steps += 1
        t = self.num_steps
        if self.schedule.due(t):
            prune_member_to(
                self.actor, 0, self.target_sparsity(t), scope=self.scope, structure=self.structure
            )
            self._record(
                {"step": t, "event": "prune", "sparsity": [float(self.actor.sparsity()[0])]}
            )
        self.actor.apply_masks_()
        if t % self.period == 0:
            _copy_member_to_target(self.loss_module, 0)
            self._record(
                {
                    "step": t,
                    "event": "target",
                    "selected": 0,
                    "sparsity": [float(self.actor.sparsity()[0])],
                }
            )
