"""Masked ensembles of Q-networks and the network builders.

The ensemble keeps one *template* network whose parameters live on the
``meta`` device, and the real parameters of all K members stacked in one
:class:`~tensordict.nn.TensorDictParams` with batch size ``[K]``. A member is
evaluated by swapping its slice into the template's parameter slots, either
in a Python loop or under :func:`torch.vmap` (through ``to_module``); both
produce the same numbers.

"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    TensorDictModuleBase,
)
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import TensorSpec
from torchrl.modules.tensordict_module.actors import QValueModule

from .ensemble import MaskedEnsemble, check_num_members

__all__ = [
    "NATURE_CNN_WIDTHS",
    "MaskedEnsembleQValueActor",
    "ScaleObservation",
    "SelectedMemberPolicy",
    "minatar_cnn",
    "mlp",
    "nature_cnn",
]


#: Hidden width of the dense layer of the Nature CNN per size name.
NATURE_CNN_WIDTHS = {"small": 32, "medium": 512, "large": 2048}


class ScaleObservation(nn.Module):
    """Cast to float and multiply by ``scale`` (uint8 frames -> [0, 1]).

    Example:
        >>> ScaleObservation()(torch.full((1,), 255, dtype=torch.uint8))
        tensor([1.])
    """

    def __init__(self, scale: float = 1.0 / 255.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale


def nature_cnn(
    n_actions: int,
    width: int | str = 512,
    *,
    in_channels: int = 4,
    frame_size: int = 84,
    scale: float = 1.0 / 255.0,
) -> nn.Sequential:
    """Nature-DQN torso + one hidden dense layer + linear head.

    Args:
        n_actions: number of discrete actions (output size).
        width: hidden width (int) or ``"small"`` (32), ``"medium"`` (512),
            ``"large"`` (2048).
        in_channels: stacked frames.
        frame_size: side of the square input frame.
        scale: input multiplier (uint8 pixels are divided by 255).

    Example:
        >>> net = nature_cnn(6, "small")
        >>> net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape
        torch.Size([2, 6])
    """
    if isinstance(width, str):
        if width not in NATURE_CNN_WIDTHS:
            raise ValueError(
                f"width must be an int or one of {sorted(NATURE_CNN_WIDTHS)}, got {width!r}"
            )
        width = NATURE_CNN_WIDTHS[width]
    if int(width) < 1 or int(n_actions) < 1:
        raise ValueError(
            f"width and n_actions must be >= 1, got width={width}, n_actions={n_actions}"
        )
    side = frame_size
    for k, s in ((8, 4), (4, 2), (3, 1)):
        side = (side - k) // s + 1
    if side < 1:
        raise ValueError(f"frame_size={frame_size} is too small for the Nature CNN (needs >= 36)")
    return nn.Sequential(
        ScaleObservation(scale),
        nn.Conv2d(in_channels, 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(-3),  # also for unbatched [C, H, W] input (single env step)
        nn.Linear(64 * side * side, int(width)),
        nn.ReLU(),
        nn.Linear(int(width), int(n_actions)),
    )


def mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (256, 256),
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A plain MLP (``Linear`` + activation per hidden layer, linear head).

    Example:
        >>> mlp(4, 2, hidden=(8,))(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """
    layers: list[nn.Module] = []
    last = int(in_features)
    for h in hidden:
        layers += [nn.Linear(last, int(h)), activation()]
        last = int(h)
    layers.append(nn.Linear(last, int(out_features)))
    return nn.Sequential(*layers)


