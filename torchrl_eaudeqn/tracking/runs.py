"""MLflow runs: the tracking store, a run opened or reopened, its metric plot and score summary."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from ..credentials import redact_text, redacted_config

__all__ = ["PlotPanel", "plot_run", "start_mlflow_run", "store_errors", "training_score_summary"]


@dataclasses.dataclass(frozen=True)
class PlotPanel:
    """One panel of :func:`plot_run`: a y label and ``(metric key, legend label)`` curves.

    Example:
        >>> PlotPanel("return", (("episode_return", "training episodes"),)).ylabel
        'return'
    """

    ylabel: str
    curves: tuple[tuple[str, str], ...]


def _init_sqlite_store(uri: str) -> None:
    """Create a new SQLite tracking store atomically.

    MLflow creates its tables with a chain of migrations; a process killed in
    the middle (measured: SIGKILL during start-up) leaves a half-migrated
    file that every later run refuses. A new store is therefore built under a
    temporary name and renamed into place once complete. It starts as a copy
    of :func:`_empty_store_template` where one can be had: the migrations
    take seconds per store (docs/atari.md), a copy milliseconds.
    """
    if not uri.startswith("sqlite:///"):
        return
    path = pathlib.Path(uri[len("sqlite:///") :])
    if path.exists():
        return
    from mlflow import MlflowClient

    tmp = path.with_name(f".{path.name}.init-{os.getpid()}")
    try:
        template = _empty_store_template()
        if template is not None:
            shutil.copyfile(template, tmp)
        # On a copy MLflow only adds its Default experiment (artifact location
        # resolved here, as for a store it migrates itself).
        MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)
        _dispose_engines()
        if not path.exists():
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _store_cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "torchrl_eaudeqn"


def _empty_store_template() -> pathlib.Path | None:
    """A migrated SQLite store without experiments, made once per MLflow/SQLAlchemy version.

    Kept in ``$XDG_CACHE_HOME/torchrl_eaudeqn`` (default ``~/.cache``), built
    under a temporary name and renamed into place. ``None`` (the caller then
    lets MLflow migrate the new store itself) when the cache cannot be written
    or its file is not such a store. It holds tables only: MLflow adds the
    Default experiment, whose artifact location depends on the working
    directory, when a copy is first opened.
    """
    import mlflow
    import sqlalchemy

    name = f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}-empty.db"
    path = _store_cache_dir() / name
    if not path.is_file():
        from mlflow import MlflowClient

        tmp = path.with_name(f".{name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)
            _dispose_engines()
            with contextlib.closing(sqlite3.connect(tmp)) as db, db:
                db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                db.execute("DELETE FROM experiments WHERE experiment_id = 0")
            os.replace(tmp, path)
        except (OSError, sqlite3.Error):
            return None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    try:  # a file someone else left there must be an empty migrated store
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
            (experiments,) = db.execute("SELECT COUNT(*) FROM experiments").fetchone()
    except (sqlite3.Error, TypeError, ValueError):
        return None
    return path if version and experiments == 0 else None


def _dispose_engines() -> None:
    # MLflow caches one SQLAlchemy engine per URI; close the temporary one.
    with contextlib.suppress(Exception):
        from mlflow.store.db import utils as db_utils

        for engine in list(getattr(db_utils, "_engine_cache", {}).values()):
            engine.dispose()


def start_mlflow_run(
    cfg: Any, run_id: str | None, tags: Mapping[str, str] | None = None
) -> tuple[Any, str]:
    """A new MLflow run (config logged as params, ``tags``) or the resumed ``run_id`` reopened.

    Params and tags go through :func:`~torchrl_eaudeqn.credentials.redact_text`:
    a tracking URI's credentials are stored as ``***``.

    Returns:
        ``(MlflowClient, run_id)``.
    """
    import mlflow
    from mlflow import MlflowClient

    _init_sqlite_store(cfg.tracking_uri)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(cfg.tracking_uri)
    if run_id is None:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
        tags = {k: redact_text(str(v)) for k, v in (tags or {}).items()}
        run = client.create_run(exp_id, run_name=cfg.run_name or cfg.run_key, tags=tags)
        run_id = run.info.run_id
        # Credentials in the tracking URI never reach the store (docs/security.md).
        for key, value in redacted_config(cfg).items():
            client.log_param(run_id, key, value)
    else:
        client.update_run(run_id, status="RUNNING")
    return client, run_id


def plot_run(
    client: Any, run_id: str, out: pathlib.Path, panels: Sequence[PlotPanel]
) -> pathlib.Path:
    """One PNG of metric histories over env steps, a panel per :class:`PlotPanel`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3 * len(panels)), sharex=True)
    axes = [axes] if len(panels) == 1 else list(axes)
    for panel, ax in zip(panels, axes, strict=True):
        for key, label in panel.curves:
            hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            if hist:
                ax.plot([m.step for m in hist], [m.value for m in hist], label=label)
        ax.set_ylabel(panel.ylabel)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("env steps")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def training_score_summary(client: Any, run_id: str, key: str, env_steps: int) -> dict[str, float]:
    """Mean training-episode score in the first and the last tenth of the run's env steps.

    The Dopamine protocol (the paper's) reports training-episode scores; a
    single evaluation of the final network can be far off them early in
    training (docs/benchmarks.md, quick preset). Read from the MLflow store,
    so a resumed run counts the episodes logged before the resume. NaN for a
    tenth in which no episode ended.

    Example:
        >>> from types import SimpleNamespace as M
        >>> class Client:
        ...     def get_metric_history(self, run_id, key):
        ...         return [M(step=s, value=v) for s, v in [(5, 0.0), (8, 2.0), (95, 10.0)]]
        >>> training_score_summary(Client(), "run", "episode_score", 100)
        {'first_tenth': 1.0, 'last_tenth': 10.0}
    """
    hist = client.get_metric_history(run_id, key)
    tenth = max(1, env_steps // 10)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {
        "first_tenth": mean([m.value for m in hist if m.step <= tenth]),
        "last_tenth": mean([m.value for m in hist if m.step > env_steps - tenth]),
    }


def store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning the tracking store failed: MLflow's, the metric buffer's, the disk's.

    Example:
        >>> OSError in store_errors()
        True
    """
    from mlflow.exceptions import MlflowException

    from .metrics import MLflowUnavailable

    return (MLflowUnavailable, MlflowException, OSError)
