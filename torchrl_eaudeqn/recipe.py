"""What the training recipes share, by its old path (now :mod:`torchrl_eaudeqn.trainers.recipe`)."""

from .trainers.recipe import (
    RESUMABLE,
    PlotPanel,
    check_replay,
    checkpoint_dir,
    config_fingerprint,
    find_checkpoint,
    make_trainer,
    parse_args,
    plot_run,
    read_checkpoint_header,
    run_recipe,
    start_mlflow_run,
)

__all__ = [
    "RESUMABLE",
    "PlotPanel",
    "check_replay",
    "checkpoint_dir",
    "config_fingerprint",
    "find_checkpoint",
    "make_trainer",
    "parse_args",
    "plot_run",
    "read_checkpoint_header",
    "run_recipe",
    "start_mlflow_run",
]
