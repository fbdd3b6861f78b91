"""EauDeQN loss: K masked online Q-networks regress on one shared target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    TensorDictParams,
    dispatch,
)
from tensordict.utils import NestedKey
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import TD0Estimator

from ..modules.dqn import MaskedEnsembleQValueActor
from .common import BootstrapLossBase

__all__ = ["EauDeQNLoss"]


class EauDeQNLoss(BootstrapLossBase):
    """TD loss of every member of a masked ensemble against one target network.

    Per batch the bootstrap target is computed once from the shared target
    network, ``y = r + gamma * (1 - terminated) * max_a Q_target(s', a)``
    (TorchRL's TD(0) estimator: ``terminated`` stops bootstrapping,
    ``truncated`` does not). Every member regresses on the same ``y``; the
    returned ``loss`` is the *sum* of the member losses, so one backward gives
    each member the gradient of its own loss only.

    The target network (``target_value_network_params``, one member's
    structure, no ensemble dim) and its mask (``target_masks``) are buffers
    of this module. They start as a copy of the selected member and are
    replaced by :class:`~torchrl_eaudeqn.TargetSelectionUpdater` (or
    :class:`~torchrl_eaudeqn.PolyPruneUpdater`).

    Args:
        value_network: the online ensemble.

    Keyword Args:
        loss_function: ``"l2"`` (default, as TorchRL's ``DQNLoss``),
            ``"smooth_l1"`` (Huber) or ``"l1"``.
        reduction: ``"mean"`` (default) or ``"sum"`` over the batch.
        use_prioritized_weights: ``"auto"`` uses the ``priority_weight`` key
            of prioritized replay when present.

    Returns (``forward``):
        A TensorDict with ``loss`` (scalar, sum over members, differentiable)
        and ``loss_per_member`` (``[K]``, detached). ``td_error`` (the
        selected member's squared TD error, as ``DQNLoss`` writes it) is set
        in the input tensordict in place, for prioritized replay.

    .. note:: With TorchRL's ``Trainer``, restrict the optimizer to the
       ``loss`` key (``TargetSelectionUpdater.register`` does it): the
       trainer otherwise sums every key that starts with ``"loss"``.

    Example:
        >>> from torchrl.data import OneHot
        >>> from torchrl_eaudeqn import MaskedEnsembleQValueActor, mlp
        >>> actor = MaskedEnsembleQValueActor(mlp(3, 4, hidden=()), 2, action_spec=OneHot(4))
        >>> loss = EauDeQNLoss(actor)
        >>> loss.make_value_estimator(gamma=0.9)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(2, 3),
        ...     "action": torch.nn.functional.one_hot(torch.tensor([0, 3]), 4),
        ...     "next": {"observation": torch.randn(2, 3), "reward": torch.ones(2, 1),
        ...              "done": torch.zeros(2, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(2, 1, dtype=torch.bool)},
        ... }, batch_size=[2])
        >>> out = loss(batch)
        >>> out["loss"].shape, out["loss_per_member"].shape
        (torch.Size([]), torch.Size([2]))
    """

    @dataclass
    class _AcceptedKeys(BootstrapLossBase._AcceptedKeys):
        """Keys read and written by the loss; change them with ``set_keys``.

        Besides the shared keys (action, value_target, priority, reward,
        done, terminated, priority_weight):

        Attributes:
            advantage: advantage written by the value estimator.
            value: chosen action value.
            action_value: the ensemble's ``[..., K, n]`` action values.
        """

        advantage: NestedKey = "advantage"
        value: NestedKey = "chosen_action_value"
        action_value: NestedKey = "action_value"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = ["loss", "loss_per_member"]

    value_network: MaskedEnsembleQValueActor
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        value_network: MaskedEnsembleQValueActor,
        *,
        loss_function: str = "l2",
        reduction: str = "mean",
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        if not isinstance(value_network, MaskedEnsembleQValueActor):
            raise TypeError(
                "value_network must be a MaskedEnsembleQValueActor, got "
                f"{type(value_network).__name__}"
            )
        super().__init__(
            loss_function=loss_function,
            reduction=reduction,
            use_prioritized_weights=use_prioritized_weights,
        )
        self.value_network = value_network
        self.action_space = "categorical" if _is_categorical(value_network) else "one-hot"
        k = value_network.selected
        self.target_value_network_params = TensorDictParams(
            value_network.params[k].data.clone(), no_convert=True
        )
        self.target_masks = TensorDictParams(value_network.masks[k].clone(), no_convert=True)
        # LossModule warns when a target is read with no updater attached;
        # the updaters flip this flag.
        self._has_update_associated["value_network"] = False
        self._last: TensorDict | tuple[torch.Tensor, torch.Tensor] | None = None

    def _observation_keys(self) -> list[NestedKey]:
        return list(self.value_network.in_keys)

    # ------------------------------------------------------------- forward
    @torch.no_grad()
    def target_values(self, *next_inputs: torch.Tensor) -> torch.Tensor:
        """``max_a Q_target(s', a)`` with a trailing singleton dim."""
        actor = self.value_network
        q = actor._call(self.target_value_network_params, *next_inputs)
        return q.max(-1, keepdim=True).values

    def _chosen(
        self, values: torch.Tensor, action: torch.Tensor, indices: bool = False
    ) -> torch.Tensor:
        # values: [B, K, n] -> [B, K]
        if indices or self.action_space == "categorical":
            if action.ndim == values.ndim - 2:
                action = action.unsqueeze(-1)
            index = action.unsqueeze(-2).expand(*values.shape[:-1], 1)
            return values.gather(-1, index).squeeze(-1)
        return (values * action.unsqueeze(-2).to(values.dtype)).sum(-1)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Compute the member losses on one batch (see the class docstring)."""
        actor = self.value_network
        next_inputs = [tensordict.get(("next", key)) for key in actor.in_keys]
        td_copy = tensordict.clone(False)
        target = self.value_estimator.value_estimate(
            td_copy, next_value=self.target_values(*next_inputs)
        ).squeeze(-1)

        weights = None
        if self.use_prioritized_weights in (
            True,
            "auto",
        ) and self.tensor_keys.priority_weight in tensordict.keys(True):
            weights = tensordict.get(self.tensor_keys.priority_weight)
        inputs = [tensordict.get(key) for key in actor.in_keys]
        loss, per_member, priority = self._member_losses(
            inputs, tensordict.get(self.tensor_keys.action), target.detach(), weights
        )
        tensordict.set(self.tensor_keys.priority, priority.unsqueeze(-1), inplace=True)
        self._last = TensorDict({"loss": loss, "loss_per_member": per_member})
        return self._last

    def td_losses(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_observation: torch.Tensor,
        terminated: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on plain tensors: ``(loss, loss_per_member)``.

        The same numbers as :meth:`forward` on the same batch (a test checks
        it bit for bit) without building TensorDicts, which on the small tasks
        cost as much as the networks' forward. It reads one observation key,
        integer ``action`` ``[B]``, ``reward`` and boolean ``terminated``
        ``[B]``, and needs the TD(0) value estimator (the default).

        Example:
            >>> from torchrl.data import OneHot
            >>> from torchrl_eaudeqn import MaskedEnsembleQValueActor, mlp
            >>> actor = MaskedEnsembleQValueActor(mlp(3, 4, hidden=()), 2, action_spec=OneHot(4))
            >>> loss = EauDeQNLoss(actor)
            >>> loss.make_value_estimator(gamma=0.9)
            >>> total, per_member = loss.td_losses(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0]),
            ...     torch.ones(5), torch.randn(5, 3), torch.zeros(5, dtype=torch.bool))
            >>> total.shape, per_member.shape
            (torch.Size([]), torch.Size([2]))
        """
        estimator = self.value_estimator
        if not isinstance(estimator, TD0Estimator) or len(self.value_network.in_keys) != 1:
            raise ValueError(
                "td_losses needs the TD(0) value estimator and one observation key; "
                "call the loss on a TensorDict instead"
            )
        # td0_return_estimate's arithmetic, in its order, so the values match forward's.
        next_value = self.target_values(next_observation).squeeze(-1)
        gamma = estimator.gamma.to(reward.device)
        target = reward + gamma * (~terminated).int() * next_value
        loss, per_member, _ = self._member_losses(
            [observation], action, target.detach(), None, indices=True, priority=False
        )
        self._last = (loss, per_member)
        return loss, per_member

    def _member_losses(
        self,
        inputs: list[torch.Tensor],
        action: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor | None,
        indices: bool = False,
        priority: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loss, detached loss_per_member, the selected member's squared TD error)``."""
        actor = self.value_network
        values = actor.ensemble_values(*inputs)
        pred = self._chosen(values, action, indices)  # [B, K]
        td_error = None
        if priority:  # for prioritized replay only
            with torch.no_grad():
                td_error = (pred[..., actor.selected] - target).pow(2)
        elementwise = distance_loss(pred, target.unsqueeze(-1).expand_as(pred), self.loss_function)
        batch_dims = tuple(range(elementwise.ndim - 1))
        if weights is not None:
            weights = weights.reshape(*pred.shape[:-1], 1)
            elementwise = elementwise * weights
        per_member = elementwise.sum(batch_dims)
        if self.reduction == "mean":
            # Weighted mean with importance weights, as DQNLoss reduces them.
            per_member = per_member / (
                weights.sum() if weights is not None else pred[..., 0].numel()
            )
        return per_member.sum(), per_member.detach(), td_error

    @property
    def last_losses(self) -> TensorDict | None:
        """The latest forward's output: ``loss`` and the detached ``[K]`` ``loss_per_member``."""
        if isinstance(self._last, tuple):  # td_losses: built only when asked for
            loss, per_member = self._last
            self._last = TensorDict({"loss": loss, "loss_per_member": per_member})
        return self._last


def _is_categorical(actor: MaskedEnsembleQValueActor) -> bool:
    from torchrl.data import Categorical

    return isinstance(actor.action_spec, Categorical)
