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
* :mod:`.plots`: the study's figures;
* :mod:`.claims`: :func:`read_claims`: the paper's claims read off the runs
  (holds, fails or unclear, with the numbers), the report's last table.

MLflow is read and written through :mod:`torchrl_eaudeqn.tracking.study_runs`;
``recipes/study.py run|report`` is the command line.

Example:
    >>> from torchrl_eaudeqn import study
    >>> cell = study.Cell("CartPole-v1", "dqn", "wide", 512, 0, "c.yaml")
    >>> cell.key, study.cell_checkpoint_dir("ckpt", cell).name
    ('CartPole-v1/dqn/wide/seed0', 'CartPole-v1_dqn_wide_seed0')
"""

from ..tracking import study_runs
from ..tracking.study_runs import *  # noqa: F403
from . import aggregate, claims, grid, plots, results, runner
from .aggregate import *  # noqa: F403
from .claims import *  # noqa: F403
from .grid import *  # noqa: F403
from .grid import _slug  # noqa: F401  (tests and the Ray backend name log files with it)
from .plots import *  # noqa: F403
from .results import *  # noqa: F403
from .runner import *  # noqa: F403

# The package re-exports its modules' public names and the MLflow run queries it uses.
__all__ = sorted(
    {
        *aggregate.__all__,
        *claims.__all__,
        *grid.__all__,
        *plots.__all__,
        *results.__all__,
        *runner.__all__,
        *study_runs.__all__,
    }
)
