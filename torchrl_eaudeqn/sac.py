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

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    InteractionType,
    NormalParamExtractor,
    TensorDictModule,
    TensorDictParams,
    dispatch,
)
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import TensorSpec
from torchrl.modules import ProbabilisticActor, TanhNormal
from torchrl.objectives.utils import TargetNetUpdater, distance_loss

from ._ensemble import (
    MaskedEnsemble,
    TrainerHooks,
    _positive_int,
    optimizer_list,
    prune_member_to,
    rebuild_members,
    select_member,
)
from .modules import mlp
from .objectives import BootstrapLossBase
from .sparsity import LinearSpeedGrid, PolynomialSchedule, PruningSpeedPolicy

__all__ = [
    "EauDeSACLoss",
    "MaskedEnsembleTanhGaussianActor",
    "MaskedEnsembleTwinQ",
    "PolyPruneSACUpdater",
    "SACTargetSelectionUpdater",
    "TanhDeterministicPolicy",
    "TwinQNetwork",
]

_LOSS_FUNCTIONS = ("l2", "l1", "smooth_l1")
#: The loss keys an optimiser should sum (the ``*_per_member`` ones are detached, ``[K]``).
OPTIMIZED_LOSS_KEYS = ("loss_actor", "loss_qvalue", "loss_alpha")


