"""Run a study grid on Ray: in-process on one machine, or on a cluster by ``address``.

* :func:`run_grid_ray`: one Ray task per grid cell, with declared CPU/GPU
  resources; a failed or killed run is retried by Ray (``max_retries``,
  ``retry_exceptions``) and resumes from its newest checkpoint into the same
  MLflow run (:func:`torchrl_eaudeqn.study.run_cell`); cells already
  ``FINISHED`` in MLflow are skipped.
* :func:`check_cluster_tracking`, :func:`resolve_backend`,
  :func:`is_local_address`: the checks ``recipes/study.py run`` makes before
  any work (pure logic, no Ray needed).

Ray is an optional extra (``pip install torchrl_eaudeqn[distributed]``) and is
imported only inside :func:`run_grid_ray`. See ``docs/cluster.md``.

Example:
    >>> resolve_backend("threads", None)
    'threads'
    >>> check_cluster_tracking("sqlite:///study.db", None)  # in-process Ray: fine
    >>> try:
    ...     check_cluster_tracking("sqlite:///study.db", "auto")
    ... except ValueError as err:
    ...     print(str(err).split(";")[0])
    --tracking-uri 'sqlite:///study.db' is a local SQLite store
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import pathlib
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from ..credentials import redact_uri
from ..tracking.study_runs import ensure_experiment, finished_keys
from .grid import FAULT_ENV, Cell, _slug
from .runner import AttemptResult, run_cell

__all__ = [
    "RunFailed",
    "RunRejected",
    "check_cluster_tracking",
    "is_local_address",
    "ray_available",
    "resolve_backend",
    "run_grid_ray",
]

#: Local Ray's object store: the tasks pass a few hundred bytes, so keep it small
#: (Ray reserves it in shared memory; its floor is 75 MiB).
LOCAL_OBJECT_STORE_BYTES = 96 * 1024**2
#: Exit status of a recipe that refused its input (bad config or checkpoint): retrying
#: cannot help.
USER_ERROR_RC = 2


class RunFailed(RuntimeError):
    """A run exited with a failure worth retrying (a crash, a signal, a NaN stop).

    Example:
        >>> isinstance(RunFailed("CartPole-v1/dqn/w/seed0: exit code -9"), RuntimeError)
        True
    """


class RunRejected(RuntimeError):
    """A run refused its input (exit status 2): not retried.

    Example:
        >>> str(RunRejected("k: exit code 2"))
        'k: exit code 2'
    """


def ray_available() -> bool:
    """Whether Ray can be imported (without importing it).

    Example:
        >>> isinstance(ray_available(), bool)
        True
    """
    return importlib.util.find_spec("ray") is not None


def is_local_address(address: str | None) -> bool:
    """Whether ``address`` means a Ray started in this process (no cluster).

    ``None``, ``""`` and ``"local"`` do; ``"auto"`` (a cluster started with
    ``ray start`` on this machine), ``host:port`` and ``ray://host:port`` name
    a cluster, whose worker nodes may be other machines.

    Example:
        >>> [is_local_address(a) for a in (None, "local", "auto", "10.0.0.1:6379")]
        [True, True, False, False]
    """
    return address is None or address.strip() in ("", "local")


def check_cluster_tracking(tracking_uri: str, address: str | None) -> None:
    """Refuse a tracking store that the nodes of a Ray cluster cannot share.

    A SQLite file (or a ``file:`` store, or a plain path) lives on the
    driver's disk; workers on other nodes cannot reach it, and SQLite over a
    network file system corrupts under concurrent writers. With a cluster
    address the runs must log to an MLflow server (``http(s)://``) or a
    database server (``postgresql://``, ``mysql://``). In-process Ray (no
    address) runs every task on this machine, where SQLite works.

    Raises:
        ValueError: one line naming ``--tracking-uri`` and what to use instead.

    Example:
        >>> check_cluster_tracking("http://mlflow.internal:5000", "auto")
        >>> check_cluster_tracking("postgresql://u:p@db:5432/mlflow", "ray://head:10001")
    """
    if is_local_address(address):
        return
    scheme = urllib.parse.urlparse(tracking_uri).scheme.lower()
    local = scheme in ("", "file", "sqlite") or (len(scheme) == 1 and tracking_uri[1:2] == ":")
    if local:
        kind = "SQLite" if scheme == "sqlite" else "file"
        raise ValueError(
            f"--tracking-uri {redact_uri(tracking_uri)!r} is a local {kind} store; the nodes "
            "of the Ray "
            f"cluster at --address {address!r} cannot share it: start an MLflow server "
            "(docs/cluster.md) and pass --tracking-uri http://HOST:PORT"
        )


def resolve_backend(backend: str, address: str | None) -> str:
    """``auto`` -> ``ray`` when Ray is installed, else ``threads``; checks the combination.

    Raises:
        ValueError: unknown backend, ``ray`` without Ray installed, or
            ``--address`` with the thread backend (one line each).

    Example:
        >>> resolve_backend("threads", None)
        'threads'
        >>> try:
        ...     resolve_backend("threads", "auto")
        ... except ValueError as err:
        ...     print(err)
        --address needs --backend ray (got --backend threads)
    """
    if backend not in ("auto", "ray", "threads"):
        raise ValueError(f"--backend: expected auto | ray | threads, got {backend!r}")
    if backend == "auto":
        if ray_available():
            return "ray"
        if not is_local_address(address):
            raise ValueError(
                "--address needs Ray, which is not installed: "
                "pip install 'torchrl_eaudeqn[distributed]'"
            )
        return "threads"
    if backend == "ray" and not ray_available():
        raise ValueError(
            "--backend ray: Ray is not installed: pip install 'torchrl_eaudeqn[distributed]'"
        )
    if backend == "threads" and not is_local_address(address):
        raise ValueError(f"--address needs --backend ray (got --backend {backend})")
    return backend


def _cell_task(cell: Cell, kw: dict[str, Any]) -> dict[str, Any]:
    """The body of a Ray task: one attempt; failures raise so that Ray retries them."""
    r: AttemptResult = run_cell(cell, kill_self=True, orphan_guard=True, **kw)
    summary = {"seconds": r.seconds, "resumed_from": r.resumed_from, "host": r.host}
    if r.ok:
        return summary
    message = f"{cell.key}: exit code {r.returncode} on {r.host} (log {kw['log_dir']})"
    if r.returncode == USER_ERROR_RC:
        raise RunRejected(message)
    raise RunFailed(message)


def run_grid_ray(
    cells: Sequence[Cell],
    *,
    tracking_uri: str,
    experiment: str,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    memory_per_run_gb: float = 0,
    max_retries: int = 2,
    checkpoint_dir: str | os.PathLike = "checkpoints/study",
    log_dir: str | os.PathLike = "runs/study",
    recipe: str | os.PathLike | None = None,
    pause_file: str | os.PathLike | None = None,
    dashboard: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run the cells MLflow does not hold as finished, one Ray task each.

    Each task declares ``num_cpus=cpus_per_run`` and ``num_gpus=gpus_per_run``
    (fractions share a GPU), and ``memory`` when ``memory_per_run_gb`` is set
    (an Atari run with a full 1M replay holds ~8.3 GB: Ray then places no more
    runs on a node than its memory holds), and runs the recipe with that many
    torch threads (``device=cuda`` when it has a GPU). Ray retries a task whose worker died
    (a node lost, SIGKILL, the OOM killer) or whose run failed (any nonzero
    exit but 2) up to ``max_retries`` times; every attempt resumes from the
    cell's newest checkpoint into the same MLflow run
    (:func:`~torchrl_eaudeqn.study.run_cell`). A run that rejects its input
    (exit 2) is not retried.

    Without ``address`` Ray starts in this process, with
    ``workers x cpus_per_run`` CPUs (default: all cores) and no dashboard
    unless ``dashboard``; with one (``auto``, ``host:port``,
    ``ray://host:port``) it joins that cluster, where every node needs this
    checkout and environment at the same path, and ``checkpoint_dir`` and
    ``log_dir`` on a shared file system for a retry on another node to find
    the checkpoint. ``workers`` caps the runs in flight (default: as many as
    the cluster's resources admit; Ray queues the rest). While ``pause_file``
    exists no new task is submitted. A Ray started here is shut down at the
    end; one that was already initialised is left running.

    Returns:
        ``{"skipped": n, "finished": n, "failed": n}``.

    Example:
        >>> run_grid_ray([], tracking_uri="sqlite:///x.db", experiment="e",
        ...              echo=lambda s: None)  # nothing to do: Ray is not even imported
        {'skipped': 0, 'finished': 0, 'failed': 0}
    """
    counts = {"skipped": 0, "finished": 0, "failed": 0}
    if not cells:
        return counts
    done = finished_keys(tracking_uri, experiment)
    todo = [c for c in cells if c.key not in done]
    counts["skipped"] = len(cells) - len(todo)
    echo(f"grid: {len(cells)} cells, {counts['skipped']} finished in MLflow, {len(todo)} to run")
    if not todo:
        return counts
    ensure_experiment(tracking_uri, experiment)

    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if is_local_address(address):
            cores = os.cpu_count() or 1
            num_cpus = workers * cpus_per_run if workers else cores
            ray.init(
                num_cpus=max(num_cpus, cpus_per_run),
                include_dashboard=dashboard,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                log_to_driver=False,  # the runs' output goes to their own log files
            )
        else:
            ray.init(address=address, log_to_driver=False)
    echo(f"ray: {ray.cluster_resources()}")
    # Paths as every node sees them: absolute, from the driver (shared FS on a cluster).
    kw = {
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "checkpoint_dir": str(pathlib.Path(checkpoint_dir).resolve()),
        "log_dir": str(pathlib.Path(log_dir).resolve()),
        "recipe": str(pathlib.Path(recipe).resolve()) if recipe else None,
        "threads": max(1, math.ceil(cpus_per_run)),
        "extra_overrides": ("device=cuda",) if gpus_per_run > 0 else (),
        "fault": os.environ.get(FAULT_ENV) or None,
    }
    task = ray.remote(_cell_task)
    options: dict[str, Any] = {
        "num_cpus": cpus_per_run,
        "num_gpus": gpus_per_run,
        "max_retries": max_retries,
        "retry_exceptions": [RunFailed],  # RunRejected (exit 2) is final
    }
    if memory_per_run_gb > 0:
        options["memory"] = int(memory_per_run_gb * 1024**3)
    todo = [dataclasses.replace(c, config=_abs(c.config)) for c in todo]
    queue = list(enumerate(todo))
    pending: dict[Any, tuple[int, Cell, float]] = {}
    try:
        while queue or pending:
            while queue and (not workers or len(pending) < workers):
                if pause_file is not None and pathlib.Path(pause_file).exists():
                    if pending:
                        break  # collect finished runs while paused
                    time.sleep(10.0)
                    continue
                i, cell = queue.pop(0)
                ref = task.options(name=cell.key, **options).remote(cell, kw)
                pending[ref] = (i, cell, time.perf_counter())
            if not pending:
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=10.0)
            for ref in ready:
                i, cell, t0 = pending.pop(ref)
                head = f"[{i + 1}/{len(todo)}] {cell.key}"
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as err:
                    counts["failed"] += 1
                    reason = str(err).strip().splitlines()[-1][:300]
                    tries = "not retried" if "RunRejected" in str(err) else f"{max_retries} retries"
                    echo(f"{head}: FAILED, {tries} ({reason}); "
                         f"log {kw['log_dir']}/{_slug(cell.key)}.log")  # fmt: skip
                    continue
                counts["finished"] += 1
                resumed = " (resumed from a checkpoint)" if out["resumed_from"] else ""
                echo(
                    f"{head}: ok{resumed} on {out['host']}, {time.perf_counter() - t0:.0f} s"
                    f" (last attempt {out['seconds']:.0f} s)"
                )
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
    return counts


def _abs(path: str) -> str:
    p = pathlib.Path(path)
    return str(p.resolve()) if p.exists() else path
