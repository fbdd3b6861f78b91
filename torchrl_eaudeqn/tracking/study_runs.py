"""The study's side of MLflow: which grid cells finished, stale attempts, finished runs.

A study run carries the tag :data:`KEY_TAG` (its grid cell's key); the study
package (:mod:`torchrl_eaudeqn.study`) builds on these functions and never
imports MLflow itself.

Example:
    >>> import tempfile
    >>> uri = f"sqlite:///{tempfile.mkdtemp()}/m.db"
    >>> ensure_experiment(uri, "e"); finished_keys(uri, "e")
    set()
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from ..credentials import redact_uri

__all__ = [
    "KEY_TAG",
    "FinishedRun",
    "ensure_experiment",
    "finished_keys",
    "finished_runs",
    "mark_stale_runs",
    "with_retries",
]

#: The MLflow tag that names a run's grid cell.
KEY_TAG = "study.key"

T = TypeVar("T")


def with_retries(
    fn: Callable[..., T], *args: Any, tries: int = 8, delay: float = 0.5, **kw: Any
) -> T:
    """Call ``fn`` again when SQLite says the database is locked (concurrent MLflow writers).

    Example:
        >>> calls = []
        >>> def flaky():
        ...     calls.append(1)
        ...     if len(calls) < 3:
        ...         raise RuntimeError("(sqlite3.OperationalError) database is locked")
        ...     return "ok"
        >>> with_retries(flaky, delay=0.0), len(calls)
        ('ok', 3)
    """
    for attempt in range(tries):
        try:
            return fn(*args, **kw)
        except Exception as err:  # noqa: BLE001 - MLflow wraps the sqlite error in its own types
            if "database is locked" not in str(err) or attempt == tries - 1:
                raise
            time.sleep(delay * (attempt + 1))
    raise AssertionError("unreachable")


def finished_keys(tracking_uri: str, experiment: str) -> set[str]:
    """Grid keys of the experiment's ``FINISHED`` runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = with_retries(client.get_experiment_by_name, experiment)
    if exp is None:
        return set()
    keys: set[str] = set()
    token = None
    while True:
        page = with_retries(
            client.search_runs,
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=token,
        )
        keys.update(r.data.tags[KEY_TAG] for r in page if KEY_TAG in r.data.tags)
        token = page.token
        if not token:
            return keys


def ensure_experiment(tracking_uri: str, experiment: str) -> None:
    """Create the experiment unless it exists (once, before a grid's workers start:
    two processes creating the schema or the experiment at once race in SQLite).
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if with_retries(client.get_experiment_by_name, experiment) is None:
        with_retries(client.create_experiment, experiment)


def mark_stale_runs(tracking_uri: str, experiment: str, key: str, status: str = "KILLED") -> int:
    """Mark the cell's runs still ``RUNNING`` as ``status``; returns how many.

    Called before a cell starts from scratch: a ``RUNNING`` run of the key is
    then an earlier attempt that died before its first checkpoint (SIGKILL,
    a lost node) and never closed its run. Not safe while another grid runs
    the same cell against the same store.

    Example:
        >>> import tempfile
        >>> from mlflow import MlflowClient
        >>> uri = f"sqlite:///{tempfile.mkdtemp()}/m.db"
        >>> client = MlflowClient(uri)
        >>> run = client.create_run(client.create_experiment("e"), tags={KEY_TAG: "T/dqn/w/seed0"})
        >>> mark_stale_runs(uri, "e", "T/dqn/w/seed0"), client.get_run(run.info.run_id).info.status
        (1, 'KILLED')
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = with_retries(client.get_experiment_by_name, experiment)
    if exp is None:
        return 0
    runs = with_retries(
        client.search_runs,
        [exp.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{KEY_TAG}` = '{key}'",
        max_results=100,
    )
    for r in runs:
        with_retries(client.set_terminated, r.info.run_id, status)
    return len(runs)


@dataclasses.dataclass
class FinishedRun:
    """One finished study run as plain data: what the aggregation reads of it.

    Example:
        >>> FinishedRun("T/dqn/w/seed0", "r1", {"seed": "0"}, {}, {}, {}).params["seed"]
        '0'
    """

    key: str
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    #: metric name -> sorted ``(step, value)`` pairs, for the names asked for.
    histories: dict[str, list[tuple[int, float]]]
    #: MLflow's start and end times (ms since the epoch).
    start_ms: int | None = None
    end_ms: int | None = None


def finished_runs(
    tracking_uri: str,
    experiment: str,
    history_keys: Sequence[str] = (),
    keys: Collection[str] | None = None,
) -> list[FinishedRun]:
    """The experiment's ``FINISHED`` runs with a grid key, the latest per key, sorted by key.

    Args:
        tracking_uri: the MLflow store.
        experiment: its experiment.
        history_keys: metrics whose whole history to read (one query each per run).
        keys: only these grid keys (``None``: all).

    Raises:
        ValueError: no such experiment (one line naming it and the store).
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {redact_uri(tracking_uri)}")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        max_results=50_000,
        order_by=["attributes.start_time ASC"],
    )
    latest = {r.data.tags[KEY_TAG]: r for r in runs if KEY_TAG in r.data.tags}
    if keys is not None:
        latest = {k: r for k, r in latest.items() if k in keys}
    out = []
    for key, run in sorted(latest.items()):
        rid = run.info.run_id
        histories = {
            k: sorted((m.step, m.value) for m in client.get_metric_history(rid, k))
            for k in history_keys
        }
        out.append(
            FinishedRun(
                key,
                rid,
                dict(run.data.params),
                dict(run.data.metrics),
                dict(run.data.tags),
                histories,
                run.info.start_time,
                run.info.end_time,
            )  # fmt: skip
        )
    return out
