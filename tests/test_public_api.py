"""The public import surface of today's ``torchrl_eaudeqn``: what user code imports must stay.

The lists below are the record (written from the code of commit 4454609;
``console`` and ``EnvStepProgressBar`` added with issue 17's merge): a
name removed or moved without a re-export fails here, and a name added to
``torchrl_eaudeqn.__all__`` fails until it is added to :data:`TOP_LEVEL` on
purpose. Submodules may grow; each keeps at least the names recorded for it
(its ``__all__`` today; the recipes, benchmarks and docs import only those).
"""

from __future__ import annotations

import importlib
import pathlib
import re
import subprocess
import sys

import pytest

import torchrl_eaudeqn

#: ``from torchrl_eaudeqn import NAME``, grouped by the submodule that defines NAME today.
TOP_LEVEL = {
    "collectors": [
        "AtariCollector",
        "CollectedSteps",
        "ControlCollector",
        "linear_epsilon",
    ],
    "envs": [
        "atari_game_ids",
        "make_atari_env",
        "make_atari_gym_env",
        "make_continuous_env",
        "make_control_env",
        "resolve_atari_game",
        "resolve_continuous_env",
    ],
    "export": [
        "compact",
        "compact_summary",
        "CompactConv2d",
        "CompactLinear",
        "count_flops",
        "dense_equivalent",
        "export_onnx",
        "exported_size_bytes",
        "measure_latency_ms",
        "state_size_bytes",
    ],
    "modules": [
        "MaskedEnsembleQValueActor",
        "mlp",
        "nature_cnn",
        "NATURE_CNN_WIDTHS",
        "ScaleObservation",
        "SelectedMemberPolicy",
    ],
    "objectives": [
        "EauDeQNLoss",
    ],
    "replay": [
        "FrameReplayBuffer",
    ],
    "data": [
        "TransitionReplay",
    ],
    "sac": [
        "EauDeSACLoss",
        "MaskedEnsembleTanhGaussianActor",
        "MaskedEnsembleTwinQ",
        "PolyPruneSACUpdater",
        "SACTargetSelectionUpdater",
        "TanhDeterministicPolicy",
        "TwinQNetwork",
    ],
    "sparsity": [
        "apply_masks_",
        "LinearSpeedGrid",
        "magnitude_masks",
        "make_speed_policy",
        "NoisySpeedPolicy",
        "polynomial_sparsity",
        "prunable_parameter_names",
        "PruningSpeedPolicy",
        "sparsity_stats",
    ],
    "updaters": [
        "MaskedUpdater",
        "PolyPruneUpdater",
        "TargetSelectionUpdater",
        "UpdateEvent",
    ],
}

