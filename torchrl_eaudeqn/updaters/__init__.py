"""Target updaters: EauDeQN's target selection and the PolyPrune baseline, for DQN and SAC.

They subclass TorchRL's :class:`~torchrl.objectives.utils.TargetNetUpdater`
(``init_`` / ``step`` / ``state_dict``); :mod:`.common` holds what they share
(:class:`~.common.MaskedUpdater`: checks, masks after every step, optimizer
reset, selection, the :class:`~.common.UpdateEvent` history).

Example:
    >>> from torchrl_eaudeqn.updaters import select_member
    >>> select_member([2.0, 1.0, 1.0], [0.0, 0.5, 0.2])
    2
"""

from .builders import build_sac_updater, build_updater
from .common import MaskedUpdater, TrainerHooks, UpdateEvent, optimizer_list, select_member
from .dqn import PolyPruneUpdater, TargetSelectionUpdater
from .sac import PolyPruneSACUpdater, SACTargetSelectionUpdater

__all__ = [
    "MaskedUpdater",
    "PolyPruneSACUpdater",
    "PolyPruneUpdater",
    "SACTargetSelectionUpdater",
    "TargetSelectionUpdater",
    "TrainerHooks",
    "UpdateEvent",
    "build_sac_updater",
    "build_updater",
    "optimizer_list",
    "select_member",
]
