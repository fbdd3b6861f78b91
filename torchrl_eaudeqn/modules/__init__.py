"""Networks: masked ensembles of K members (DQN's Q-networks, SAC's actor and critic).

:mod:`.ensemble` holds what both share (stacked member parameters, masks,
the copy / prune step); :mod:`.dqn` and :mod:`.sac` specialise it.

Example:
    >>> from torchrl.data import OneHot
    >>> from torchrl_eaudeqn.modules import MaskedEnsembleQValueActor, mlp
    >>> actor = MaskedEnsembleQValueActor(mlp(4, 2, hidden=(8,)), 3, action_spec=OneHot(2))
    >>> actor.num_members
    3
"""

from .dqn import (
    NATURE_CNN_WIDTHS,
    MaskedEnsembleQValueActor,
    ScaleObservation,
    SelectedMemberPolicy,
    mlp,
    nature_cnn,
)
from .ensemble import MaskedEnsemble, prune_member_to, rebuild_members
from .sac import (
    MaskedEnsembleTanhGaussianActor,
    MaskedEnsembleTwinQ,
    TanhDeterministicPolicy,
    TwinQNetwork,
)

__all__ = [
    "NATURE_CNN_WIDTHS",
    "MaskedEnsemble",
    "MaskedEnsembleQValueActor",
    "MaskedEnsembleTanhGaussianActor",
    "MaskedEnsembleTwinQ",
    "ScaleObservation",
    "SelectedMemberPolicy",
    "TanhDeterministicPolicy",
    "TwinQNetwork",
    "mlp",
    "nature_cnn",
    "prune_member_to",
    "rebuild_members",
]