#: ``import torchrl_eaudeqn.MODULE`` and the names each keeps (its ``__all__`` today).
SUBMODULES = {
    "checkpointing": [
        "AtomicCheckpointIO",
        "checkpoint_step",
        "CheckpointError",
        "latest_checkpoint",
        "load_checkpoint_file",
        "remove_stale_tmp_dirs",
        "replay_dir",
        "unpickling_refused",
        "verify_checkpoint",
        "verify_dir",
        "write_atomic",
        "write_dir_atomic",
    ],
    "cluster": [
        "check_cluster_tracking",
        "is_local_address",
        "ray_available",
        "resolve_backend",
        "run_grid_ray",
        "RunFailed",
        "RunRejected",
    ],
    "collectors": [
        "AtariCollector",
        "CollectedSteps",
        "linear_epsilon",
    ],
    "config": [
        "AtariConfig",
        "config_diff",
        "ConfigError",
        "load_config",
        "SACConfig",
    ],
    "control": [
        "ControlConfig",
        "ControlDQNModule",
        "make_minatar_env",
        "make_task_env",
        "minatar_cnn",
        "MINATAR_GAMES",
        "regression_trace",
    ],
    "console": [
        "compare_with_random",
        "count_selections",
        "EvalStats",
        "format_summary",
        "gather_summary",
        "human_count",
        "human_duration",
        "human_percent",
        "human_value",
        "known_noise_silenced",
        "layer_labels",
        "mujoco_compiler_warnings_silenced",
        "network_sparsity",
        "Registered",
        "RunSummary",
        "SelectionCount",
        "SparsityReport",
        "Verdict",
    ],
    "credentials": [
        "ENV_PREFIX",
        "has_credentials",
        "hide_run_urls",
        "redact_text",
        "redact_uri",
        "redacted_config",
        "resolve_env_uri",
    ],
    "envs": [
        "action_space_kind",
        "atari_game_ids",
        "make_atari_env",
        "make_atari_gym_env",
        "make_continuous_env",
        "make_control_env",
        "resolve_atari_game",
        "resolve_continuous_env",
        "SCORE_REWARD_KEY",
    ],
    "export": [
        "compact",
        "compact_summary",
        "CompactConv2d",
        "CompactLinear",
        "count_flops",
        "dense_equivalent",
        "export_onnx",
        "exported_size_bytes",
        "LINEAR_MAX_DENSITY",
        "measure_latency_ms",
        "MIN_SPARSE_NUMEL",
        "remove_dead_channels",
        "state_size_bytes",
        "supports_compact_conv",
    ],
    "lightning": [
        "build_sac_updater",
        "build_updater",
        "DQNLightningModule",
        "EnsembleDQNModule",
        "EnvStepProgressBar",
        "FLUSHED_TAG",
        "MLflowMetrics",
        "MLflowUnavailable",
        "OnlineRLModule",
        "SACLightningModule",
        "TargetSelectionCallback",
    ],
    "modules": [
        "MaskedEnsembleQValueActor",
        "mlp",
        "nature_cnn",
        "NATURE_CNN_WIDTHS",
        "ScaleObservation",
        "SelectedMemberPolicy",
    ],
    "objectives": [
        "BootstrapLossBase",
        "EauDeQNLoss",
    ],
    "recipe": [
        "check_replay",
        "checkpoint_dir",
        "find_checkpoint",
        "make_trainer",
        "parse_args",
        "plot_run",
        "PlotPanel",
        "read_checkpoint_header",
        "RESUMABLE",
        "run_recipe",
        "start_mlflow_run",
    ],
    "registry": [
        "check_model_dir",
        "check_tracking_uri",
        "FORMAT_TAG",
        "get_version_tags",
        "KIND_TAG",
        "load_registered",
        "network_sparsity_tags",
        "PICKLE_ENV",
        "register_network",
        "resolve_tracking_uri",
        "UnsafeModelError",
    ],
    "reliability": [
        "EnvStepCheckpoint",
        "GracefulStop",
        "NonFiniteError",
        "NonFiniteGuard",
    ],
    "replay": [
        "FrameReplayBuffer",
    ],
    "sac": [
        "EauDeSACLoss",
        "MaskedEnsembleTanhGaussianActor",
        "MaskedEnsembleTwinQ",
        "PolyPruneSACUpdater",
        "SACTargetSelectionUpdater",
        "TanhDeterministicPolicy",
        "TwinQNetwork",
    ],
    "sparsity": [
        "apply_masks_",
        "LinearSpeedGrid",
        "magnitude_masks",
        "make_speed_policy",
        "NoisySpeedPolicy",
        "polynomial_sparsity",
        "PolynomialSchedule",
        "PRUNABLE_LAYER_TYPES",
        "prunable_parameter_names",
        "PruningSpeedPolicy",
        "sparsity_stats",
    ],
    "study": [
        "AttemptResult",
        "binned_curve",
        "Cell",
        "cell_checkpoint_dir",
        "collect_runs",
        "expand_grid",
        "FAULT_ENV",
        "finished_keys",
        "GridSpec",
        "interval_estimates",
        "KEY_TAG",
        "load_grid",
        "mark_stale_runs",
        "method_label",
        "normalised_scores",
        "run_cell",
        "run_grid",
        "RunRecord",
        "stratified_bootstrap",
        "URI_ENV",
        "with_retries",
    ],
    "updaters": [
        "MaskedUpdater",
        "PolyPruneUpdater",
        "TargetSelectionUpdater",
        "UpdateEvent",
    ],
}


def test_top_level_all_is_the_recorded_list():
    recorded = sorted(n for names in TOP_LEVEL.values() for n in names)
    assert len(torchrl_eaudeqn.__all__) == len(set(torchrl_eaudeqn.__all__))
    assert sorted(torchrl_eaudeqn.__all__) == recorded
    assert isinstance(torchrl_eaudeqn.__version__, str)


@pytest.mark.parametrize("module", sorted(TOP_LEVEL))
def test_top_level_names_import_and_are_the_submodules_objects(module):
    sub = importlib.import_module(f"torchrl_eaudeqn.{module}")
    for name in TOP_LEVEL[module]:
        namespace: dict = {}
        exec(f"from torchrl_eaudeqn import {name}", namespace)  # noqa: S102 - the user's statement
        # One object under both paths, so isinstance checks agree whichever path a user took.
        assert namespace[name] is getattr(sub, name), name