def minatar_cnn(in_channels: int, n_actions: int, width: int = 128) -> nn.Sequential:
    """The MinAtar paper's DQN network with a configurable hidden width.

    Conv 16 3x3 (stride 1) + ReLU, a dense layer of ``width`` units + ReLU,
    a linear head. On 10x10 inputs the dense layer holds most weights
    (``1024 * width``), as the first dense layer does in the Nature CNN.

    Example:
        >>> minatar_cnn(4, 3, width=32)(torch.zeros(2, 4, 10, 10)).shape
        torch.Size([2, 3])
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(-3),  # also for unbatched [C, H, W] input (single env step)
        nn.Linear(16 * 8 * 8, int(width)),
        nn.ReLU(),
        nn.Linear(int(width), int(n_actions)),
    )


def _n_actions(spec: TensorSpec) -> int:
    space = getattr(spec, "space", None)
    n = getattr(space, "n", None)
    if n is None:
        raise ValueError(
            "action_spec must be a discrete spec (OneHot or Categorical), got "
            f"{type(spec).__name__}"
        )
    return int(n)


def _last_out_features(network: nn.Module) -> int | None:
    last = None
    for mod in network.modules():
        if isinstance(mod, nn.Linear):
            last = mod.out_features
    return last


class MaskedEnsembleQValueActor(MaskedEnsemble):
    """K masked Q-networks with one architecture, evaluated together.

    All members start from the *same* weights (copies of ``network``, not
    re-sampled). Each member has a boolean mask over its prunable weights
    (Linear/Conv ``weight``); pruned entries are kept at exactly zero by
    :meth:`apply_masks_` (the updaters call it after every optimizer step).
    The parameters are ``params`` (a TensorDict with batch ``[K]``), the masks
    ``masks`` (same structure, bool), both saved in ``state_dict``.

    Writes, for a batch ``[...]``:

    * ``action_value``: ``[..., K, n_actions]``, every member (for training);
    * ``action`` and ``chosen_action_value``: greedy action of the *selected*
      member, formatted by the action spec (one-hot or categorical), so that
      :class:`~torchrl.modules.EGreedyModule`, collectors and
      ``env.rollout(policy=...)`` accept the actor unchanged.

    For acting alone (collectors, evaluation) :attr:`policy` evaluates only
    the selected member, K times cheaper.

    Args:
        network: the Q-network (any ``nn.Module`` mapping the ``in_keys``
            tensors to ``[..., n_actions]``); it is copied, not modified.
        num_members: K >= 1.
        action_spec: the environment's discrete action spec.
        in_keys: observation keys passed positionally to ``network``.
        use_vmap: ``True`` evaluates members under ``torch.vmap``, ``False``
            in a loop; ``None`` picks from the measurements in
            ``docs/benchmarks.md``: vmap when K > 1, the loop when K = 1.
        action_mask_key: optional key of a boolean action mask.
        selected: index of the member that acts.
        action_value_key: where the ``[..., K, n]`` values are written.

    Example:
        >>> from torchrl.data import OneHot
        >>> actor = MaskedEnsembleQValueActor(
        ...     mlp(4, 2, hidden=(8,)), num_members=3, action_spec=OneHot(2))
        >>> td = actor(TensorDict(observation=torch.randn(5, 4), batch_size=[5]))
        >>> td["action_value"].shape, td["action"].shape
        (torch.Size([5, 3, 2]), torch.Size([5, 2]))
        >>> actor.sparsity()
        tensor([0., 0., 0.])
    """

    def __init__(
        self,
        network: nn.Module,
        num_members: int = 5,
        *,
        action_spec: TensorSpec,
        in_keys: Sequence[NestedKey] = ("observation",),
        use_vmap: bool | None = None,
        action_mask_key: NestedKey | None = None,
        selected: int = 0,
        action_value_key: NestedKey = "action_value",
    ) -> None:
        check_num_members(num_members)
        n_actions = _n_actions(action_spec)
        if isinstance(network, nn.Module):
            out = _last_out_features(network)
            if out is not None and out != n_actions:
                raise ValueError(
                    f"network outputs {out} action values but action_spec has {n_actions} actions"
                )
        super().__init__(network, num_members, use_vmap=use_vmap, selected=selected)
        self.n_actions = n_actions
        self.action_spec = action_spec
        self.in_keys = list(in_keys)
        self.action_value_key = action_value_key
        self.out_keys = [action_value_key, "action", "chosen_action_value"]
        self._qvalue = QValueModule(
            spec=action_spec,
            action_mask_key=action_mask_key,
            action_value_key="action_value",
        )
        self._checked_output = False

    def member_network(self, k: int | None = None) -> nn.Module:
        """A plain, independent ``nn.Module`` holding member ``k`` (masks applied).

        Args:
            k: member index; defaults to the selected member.
        """
        return self.member_module(k)

    # ------------------------------------------------------------ evaluation
    def ensemble_values(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Q-values of every member: ``[..., K, n_actions]``."""
        q = self.ensemble_call(*inputs)
        self._check_output(q)
        return q.movedim(0, -2)

    def member_values(self, k: int, *inputs: torch.Tensor) -> torch.Tensor:
        """Q-values of member ``k`` alone: ``[..., n_actions]``."""
        q = self.member_call(k, *inputs)
        self._check_output(q.unsqueeze(0))
        return q

    def _check_output(self, q: torch.Tensor) -> None:
        if not self._checked_output:
            if q.shape[-1] != self.n_actions:
                raise ValueError(
                    f"network outputs {q.shape[-1]} action values but action_spec has "
                    f"{self.n_actions} actions"
                )
            self._checked_output = True

    def _act(self, tensordict: TensorDictBase, selected_values: torch.Tensor) -> None:
        tmp = TensorDict({"action_value": selected_values}, batch_size=tensordict.batch_size)
        mask_key = self._qvalue.action_mask_key
        if mask_key is not None:
            tmp.set(mask_key, tensordict.get(mask_key))
        self._qvalue(tmp)
        tensordict.set("action", tmp.get("action"))
        tensordict.set("chosen_action_value", tmp.get("chosen_action_value"))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        inputs = [tensordict.get(key) for key in self.in_keys]
        q = self.ensemble_values(*inputs)
        tensordict.set(self.action_value_key, q)
        self._act(tensordict, q[..., self.selected, :].detach())
        return tensordict

    @property
    def policy(self) -> SelectedMemberPolicy:
        """A policy that evaluates only the selected member (for acting)."""
        return SelectedMemberPolicy(self)

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, n_actions={self.n_actions}, "
            f"in_keys={self.in_keys}, use_vmap={self.use_vmap}"
        )


