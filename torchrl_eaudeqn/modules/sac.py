"""EauDeSAC's networks: the masked actor and twin-critic ensembles, and the deterministic policy.

The mechanism they serve is described in :mod:`torchrl_eaudeqn.objectives.sac`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    InteractionType,
    NormalParamExtractor,
    TensorDictModule,
)
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import TensorSpec
from torchrl.modules import ProbabilisticActor, TanhNormal

from .dqn import mlp
from .ensemble import MaskedEnsemble

__all__ = [
    "MaskedEnsembleTanhGaussianActor",
    "MaskedEnsembleTwinQ",
    "TanhDeterministicPolicy",
    "TwinQNetwork",
]


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
        >>> from tensordict import TensorDict
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
        >>> from tensordict import TensorDict
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
