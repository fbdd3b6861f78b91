"""torchrl_eaudeqn: adaptive dense-to-sparse deep RL (EauDeQN) as TorchRL components.

The public names below load their submodule on first use (PEP 562): importing
the package, or a light submodule such as :mod:`torchrl_eaudeqn.config` or
:mod:`torchrl_eaudeqn.validation`, does not import torch, so the recipes check
their input in a fraction of a second before anything heavy is loaded.

Example:
    >>> import torchrl_eaudeqn
    >>> torchrl_eaudeqn.EauDeQNLoss.__module__
    'torchrl_eaudeqn.objectives.dqn'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "AtariCollector": "collectors",
    "CollectedSteps": "collectors",
    "ControlCollector": "collectors",
    "linear_epsilon": "collectors",
    "atari_game_ids": "envs",
    "make_atari_env": "envs",
    "make_atari_gym_env": "envs",
    "make_continuous_env": "envs",
    "make_control_env": "envs",
    "resolve_atari_game": "envs",
    "resolve_continuous_env": "envs",
    "CompactConv2d": "export",
    "CompactLinear": "export",
    "compact": "export",
    "compact_summary": "export",
    "count_flops": "export",
    "dense_equivalent": "export",
    "export_onnx": "export",
    "exported_size_bytes": "export",
    "measure_latency_ms": "export",
    "state_size_bytes": "export",
    "MaskedEnsembleQValueActor": "modules",
    "NATURE_CNN_WIDTHS": "modules",
    "ScaleObservation": "modules",
    "SelectedMemberPolicy": "modules",
    "mlp": "modules",
    "nature_cnn": "modules",
    "EauDeQNLoss": "objectives",
    "FrameReplayBuffer": "data",
    "TransitionReplay": "data",
    "EauDeSACLoss": "objectives",
    "MaskedEnsembleTanhGaussianActor": "modules",
    "MaskedEnsembleTwinQ": "modules",
    "PolyPruneSACUpdater": "updaters",
    "SACTargetSelectionUpdater": "updaters",
    "TanhDeterministicPolicy": "modules",
    "TwinQNetwork": "modules",
    "LinearSpeedGrid": "sparsity",
    "NoisySpeedPolicy": "sparsity",
    "PruningSpeedPolicy": "sparsity",
    "apply_masks_": "sparsity",
    "magnitude_masks": "sparsity",
    "make_speed_policy": "sparsity",
    "polynomial_sparsity": "sparsity",
    "prunable_parameter_names": "sparsity",
    "sparsity_stats": "sparsity",
    "MaskedUpdater": "updaters",
    "PolyPruneUpdater": "updaters",
    "TargetSelectionUpdater": "updaters",
    "UpdateEvent": "updaters",
}

__all__ = [
    "AtariCollector",
    "CollectedSteps",
    "CompactConv2d",
    "CompactLinear",
    "ControlCollector",
    "EauDeQNLoss",
    "EauDeSACLoss",
    "FrameReplayBuffer",
    "LinearSpeedGrid",
    "MaskedEnsembleQValueActor",
    "MaskedEnsembleTanhGaussianActor",
    "MaskedEnsembleTwinQ",
    "MaskedUpdater",
    "NATURE_CNN_WIDTHS",
    "NoisySpeedPolicy",
    "PolyPruneSACUpdater",
    "PolyPruneUpdater",
    "PruningSpeedPolicy",
    "SACTargetSelectionUpdater",
    "ScaleObservation",
    "SelectedMemberPolicy",
    "TanhDeterministicPolicy",
    "TransitionReplay",
    "TargetSelectionUpdater",
    "TwinQNetwork",
    "UpdateEvent",
    "apply_masks_",
    "atari_game_ids",
    "compact",
    "compact_summary",
    "count_flops",
    "dense_equivalent",
    "export_onnx",
    "exported_size_bytes",
    "linear_epsilon",
    "magnitude_masks",
    "make_atari_env",
    "make_atari_gym_env",
    "make_continuous_env",
    "make_control_env",
    "make_speed_policy",
    "measure_latency_ms",
    "mlp",
    "nature_cnn",
    "polynomial_sparsity",
    "prunable_parameter_names",
    "resolve_atari_game",
    "resolve_continuous_env",
    "sparsity_stats",
    "state_size_bytes",
]

if TYPE_CHECKING:  # static analysers and IDEs see the names eagerly
    from .collectors import AtariCollector, CollectedSteps, ControlCollector, linear_epsilon
    from .data import FrameReplayBuffer, TransitionReplay
    from .envs import (
        atari_game_ids,
        make_atari_env,
        make_atari_gym_env,
        make_continuous_env,
        make_control_env,
        resolve_atari_game,
        resolve_continuous_env,
    )
    from .export import (
        CompactConv2d,
        CompactLinear,
        compact,
        compact_summary,
        count_flops,
        dense_equivalent,
        export_onnx,
        exported_size_bytes,
        measure_latency_ms,
        state_size_bytes,
    )
    from .modules import (
        NATURE_CNN_WIDTHS,
        MaskedEnsembleQValueActor,
        MaskedEnsembleTanhGaussianActor,
        MaskedEnsembleTwinQ,
        ScaleObservation,
        SelectedMemberPolicy,
        TanhDeterministicPolicy,
        TwinQNetwork,
        mlp,
        nature_cnn,
    )
    from .objectives import EauDeQNLoss, EauDeSACLoss
    from .sparsity import (
        LinearSpeedGrid,
        NoisySpeedPolicy,
        PruningSpeedPolicy,
        apply_masks_,
        magnitude_masks,
        make_speed_policy,
        polynomial_sparsity,
        prunable_parameter_names,
        sparsity_stats,
    )
    from .updaters import (
        MaskedUpdater,
        PolyPruneSACUpdater,
        PolyPruneUpdater,
        SACTargetSelectionUpdater,
        TargetSelectionUpdater,
        UpdateEvent,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:  # a submodule, e.g. torchrl_eaudeqn.envs after a bare `import torchrl_eaudeqn`
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