def _continuous_bounds(action_spec: TensorSpec) -> tuple[torch.Tensor, torch.Tensor]:
    if action_spec is None or getattr(action_spec, "domain", None) != "continuous":
        raise ValueError(
            f"continuous Box action spec required (Bounded), got {type(action_spec).__name__}"
        )
    space = getattr(action_spec, "space", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None:
        raise ValueError(
            "continuous Box action spec required (Bounded with low/high), got "
            f"{type(action_spec).__name__}"
        )
    low, high = torch.as_tensor(low).float(), torch.as_tensor(high).float()
    if low.ndim > 1:
        # Batched env specs repeat the bounds per env; the members need one row.
        low, high = low.reshape(-1, low.shape[-1]), high.reshape(-1, high.shape[-1])
        if not bool((low == low[0]).all() and (high == high[0]).all()):
            raise ValueError("action bounds differ across batched envs; one set is required")
        low, high = low[0], high[0]
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
        raise ValueError("action spec bounds must be finite with high > low")
    return low, high


# ---------------------------------------------------------------------- actor
class _SelectedLocScale(nn.Module):
    """obs -> (loc, scale) of the ensemble's selected member (for ProbabilisticActor)."""

    def __init__(self, ensemble: MaskedEnsembleTanhGaussianActor) -> None:
        super().__init__()
        # Not a submodule: the ensemble owns the parameters, this is a view.
        self.__dict__["ensemble"] = ensemble

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ens = self.__dict__["ensemble"]
        return ens.member_call(ens.selected, *inputs)


class TanhDeterministicPolicy(nn.Module):
    """Plain deterministic SAC policy: ``obs -> low + (high - low) (tanh(mean) + 1) / 2``.

    Holds one actor member's MLP (masks applied) and the action bounds as
    buffers; this is what :meth:`MaskedEnsembleTanhGaussianActor.member_network`
    returns for the model registry.

    Example:
        >>> pol = TanhDeterministicPolicy(mlp(3, 4, hidden=(8,)), -torch.ones(2), torch.ones(2))
        >>> pol(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, net: nn.Module, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("low", torch.as_tensor(low).clone())
        self.register_buffer("high", torch.as_tensor(high).clone())

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        # NormalParamExtractor splits [loc, scale] along the last dim: loc first.
        loc = self.net(observation).chunk(2, -1)[0]
        return (self.high + self.low) / 2 + (self.high - self.low) / 2 * torch.tanh(loc)


class MaskedEnsembleTanhGaussianActor(MaskedEnsemble):
    """K masked SAC actors (TanhNormal policies) with one architecture.

    Each member is ``NormalParamExtractor(mlp(obs) -> [loc, scale_raw])``; the
    policy is a :class:`~torchrl.modules.TanhNormal` scaled to the action
    bounds. All members start from the same weights; masks cover the MLP's
    Linear weights.

    Acting (``forward``, :attr:`policy`) uses the selected member only, through
    a TorchRL :class:`~torchrl.modules.ProbabilisticActor`: it samples by
    default (``InteractionType.RANDOM``) and returns the tanh of the mean under
    ``set_exploration_type(ExplorationType.DETERMINISTIC)``. It writes
    ``loc``, ``scale``, ``action`` and the action's log-prob, so collectors and
    ``env.rollout(policy=actor)`` accept it. Training reads every member via
    :meth:`ensemble_dist`.

    Args:
        observation_dim: size of the (flat) observation; ignored when
            ``network`` is given.
        action_spec: the environment's continuous (Bounded) action spec.
        num_members: K >= 1.

    Keyword Args:
        hidden: hidden widths of the default MLP (256, 256).
        network: a custom ``nn.Module`` obs -> ``[..., 2 * action_dim]``.
        in_keys: observation keys passed positionally to the network.
        scale_mapping, scale_lb: passed to
            :class:`~tensordict.nn.NormalParamExtractor` (defaults: TorchRL's
            SAC example, ``"biased_softplus_1.0"`` and ``0.1``).
        use_vmap: vmap (``True``), a loop (``False``) or vmap when K > 1 (``None``).
        selected: index of the acting member.

    Example:
        >>> from torchrl.data import Bounded
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> actor = MaskedEnsembleTanhGaussianActor(3, spec, 4, hidden=(8,))
        >>> td = actor(TensorDict(observation=torch.randn(5, 3), batch_size=[5]))
        >>> td["action"].shape, actor.ensemble_dist(torch.randn(5, 3)).batch_shape
        (torch.Size([5, 2]), torch.Size([5, 4]))
        >>> actor.member_network(0)(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        observation_dim: int | None,
        action_spec: TensorSpec,
        num_members: int = 5,
        *,
        hidden: Sequence[int] = (256, 256),
        network: nn.Module | None = None,
        in_keys: Sequence[NestedKey] = ("observation",),
        scale_mapping: str = "biased_softplus_1.0",
        scale_lb: float = 0.1,
        use_vmap: bool | None = None,
        selected: int = 0,
    ) -> None:
        low, high = _continuous_bounds(action_spec)
        action_dim = int(action_spec.shape[-1]) if len(action_spec.shape) else 1
        if network is None:
            if observation_dim is None or int(observation_dim) < 1:
                raise ValueError(f"observation_dim must be >= 1, got {observation_dim!r}")
            network = mlp(int(observation_dim), 2 * action_dim, hidden)
        template = nn.Sequential(
            copy.deepcopy(network), NormalParamExtractor(scale_mapping, scale_lb=scale_lb)
        )
        super().__init__(template, num_members, use_vmap=use_vmap, selected=selected)
        self.action_spec = action_spec
        self.action_dim = action_dim
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.in_keys = list(in_keys)
        self.scale_mapping, self.scale_lb = scale_mapping, scale_lb
        self._build_policy()
        self.out_keys = list(self.policy.out_keys)

    def _build_policy(self) -> None:
        # Outside the module tree (it holds no state): the acting view.
        self.__dict__["_policy"] = self._make_probabilistic_actor(
            TensorDictModule(_SelectedLocScale(self), self.in_keys, ["loc", "scale"])
        )

    def _apply(self, fn: Any, recurse: bool = True) -> MaskedEnsembleTanhGaussianActor:
        out = super()._apply(fn, recurse)
        # .to(device) replaces the low/high buffers: rebuild the policy so its
        # TanhNormal bounds are the moved tensors, not stale copies.
        self.action_spec = self.action_spec.to(self.low.device)
        self._build_policy()
        return out

    def _make_probabilistic_actor(self, module: TensorDictModule) -> ProbabilisticActor:
        return ProbabilisticActor(
            module,
            in_keys=["loc", "scale"],
            spec=self.action_spec,
            distribution_class=TanhNormal,
            distribution_kwargs={"low": self.low, "high": self.high},
            return_log_prob=True,
            default_interaction_type=InteractionType.RANDOM,
        )

    @property
    def policy(self) -> ProbabilisticActor:
        """The TorchRL ``ProbabilisticActor`` of the selected member (shares parameters)."""
        return self.__dict__["_policy"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self.policy(tensordict)

    def get_dist(self, tensordict: TensorDictBase) -> TanhNormal:
        """The selected member's action distribution."""
        return self.policy.get_dist(tensordict)

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> TanhNormal:
        """A TanhNormal scaled to the action bounds (``event_dims=1``)."""
        return TanhNormal(loc, scale, low=self.low, high=self.high)

    def ensemble_dist(self, *inputs: torch.Tensor) -> TanhNormal:
        """Every member's distribution; batch shape ``[..., K]``."""
        loc, scale = self.ensemble_call(*inputs)
        return self.make_dist(loc.movedim(0, -2), scale.movedim(0, -2))

    def member_dist(self, k: int, *inputs: torch.Tensor) -> TanhNormal:
        """Member ``k``'s distribution."""
        return self.make_dist(*self.member_call(k, *inputs))

    def member_network(self, k: int | None = None) -> TanhDeterministicPolicy:
        """Member ``k`` (default: selected) as a plain deterministic ``nn.Module``.

        ``obs -> tanh(mean)`` scaled to the action bounds, masks applied,
        independent of the ensemble, gradients off.
        """
        net = self.member_module(k)[0]
        return TanhDeterministicPolicy(net, self.low, self.high).requires_grad_(False)

    def member_actor(self, k: int | None = None) -> ProbabilisticActor:
        """Member ``k`` as an independent TorchRL ``ProbabilisticActor`` (e.g. for ``SACLoss``)."""
        return self._make_probabilistic_actor(
            TensorDictModule(
                self.member_module(k).requires_grad_(True), self.in_keys, ["loc", "scale"]
            )
        )

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, action_dim={self.action_dim}, "
            f"in_keys={self.in_keys}, use_vmap={self.use_vmap}"
        )


# --------------------------------------------------------------------- critic
class TwinQNetwork(nn.Module):
    """Two Q-networks on ``concat(obs, action)``: returns ``[..., 2]`` (Q1, Q2).

    Example:
        >>> q = TwinQNetwork(mlp(5, 1, hidden=(8,)), mlp(5, 1, hidden=(8,)))
        >>> q(torch.zeros(4, 3), torch.zeros(4, 2)).shape
        torch.Size([4, 2])
    """

    def __init__(self, q1: nn.Module, q2: nn.Module) -> None:
        super().__init__()
        self.q1, self.q2 = q1, q2

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, -1)
        return torch.cat([self.q1(x), self.q2(x)], -1)


