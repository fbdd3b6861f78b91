"""EauDeSAC: the EauDeQN mechanism applied to SAC's actor and critic (MuJoCo).

This project's design (the paper's SAC variant is unpublished; the contract
is docs/algorithm.md, "EauDeSAC"):

* K critic members, each a twin-Q pair under *one* mask set
  (:class:`MaskedEnsembleTwinQ`), regress on one shared target
  ``y = r + gamma (1 - terminated) (min(Q1_t, Q2_t)(s', a') - alpha log pi(a'|s'))``
  computed from one Polyak-averaged target critic (non-ensemble) that follows
  the selected critic member, with ``a'`` drawn from the selected actor member.
* K actor members (:class:`MaskedEnsembleTanhGaussianActor`) each minimise the
  SAC actor loss ``alpha log pi_k(a|s) - min(Q1, Q2)_sel(s, a)``,
  ``a ~ pi_k``, against the *selected* critic member.
* Entropy tuning is shared: one ``alpha`` driven by the selected actor's log-probs.
* Every ``period`` optimizer steps :class:`SACTargetSelectionUpdater` selects
  the critic member with the smallest summed critic loss and the actor member
  with the smallest summed actor loss and rebuilds both ensembles as
  docs/algorithm.md specifies for DQN (steady member 0, others pruned further).

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    TensorDictParams,
    dispatch,
)
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives.utils import distance_loss

from ..modules.sac import MaskedEnsembleTanhGaussianActor, MaskedEnsembleTwinQ
from .common import BootstrapLossBase

__all__ = ["OPTIMIZED_LOSS_KEYS", "EauDeSACLoss"]


#: The loss keys an optimiser should sum (the ``*_per_member`` ones are detached, ``[K]``).
OPTIMIZED_LOSS_KEYS = ("loss_actor", "loss_qvalue", "loss_alpha")


class EauDeSACLoss(BootstrapLossBase):
    """SAC losses of every actor and critic member on one batch, one shared target critic.

    With ``sel_a``/``sel_c`` the selected actor/critic members, for each
    transition:

    * target: ``a' ~ pi_sel_a(.|s')`` (no gradient),
      ``y = r + gamma (1 - terminated) (min(Q1_t, Q2_t)(s', a') - alpha log pi_sel_a(a'|s'))``
      from the target critic ``target_qvalue_network_params`` (one twin-Q pair);
    * critic member ``k``: ``sum_i d(Q_{k,i}(s, a), y)`` (``d`` = ``loss_function``),
      batch mean -> ``loss_qvalue_per_member[k]``;
    * actor member ``k``: ``a_k ~ pi_k(.|s)`` reparameterised,
      ``alpha log pi_k(a_k|s) - min_i Q_{sel_c,i}(s, a_k)`` (critic parameters
      detached), batch mean -> ``loss_actor_per_member[k]``;
    * ``loss_alpha = mean(-log_alpha (log pi_sel_a(a_sel_a|s) + target_entropy))``.

    For K = 1 this is TorchRL's :class:`~torchrl.objectives.SACLoss` (v2, no
    value network) with the same ``loss_function`` (tests check equality).
    TorchRL's ``SACLoss`` defaults to ``smooth_l1``; this loss defaults to
    ``l2``, the loss of standard SAC.

    Returns (``forward``): a TensorDict with ``loss_actor``, ``loss_qvalue``,
    ``loss_alpha`` (scalars to optimise: the member sums and the alpha loss),
    ``loss_actor_per_member`` and ``loss_qvalue_per_member`` (``[K]``,
    detached, for the updater), ``alpha`` and ``entropy`` (detached). The
    selected critic member's ``max_i |Q_i - y|`` is written in place to
    ``td_error`` (prioritized replay).

    .. note:: TorchRL's ``Trainer`` sums every output key starting with
       ``"loss"``; the ``[K]`` per-member entries would make that sum a
       vector. Optimise ``sum(out[k] for k in ("loss_actor", "loss_qvalue",
       "loss_alpha"))`` (``OPTIMIZED_LOSS_KEYS``);
       :meth:`SACTargetSelectionUpdater.register` restricts the trainer to them.

    Args:
        actor_network: the actor ensemble.
        qvalue_network: the critic ensemble.

    Keyword Args:
        loss_function: ``"l2"`` (default), ``"smooth_l1"`` or ``"l1"``.
        alpha_init: initial entropy coefficient (1.0, as ``SACLoss``).
        min_alpha, max_alpha: optional clamps of alpha.
        fixed_alpha: keep alpha constant (``log_alpha`` is then a buffer).
        target_entropy: ``"auto"`` (``-action_dim``) or a number.
        reduction: ``"mean"`` or ``"sum"`` over the batch.
        use_prioritized_weights: ``"auto"`` uses ``priority_weight`` when present.

    Example:
        >>> from torchrl.data import Bounded
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> actor = MaskedEnsembleTanhGaussianActor(3, spec, 2, hidden=(8,))
        >>> critic = MaskedEnsembleTwinQ(3, 2, 2, hidden=(8,))
        >>> loss = EauDeSACLoss(actor, critic)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(4, 3), "action": torch.rand(4, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(4, 3), "reward": torch.ones(4, 1),
        ...              "done": torch.zeros(4, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(4, 1, dtype=torch.bool)},
        ... }, batch_size=[4])
        >>> out = loss(batch)
        >>> out["loss_qvalue_per_member"].shape, out["loss_actor"].requires_grad
        (torch.Size([2]), True)
    """

    @dataclass
    class _AcceptedKeys(BootstrapLossBase._AcceptedKeys):
        """Keys read and written by the loss; change them with ``set_keys``.

        Besides the shared keys (action, value_target, priority, reward,
        done, terminated, priority_weight):

        Attributes:
            value: next-state value handed to the value estimator.
            state_action_value: the critic's output key.
        """

        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = [
        "loss_actor",
        "loss_qvalue",
        "loss_alpha",
        "loss_actor_per_member",
        "loss_qvalue_per_member",
        "alpha",
        "entropy",
    ]

    actor_network: MaskedEnsembleTanhGaussianActor
    qvalue_network: MaskedEnsembleTwinQ
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: MaskedEnsembleTanhGaussianActor,
        qvalue_network: MaskedEnsembleTwinQ,
        *,
        loss_function: str = "l2",
        alpha_init: float = 1.0,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        reduction: str = "mean",
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        if not isinstance(actor_network, MaskedEnsembleTanhGaussianActor):
            raise TypeError(
                "actor_network must be a MaskedEnsembleTanhGaussianActor, got "
                f"{type(actor_network).__name__}"
            )
        if not isinstance(qvalue_network, MaskedEnsembleTwinQ):
            raise TypeError(
                f"qvalue_network must be a MaskedEnsembleTwinQ, got {type(qvalue_network).__name__}"
            )
        if not alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init}")
        if target_entropy != "auto" and not isinstance(target_entropy, (int, float)):
            raise ValueError(f"target_entropy must be 'auto' or a number, got {target_entropy!r}")
        super().__init__(
            loss_function=loss_function,
            reduction=reduction,
            use_prioritized_weights=use_prioritized_weights,
        )
        self.actor_network = actor_network
        self.qvalue_network = qvalue_network
        k = qvalue_network.selected
        # One twin-Q pair (no ensemble dim), Polyak-averaged by the updaters.
        self.target_qvalue_network_params = TensorDictParams(
            qvalue_network.params[k].data.clone(), no_convert=True
        )
        self._has_update_associated["qvalue_network"] = False
        device = actor_network.low.device
        log_alpha = torch.tensor(math.log(alpha_init), device=device)
        self.fixed_alpha = fixed_alpha
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.log_alpha = nn.Parameter(log_alpha)
        self.min_log_alpha = None if min_alpha is None else math.log(min_alpha)
        self.max_log_alpha = None if max_alpha is None else math.log(max_alpha)
        if target_entropy == "auto":
            target_entropy = -float(actor_network.action_dim)
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy), device=device))
        self._last: TensorDict | None = None

    def _observation_keys(self) -> list[NestedKey]:
        return list(self.actor_network.in_keys)

    def _extra_in_keys(self) -> list[NestedKey]:
        return list(self.qvalue_network.in_keys)

    # ------------------------------------------------------------- helpers
    @property
    def _alpha(self) -> torch.Tensor:
        if self.min_log_alpha is not None or self.max_log_alpha is not None:
            self.log_alpha.data.clamp_(self.min_log_alpha, self.max_log_alpha)
        return self.log_alpha.detach().exp()

    def _critic_inputs(
        self, tensordict: TensorDictBase, action: torch.Tensor, prefix: tuple = ()
    ) -> list[torch.Tensor]:
        # The critic reads its in_keys; the action key is replaced by `action`.
        out = []
        for key in self.qvalue_network.in_keys:
            if key == self.tensor_keys.action:
                out.append(action)
            else:
                full = prefix + (key if isinstance(key, tuple) else (key,))
                out.append(tensordict.get(full))
        return out

    def _reduce(self, per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """[B..., K] -> [K] (the loss's reduction over batch dims, optional IS weights)."""
        batch_dims = tuple(range(per_sample.ndim - 1))
        if weights is not None:
            w = weights.reshape(*per_sample.shape[:-1], 1).to(per_sample.dtype)
            total = (per_sample * w).sum(batch_dims)
            return total / w.sum() if self.reduction == "mean" else total
        return (
            per_sample.mean(batch_dims) if self.reduction == "mean" else per_sample.sum(batch_dims)
        )

    @torch.no_grad()
    def target_value(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The bootstrap target ``y`` ``[B...]`` (no gradient)."""
        actor = self.actor_network
        next_obs = [tensordict.get(("next", key)) for key in actor.in_keys]
        dist = actor.member_dist(actor.selected, *next_obs)
        next_action, next_log_prob = dist.rsample_and_log_prob()
        q_t = self.qvalue_network._call(
            self.target_qvalue_network_params,
            *self._critic_inputs(tensordict, next_action, prefix=("next",)),
        )
        next_value = q_t.min(-1, keepdim=True).values - self._alpha * next_log_prob.unsqueeze(-1)
        td = tensordict.clone(False)
        return self.value_estimator.value_estimate(td, next_value=next_value).squeeze(-1)

    # ------------------------------------------------------------- forward
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Compute every member's losses on one batch (see the class docstring)."""
        actor, critic = self.actor_network, self.qvalue_network
        weights = self._maybe_get_priority_weight(tensordict)
        # Same order of random draws as TorchRL's SACLoss (target first, then
        # the actor's actions), so that K = 1 reproduces it under one seed.
        target = self.target_value(tensordict)  # [B]

        # Critic: every member on the batch's actions.
        q = critic.ensemble_values(
            *self._critic_inputs(tensordict, tensordict.get(self.tensor_keys.action))
        )  # [B, K, 2]
        critic_elem = distance_loss(
            q, target[..., None, None].expand_as(q), loss_function=self.loss_function
        ).sum(-1)  # [B, K]
        loss_qvalue_pm = self._reduce(critic_elem, weights)
        with torch.no_grad():
            td_error = (q[..., critic.selected, :] - target.unsqueeze(-1)).abs().max(-1).values
        tensordict.set(self.tensor_keys.priority, td_error)

        # Actors: member k's reparameterised action scored by the selected critic.
        obs = [tensordict.get(key) for key in actor.in_keys]
        dist = actor.ensemble_dist(*obs)  # batch [B, K]
        action, log_prob = dist.rsample_and_log_prob()  # [B, K, A], [B, K]
        k = actor.num_members
        expanded = {
            key: tensordict.get(key).unsqueeze(-2).expand(*action.shape[:-1], -1)
            for key in critic.in_keys
            if key != self.tensor_keys.action
        }
        q_pi = critic.member_values(
            critic.selected,
            *[
                action if key == self.tensor_keys.action else expanded[key]
                for key in critic.in_keys
            ],
            detach=True,
        )  # [B, K, 2]
        actor_elem = self._alpha * log_prob - q_pi.min(-1).values  # [B, K]
        loss_actor_pm = self._reduce(actor_elem, weights)

        log_prob_sel = log_prob[..., actor.selected].detach()
        alpha_elem = -self.log_alpha * (log_prob_sel + self.target_entropy)
        loss_alpha = self._reduce(alpha_elem.unsqueeze(-1), weights).squeeze(-1)

        assert loss_actor_pm.shape == (k,) and loss_qvalue_pm.shape == (critic.num_members,)
        out = TensorDict(
            {
                "loss_actor": loss_actor_pm.sum(),
                "loss_qvalue": loss_qvalue_pm.sum(),
                "loss_alpha": loss_alpha,
                "loss_actor_per_member": loss_actor_pm.detach(),
                "loss_qvalue_per_member": loss_qvalue_pm.detach(),
                "alpha": self._alpha,
                "entropy": -log_prob_sel.mean(),
            }
        )
        self._last = out.select("loss_actor_per_member", "loss_qvalue_per_member")
        return out

    @property
    def last_losses(self) -> TensorDict | None:
        """``loss_actor_per_member`` and ``loss_qvalue_per_member`` of the latest forward."""
        return self._last