class SelectedMemberPolicy(TensorDictModuleBase):
    """Acting view of a :class:`MaskedEnsembleQValueActor`: only the selected member runs.

    It follows ``actor.selected`` as it changes and shares the actor's
    parameters (nothing is copied). Writes ``action_value`` ``[..., n]``,
    ``action`` and ``chosen_action_value``.

    Example:
        >>> from torchrl.data import Categorical
        >>> actor = MaskedEnsembleQValueActor(
        ...     mlp(4, 3, hidden=(8,)), num_members=2, action_spec=Categorical(3))
        >>> td = actor.policy(TensorDict(observation=torch.randn(4), batch_size=[]))
        >>> td["action_value"].shape, td["action"].shape
        (torch.Size([3]), torch.Size([]))
    """

    def __init__(self, actor: MaskedEnsembleQValueActor) -> None:
        super().__init__()
        self.actor = actor
        self.in_keys = list(actor.in_keys)
        self.out_keys = ["action_value", "action", "chosen_action_value"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        inputs = [tensordict.get(key) for key in self.in_keys]
        if torch.is_grad_enabled():
            q = self.actor.member_values(self.actor.selected, *inputs)
        else:  # acting (collectors run without gradients): the cached plain module
            q = self.actor.acting_network()(*inputs)
            self.actor._check_output(q.unsqueeze(0))
        tensordict.set("action_value", q)
        self.actor._act(tensordict, q.detach())
        return tensordict