class _QHead(nn.Module):
    """``(obs, action) -> Q`` around one plain MLP (for TorchRL's ``SACLoss``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(inputs, -1))


class MaskedEnsembleTwinQ(MaskedEnsemble):
    """K masked twin-Q critics; one mask set per member covers both Q networks.

    ``forward`` reads ``in_keys`` (default observation, then action) and
    writes ``state_action_value`` ``[..., K, 2]`` (every member's Q1, Q2).

    Args:
        observation_dim, action_dim: input sizes of the default MLPs
            (ignored when ``network`` is given).
        num_members: K >= 1.

    Keyword Args:
        hidden: hidden widths of each Q MLP (256, 256).
        network: a custom :class:`TwinQNetwork` (or any module
            ``(*inputs) -> [..., 2]``).
        in_keys: input keys, the action last.
        use_vmap, selected: as :class:`MaskedEnsembleTanhGaussianActor`.

    Example:
        >>> critic = MaskedEnsembleTwinQ(3, 2, 4, hidden=(8,))
        >>> td = TensorDict(observation=torch.randn(5, 3), action=torch.randn(5, 2), batch_size=[5])
        >>> critic(td)["state_action_value"].shape
        torch.Size([5, 4, 2])
    """

    def __init__(
        self,
        observation_dim: int | None,
        action_dim: int | None,
        num_members: int = 5,
        *,
        hidden: Sequence[int] = (256, 256),
        network: nn.Module | None = None,
        in_keys: Sequence[NestedKey] = ("observation", "action"),
        use_vmap: bool | None = None,
        selected: int = 0,
        state_action_value_key: NestedKey = "state_action_value",
    ) -> None:
        if network is None:
            for name, v in (("observation_dim", observation_dim), ("action_dim", action_dim)):
                if v is None or int(v) < 1:
                    raise ValueError(f"{name} must be >= 1, got {v!r}")
            d = int(observation_dim) + int(action_dim)
            network = TwinQNetwork(mlp(d, 1, hidden), mlp(d, 1, hidden))
        super().__init__(network, num_members, use_vmap=use_vmap, selected=selected)
        self.in_keys = list(in_keys)
        self.state_action_value_key = state_action_value_key
        self.out_keys = [state_action_value_key]

    def ensemble_values(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Every member's (Q1, Q2): ``[..., K, 2]``."""
        return self.ensemble_call(*inputs).movedim(0, -2)

    def member_values(self, k: int, *inputs: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Member ``k``'s (Q1, Q2): ``[..., 2]``."""
        return self.member_call(k, *inputs, detach=detach)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        inputs = [tensordict.get(key) for key in self.in_keys]
        tensordict.set(self.state_action_value_key, self.ensemble_values(*inputs))
        return tensordict

    def member_network(self, k: int | None = None) -> nn.Module:
        """Member ``k`` (default: selected) as a plain module (masks applied)."""
        return self.member_module(k)

    def member_qvalue_modules(self, k: int | None = None) -> list[TensorDictModule]:
        """Member ``k``'s two Q networks as TorchRL modules (for ``SACLoss``'s list input)."""
        net = self.member_module(k).requires_grad_(True)
        return [
            TensorDictModule(_QHead(q), self.in_keys, [self.state_action_value_key])
            for q in (net.q1, net.q2)
        ]


# ----------------------------------------------------------------------- loss
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
    class _AcceptedKeys:
        """Keys read and written by the loss; change them with ``set_keys``.

        Attributes:
            action: the action taken (critic input).
            value: next-state value handed to the value estimator.
            value_target: value target written by the value estimator.
            state_action_value: the critic's output key.
            priority: where the selected critic's TD error is written.
            reward, done, terminated: read under ``"next"``.
            priority_weight: importance weights of prioritized replay.
        """

        action: NestedKey = "action"
        value: NestedKey = "state_value"
        value_target: NestedKey = "value_target"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

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
        if loss_function not in _LOSS_FUNCTIONS:
            raise ValueError(
                f"loss_function must be one of {_LOSS_FUNCTIONS}, got {loss_function!r}"
            )
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if not alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init}")
        if target_entropy != "auto" and not isinstance(target_entropy, (int, float)):
            raise ValueError(f"target_entropy must be 'auto' or a number, got {target_entropy!r}")
        super().__init__()
        self._in_keys = None
        self.actor_network = actor_network
        self.qvalue_network = qvalue_network
        self.loss_function = loss_function
        self.reduction = reduction
        self.use_prioritized_weights = use_prioritized_weights
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


# ------------------------------------------------------------------- updaters


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
