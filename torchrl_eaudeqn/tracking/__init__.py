"""MLflow in one place: buffered metrics, runs and the model registry.

:mod:`.metrics` buffers metric writes keyed by env step; :mod:`.runs` opens
or reopens a run and plots its metrics; :mod:`.registry` registers and loads
sparse networks (torch.export archives, never pickles).

Example:
    >>> from torchrl_eaudeqn.tracking import MLflowMetrics
    >>> m = MLflowMetrics(client=None, run_id=None)
    >>> m.add("score", 1.0, step=10); len(m.pending)
    1
"""

from .metrics import FLUSHED_TAG, MAX_PENDING, MLflowMetrics, MLflowUnavailable
from .runs import PlotPanel, plot_run, start_mlflow_run, training_score_summary

__all__ = [
    "FLUSHED_TAG",
    "MAX_PENDING",
    "MLflowMetrics",
    "MLflowUnavailable",
    "PlotPanel",
    "plot_run",
    "start_mlflow_run",
    "training_score_summary",
]
