"""Running a grid on this machine: one cell attempt (:func:`run_cell`) and a thread pool.

Each cell is a fresh recipe process with its own torch threads; a cell with
a checkpoint resumes from it; cells MLflow holds as ``FINISHED`` are skipped.
The Ray backend (:mod:`torchrl_eaudeqn.study.cluster`) reuses :func:`run_cell`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..tracking.study_runs import ensure_experiment, finished_keys, mark_stale_runs
from .grid import FAULT_ENV, URI_ENV, Cell, _slug, cell_checkpoint_dir, default_recipe
from .results import cell_results, has_result, result_path, write_result

__all__ = ["AttemptResult", "run_cell", "run_grid"]


def _latest_cell_checkpoint(cell_dir: pathlib.Path) -> pathlib.Path | None:
    from ..checkpointing import latest_checkpoint

    if not cell_dir.is_dir():
        return None
    found = [c for d in cell_dir.iterdir() if d.is_dir() and (c := latest_checkpoint(d))]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# Run in the child before the recipe: die with the parent (PR_SET_PDEATHSIG). A Ray
# worker that is killed must not leave its recipe running beside the retry, which
# would write to the same MLflow run and checkpoint directory.
_ORPHAN_GUARD = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(137)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


@dataclasses.dataclass(frozen=True)
class AttemptResult:
    """What one attempt of a cell returned.

    Example:
        >>> AttemptResult(0, 12.5, None, "node1").ok
        True
    """

    returncode: int
    seconds: float
    resumed_from: str | None
    host: str

    @property
    def ok(self) -> bool:
        """The recipe exited with status 0 (its MLflow run is FINISHED)."""
        return self.returncode == 0


def run_cell(
    cell: Cell,
    *,
    tracking_uri: str,
    experiment: str,
    checkpoint_dir: str | os.PathLike,
    log_dir: str | os.PathLike,
    recipe: str | os.PathLike | None = None,
    threads: int = 1,
    extra_overrides: Sequence[str] = (),
    fault: str | None = None,
    kill_self: bool = False,
    orphan_guard: bool = False,
    close_stale: bool = True,
) -> AttemptResult:
    """One attempt of one cell: a recipe process, resumed from the cell's newest checkpoint.

    With a verified checkpoint in :func:`cell_checkpoint_dir` the recipe runs
    with ``--resume last`` and reopens the checkpoint's MLflow run, so a
    retried cell continues its run instead of starting a second one. Without
    one, ``RUNNING`` leftovers of the key are marked ``KILLED``
    (:func:`mark_stale_runs`) and a new run starts. Output is appended to
    ``log_dir/<key>.log`` after a header line per attempt.

    Args:
        cell: the grid cell.
        tracking_uri: MLflow tracking URI the recipe logs to.
        experiment: MLflow experiment.
        checkpoint_dir: the grid's checkpoint root (the cell gets a subdirectory).
        log_dir: where the cell's log goes.
        recipe: the training script (default: :func:`default_recipe`).
        threads: torch threads of the run (``OMP_NUM_THREADS`` too).
        extra_overrides: more ``key=value`` overrides (``device=cuda``).
        fault: a grid key (:data:`FAULT_ENV`): when it is this cell's and no
            fault was injected into it yet, SIGKILL the recipe as soon as its
            first checkpoint exists (a marker file records it).
        kill_self: with ``fault``, SIGKILL this process too (a Ray worker: Ray
            sees the worker die and retries the task).
        orphan_guard: the recipe dies when this process dies (Linux).
        close_stale: before a fresh start, mark the key's ``RUNNING`` runs
            ``KILLED`` (:func:`mark_stale_runs`).

    Returns:
        :class:`AttemptResult` (``returncode`` is negative when a signal killed it).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.mkdtemp()
        >>> stub = pathlib.Path(tmp, "stub.py")
        >>> _ = stub.write_text("import sys; sys.exit(0)")
        >>> cell = Cell("T", "dqn", "w", 8, 0, "c.yaml")
        >>> r = run_cell(cell, tracking_uri="sqlite:///x.db", experiment="e",
        ...              checkpoint_dir=tmp, log_dir=tmp, recipe=stub, close_stale=False)
        >>> r.ok, r.resumed_from
        (True, None)
    """
    recipe = pathlib.Path(recipe) if recipe else default_recipe(cell.recipe)
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{_slug(cell.key)}.log"
    cell_dir = cell_checkpoint_dir(checkpoint_dir, cell)
    ckpt = _latest_cell_checkpoint(cell_dir)
    if ckpt is None and close_stale:
        mark_stale_runs(tracking_uri, experiment, cell.key)
    args = cell.argv(
        tracking_uri, experiment, str(cell_dir), threads=threads, extra=extra_overrides
    )
    cmd = [sys.executable, str(recipe), *args, *(["--resume", "last"] if ckpt else [])]
    if orphan_guard and sys.platform.startswith("linux"):
        cmd = [sys.executable, "-c", _ORPHAN_GUARD, str(os.getpid()), *cmd[1:]]
    env = {
        **os.environ,
        # The recipe's store; with credentials the only place it is given (Cell.argv).
        URI_ENV: tracking_uri,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RL_WARNINGS": "False",
        "PYTHONHASHSEED": "0",
    }
    host = socket.gethostname()
    inject = fault == cell.key and not (cell_dir / ".fault-injected").exists()
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        start = f"resume from {ckpt}" if ckpt else "fresh start"
        fh.write(f"=== attempt on {host} (pid {os.getpid()}), {time.ctime()}: {start}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            if inject:
                while proc.poll() is None and _latest_cell_checkpoint(cell_dir) is None:
                    time.sleep(0.2)
                if proc.poll() is None:
                    cell_dir.mkdir(parents=True, exist_ok=True)
                    (cell_dir / ".fault-injected").write_text(f"{time.ctime()}\n")
                    fh.write(f"=== {FAULT_ENV}: SIGKILL after the first checkpoint\n")
                    fh.flush()
                    proc.kill()
                    proc.wait()
                    if kill_self:
                        os.kill(os.getpid(), signal.SIGKILL)
            rc = proc.wait()
        except BaseException:
            proc.kill()  # an interrupted runner leaves no recipe behind
            proc.wait()
            raise
    return AttemptResult(rc, time.perf_counter() - t0, str(ckpt) if ckpt else None, host)


def _write_cell_results(
    cells: Sequence[Cell],
    tracking_uri: str,
    experiment: str,
    results_dir: str | pathlib.Path,
    echo: Callable[[str], None],
) -> None:
    records = cell_results(tracking_uri, experiment, cells)
    for cell in cells:
        if cell.key in records:
            path = write_result(result_path(results_dir, cell), records[cell.key])
            echo(f"{cell.key}: result {path}")
        else:
            echo(f"{cell.key}: no FINISHED run in MLflow, no result file written")


def run_grid(
    cells: Sequence[Cell],
    *,
    tracking_uri: str,
    experiment: str,
    workers: int = 1,
    checkpoint_dir: str = "checkpoints/study",
    log_dir: str | pathlib.Path = "runs/study",
    recipe: str | pathlib.Path | None = None,
    attempts: int = 2,
    pause_file: str | pathlib.Path | None = None,
    threads: int = 1,
    echo: Callable[[str], None] = print,
    results_dir: str | pathlib.Path | None = None,
) -> dict[str, int]:
    """Run the cells MLflow does not hold as finished, ``workers`` processes at a time.

    The thread-pool backend (``recipes/study.py run --backend threads``; Ray:
    :func:`torchrl_eaudeqn.study.cluster.run_grid_ray`). Each run is a fresh
    ``recipes/control_dqn.py`` process with ``threads`` torch threads
    (``OMP_NUM_THREADS``), so ``workers`` runs use ``workers x threads``
    cores without oversubscription; its output goes to
    ``log_dir/<run key>.log``. A run that fails is tried again, up to
    ``attempts`` times in all, resumed from its newest checkpoint when it
    wrote one (:func:`run_cell`); the grid is resumable: run it again and
    finished cells are skipped. While ``pause_file`` exists no new run
    starts (on a shared machine, another job can hold the cores).

    With ``results_dir``, every finished cell leaves a result file there
    (:mod:`torchrl_eaudeqn.study.results`) and a cell whose file exists is
    skipped, whatever the MLflow store holds: files committed with the code
    carry a grid from one session or machine to the next. Cells MLflow holds
    as finished but without a file get their file first.

    Returns:
        ``{"skipped": n, "finished": n, "failed": n}``.
    """
    done = finished_keys(tracking_uri, experiment)
    if results_dir is not None:
        have = {c.key for c in cells if has_result(results_dir, c)}
        missing = [c for c in cells if c.key in done and c.key not in have]
        if missing:
            _write_cell_results(missing, tracking_uri, experiment, results_dir, echo)
        done = done | have
    todo = [c for c in cells if c.key not in done]
    counts = {"skipped": len(cells) - len(todo), "finished": 0, "failed": 0}
    where = "in MLflow" if results_dir is None else f"in MLflow or {results_dir}"
    echo(f"grid: {len(cells)} cells, {counts['skipped']} finished {where}, {len(todo)} to run")
    if not todo:
        return counts
    ensure_experiment(tracking_uri, experiment)
    fault = os.environ.get(FAULT_ENV) or None

    def one(i_cell: tuple[int, Cell]) -> bool:
        i, cell = i_cell
        for attempt in range(attempts):
            while pause_file is not None and pathlib.Path(pause_file).exists():
                time.sleep(10.0)
            r = run_cell(
                cell,
                tracking_uri=tracking_uri,
                experiment=experiment,
                checkpoint_dir=checkpoint_dir,
                log_dir=log_dir,
                recipe=recipe,
                threads=threads,
                fault=fault,
            )
            log = pathlib.Path(log_dir) / f"{_slug(cell.key)}.log"
            status = "ok" if r.ok else f"FAILED rc={r.returncode} (log {log})"
            resumed = " (resumed)" if r.resumed_from else ""
            echo(f"[{i + 1}/{len(todo)}] {cell.key}: {status}{resumed}, {r.seconds:.0f} s")
            if r.ok:
                if results_dir is not None:
                    _write_cell_results([cell], tracking_uri, experiment, results_dir, echo)
                return True
            if attempt + 1 < attempts:
                time.sleep(2.0)
        return False

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for ok in pool.map(one, enumerate(todo)):
            counts["finished" if ok else "failed"] += 1
    return counts