@pytest.mark.parametrize("module", sorted(SUBMODULES))
def test_submodule_paths_still_import(module):
    mod = importlib.import_module(f"torchrl_eaudeqn.{module}")
    missing = [n for n in SUBMODULES[module] if not hasattr(mod, n)]
    assert not missing, f"torchrl_eaudeqn.{module} lost {missing}"
    names = set(getattr(mod, "__all__", ()))
    assert set(SUBMODULES[module]) <= names, sorted(set(SUBMODULES[module]) - names)


def test_importing_the_components_loads_neither_mlflow_nor_lightning():
    # Documented in registry.py (mlflow is imported lazily) and relied on by
    # users of the components in their own TorchRL loops.
    code = (
        "import sys, torchrl_eaudeqn, torchrl_eaudeqn.registry, torchrl_eaudeqn.export, "
        "torchrl_eaudeqn.replay, torchrl_eaudeqn.sparsity, torchrl_eaudeqn.console; "
        "print(sorted(m for m in ('mlflow', 'lightning', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


#: The packages of the house plan (docs/architecture.md) and names each must hold.
PACKAGES = {
    "modules": ["MaskedEnsemble", "MaskedEnsembleQValueActor", "MaskedEnsembleTwinQ"],
    "objectives": ["BootstrapLossBase", "EauDeQNLoss", "EauDeSACLoss"],
    "updaters": [
        "TargetSelectionUpdater",
        "SACTargetSelectionUpdater",
        "build_updater",
        "build_sac_updater",
        "select_member",
    ],
    "data": ["FrameReplayBuffer"],
    "collectors": ["AtariCollector", "linear_epsilon"],
    "envs": ["make_atari_env", "make_continuous_env", "make_control_env", "make_minatar_env"],
    "trainers": [
        "DQNLightningModule",
        "SACLightningModule",
        "ControlDQNModule",
        "TargetSelectionCallback",
        "EnvStepCheckpoint",
    ],
    "tracking": ["MLflowMetrics", "start_mlflow_run"],
    "export": ["compact", "CompactLinear"],
    "study": ["Cell", "load_grid", "run_grid", "collect_runs", "plot_score_curves"],
}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_hold_their_names_and_old_paths_give_the_same_objects(package):
    mod = importlib.import_module(f"torchrl_eaudeqn.{package}")
    assert hasattr(mod, "__path__"), f"torchrl_eaudeqn.{package} is not a package"
    for name in PACKAGES[package]:
        assert name in mod.__all__, name
    # An old path and the new one hand out one object (isinstance agrees either way).
    old = {
        "SACLightningModule": "lightning",
        "MLflowMetrics": "lightning",
        "ControlDQNModule": "control",
        "EauDeSACLoss": "sac",
        "FrameReplayBuffer": "replay",
        "EnvStepCheckpoint": "reliability",
    }
    old_packages = {"study": {"run_grid_ray": "cluster"}}  # fmt: skip
    for name in PACKAGES[package]:
        if name in old:
            legacy = importlib.import_module(f"torchrl_eaudeqn.{old[name]}")
            assert getattr(legacy, name) is getattr(mod, name), name
    for name, legacy in old_packages.get(package, {}).items():
        new = importlib.import_module(f"torchrl_eaudeqn.{package}.{legacy}")
        assert getattr(importlib.import_module(f"torchrl_eaudeqn.{legacy}"), name) is getattr(
            new, name
        ), name


def test_mlflow_and_lightning_are_imported_in_their_own_packages_only():
    root = pathlib.Path(torchrl_eaudeqn.__file__).parent
    pattern = re.compile(r"^\s*(?:import|from) (mlflow|lightning)\b", re.M)
    found = {
        (p.relative_to(root).as_posix(), m)
        for p in root.rglob("*.py")
        for m in pattern.findall(p.read_text())
    }
    outside = sorted(
        (path, m)
        for path, m in found
        if not path.startswith({"mlflow": "tracking/", "lightning": "trainers/"}[m])
    )
    assert outside == []
    assert {m for _, m in found} == {"mlflow", "lightning"}  # the scan sees the imports


def test_only_trainers_import_lightning_and_components_import_neither():
    code = (
        "import sys, torchrl_eaudeqn.modules, torchrl_eaudeqn.objectives, "
        "torchrl_eaudeqn.updaters, torchrl_eaudeqn.data, torchrl_eaudeqn.collectors, "
        "torchrl_eaudeqn.envs, torchrl_eaudeqn.checkpointing, torchrl_eaudeqn.tracking.runs; "
        "print(sorted(m for m in ('mlflow', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
