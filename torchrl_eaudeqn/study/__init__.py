"""The reproduction study: a grid of runs tracked in MLflow, aggregated with rliable.

* :mod:`.grid`: :func:`load_grid` / :func:`expand_grid` turn a YAML grid
  (methods x tasks x widths x seeds) into :class:`Cell` s, each with a
  stable grid key;
* :mod:`.runner`: :func:`run_grid` runs the cells MLflow does not hold as
  ``FINISHED`` (tag ``study.key``) in parallel worker processes (the task's
  recipe, :data:`RECIPES`), one torch thread each; :func:`run_cell` is one
  attempt of one cell (resumed from the cell's newest checkpoint when there
  is one), shared with the Ray backend (:mod:`.cluster`);
* :mod:`.aggregate`: :func:`collect_runs`, :func:`normalised_scores`,
  :func:`interval_estimates`: final scores normalised per task, IQM and mean
  (``rliable.metrics``) with 95% stratified bootstrap confidence intervals,
  final sparsity, area under the curve;
* :mod:`.plots`: the study's figures.

MLflow is read and written through :mod:`torchrl_eaudeqn.tracking.study_runs`;
``recipes/study.py run|report`` is the command line.

Example:
    >>> from torchrl_eaudeqn import study
    >>> cell = study.Cell("CartPole-v1", "dqn", "wide", 512, 0, "c.yaml")
    >>> cell.key, study.cell_checkpoint_dir("ckpt", cell).name
    ('CartPole-v1/dqn/wide/seed0', 'CartPole-v1_dqn_wide_seed0')
"""

from ..tracking.study_runs import (
    FinishedRun,
    ensure_experiment,
    finished_keys,
    finished_runs,
    mark_stale_runs,
    with_retries,
)
from .aggregate import (
    RunRecord,
    area_under_curve,
    binned_curve,
    collect_runs,
    interval_estimates,
    method_label,
    normalise,
    normalised_scores,
    stratified_bootstrap,
    task_bounds,
)
from .grid import (
    DENSE_METHODS,
    FAULT_ENV,
    KEY_TAG,
    METHOD_LABELS,
    METHODS,
    RECIPE_METHODS,
    RECIPES,
    URI_ENV,
    Cell,
    GridSpec,
    TaskSpec,
    _slug,  # noqa: F401  (tests and the Ray backend name log files with it)
    cell_checkpoint_dir,
    default_recipe,
    expand_grid,
    load_grid,
)
from .plots import (
    COLORS,
    plot_score_curves,
    plot_score_vs_sparsity,
    plot_sparsity_curves,
    plot_sparsity_vs_width,
    width_names,
)
from .runner import AttemptResult, run_cell, run_grid

__all__ = [
    "COLORS",
    "DENSE_METHODS",
    "FAULT_ENV",
    "KEY_TAG",
    "METHODS",
    "METHOD_LABELS",
    "RECIPES",
    "RECIPE_METHODS",
    "URI_ENV",
    "AttemptResult",
    "Cell",
    "FinishedRun",
    "GridSpec",
    "RunRecord",
    "TaskSpec",
    "area_under_curve",
    "binned_curve",
    "cell_checkpoint_dir",
    "collect_runs",
    "default_recipe",
    "ensure_experiment",
    "expand_grid",
    "finished_keys",
    "finished_runs",
    "interval_estimates",
    "load_grid",
    "mark_stale_runs",
    "method_label",
    "normalise",
    "normalised_scores",
    "plot_score_curves",
    "plot_score_vs_sparsity",
    "plot_sparsity_curves",
    "plot_sparsity_vs_width",
    "run_cell",
    "run_grid",
    "stratified_bootstrap",
    "task_bounds",
    "width_names",
    "with_retries",
]
