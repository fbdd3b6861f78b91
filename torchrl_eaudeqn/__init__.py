"""torchrl_eaudeqn: adaptive dense-to-sparse deep RL (EauDeQN) as TorchRL components."""

from .collectors import AtariCollector, CollectedSteps, linear_epsilon
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
    ScaleObservation,
    SelectedMemberPolicy,
    mlp,
    nature_cnn,
)
from .objectives import EauDeQNLoss
from .replay import FrameReplayBuffer
from .sac import (
    EauDeSACLoss,
    MaskedEnsembleTanhGaussianActor,
    MaskedEnsembleTwinQ,
    PolyPruneSACUpdater,
    SACTargetSelectionUpdater,
    TanhDeterministicPolicy,
    TwinQNetwork,
)
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
from .updaters import PolyPruneUpdater, TargetSelectionUpdater

__version__ = "0.1.0"

__all__ = [
    "AtariCollector",
    "CollectedSteps",
    "linear_epsilon",
    "make_atari_gym_env",
    "NATURE_CNN_WIDTHS",
    "CompactConv2d",
    "CompactLinear",
    "EauDeQNLoss",
    "EauDeSACLoss",
    "FrameReplayBuffer",
    "LinearSpeedGrid",
    "MaskedEnsembleQValueActor",
    "MaskedEnsembleTanhGaussianActor",
    "MaskedEnsembleTwinQ",
    "NoisySpeedPolicy",
    "PolyPruneSACUpdater",
    "PolyPruneUpdater",
    "PruningSpeedPolicy",
    "ScaleObservation",
    "SACTargetSelectionUpdater",
    "SelectedMemberPolicy",
    "TanhDeterministicPolicy",
    "TargetSelectionUpdater",
    "TwinQNetwork",
    "apply_masks_",
    "atari_game_ids",
    "compact",
    "compact_summary",
    "count_flops",
    "dense_equivalent",
    "export_onnx",
    "exported_size_bytes",
    "measure_latency_ms",
    "make_atari_env",
    "make_continuous_env",
    "make_control_env",
    "resolve_continuous_env",
    "resolve_atari_game",
    "magnitude_masks",
    "make_speed_policy",
    "mlp",
    "nature_cnn",
    "polynomial_sparsity",
    "prunable_parameter_names",
    "sparsity_stats",
    "state_size_bytes",
]
