"""The reproduction study: a grid of runs tracked in MLflow, aggregated with rliable.

* :func:`load_grid` / :func:`expand_grid`: a YAML grid (methods x tasks x
  widths x seeds) into :class:`Cell` s, each with a stable grid key;
* :func:`finished_keys` / :func:`run_grid`: run the cells that MLflow does
  not hold as ``FINISHED`` (tag ``study.key``), in parallel worker
  processes (the task's recipe, :data:`RECIPES`), one torch thread each;
  :func:`run_cell` is one attempt of one cell (resumed from the cell's
  newest checkpoint when there is one), shared with the Ray backend
  (:mod:`torchrl_eaudeqn.cluster`);
* :func:`collect_runs`, :func:`normalised_scores`, :func:`interval_estimates`:
  final scores normalised per task, IQM and mean (``rliable.metrics``) with
  95% stratified bootstrap confidence intervals, final sparsity, area under
  the curve;
* ``plot_*``: the study's figures.

``recipes/study.py run|report`` is the command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import yaml

from .credentials import ENV_PREFIX, has_credentials, redact_uri

__all__ = [
    "FAULT_ENV",
    "KEY_TAG",
    "URI_ENV",
    "AttemptResult",
    "Cell",
    "GridSpec",
    "RunRecord",
    "binned_curve",
    "cell_checkpoint_dir",
    "collect_runs",
    "expand_grid",
    "finished_keys",
    "interval_estimates",
    "load_grid",
    "mark_stale_runs",
    "method_label",
    "normalised_scores",
    "run_cell",
    "run_grid",
    "stratified_bootstrap",
    "with_retries",
]

#: The MLflow tag that names a run's grid cell.
KEY_TAG = "study.key"
#: Fault injection for tests of the retry path: the grid key of one cell whose
#: first attempt is SIGKILLed right after its first checkpoint is written (with
#: the Ray backend, the Ray worker running it is killed too).
FAULT_ENV = "EAUDEQN_STUDY_FAULT"
#: The environment variable a run reads its tracking URI from (MLflow's own name).
URI_ENV = "MLFLOW_TRACKING_URI"
#: Recipe kinds a grid can drive, and their scripts (relative to the checkout).
RECIPES = {
    "control": "recipes/control_dqn.py",
    "atari": "recipes/atari_dqn.py",
    "mujoco": "recipes/mujoco_sac.py",
}
#: The methods of each recipe kind, named as the recipe names them (``method=``):
#: a grid lists them the same way, so keys, ``--methods`` and MLflow agree.
RECIPE_METHODS = {
    "control": ("dqn", "eaudeqn", "polyprune"),
    "atari": ("dqn", "eaudeqn", "polyprune"),
    "mujoco": ("sac", "eaudesac", "polyprune"),
}
#: The first flag of each recipe kind: the task's name, and the width's (per hidden layer).
_TASK_FLAG = {"control": "task", "atari": "game", "mujoco": "env"}
_WIDTH_FLAG = {"control": "width", "atari": "width", "mujoco": "hidden"}
#: Method order in tables and figures.
METHODS = ("dqn", "sac", "eaudeqn", "eaudesac", "polyprune")
#: The dense baselines: a task's normalisation reference (:func:`task_bounds`).
DENSE_METHODS = ("dqn", "sac")
METHOD_LABELS = {
    "dqn": "DQN (dense)",
    "sac": "SAC (dense)",
    "eaudeqn": "EauDeQN",
    "eaudesac": "EauDeSAC",
    "polyprune": "PolyPruneQN (95%)",
}

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


# --------------------------------------------------------------------------- grid
@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a grid: its base config, the widths to run and the recipe kind.

    ``recipe`` is a key of :data:`RECIPES`: ``control`` (``recipes/control_dqn.py``,
    the task is its ``task=``), ``atari`` (``recipes/atari_dqn.py``, the task is
    its ``game=``) or ``mujoco`` (``recipes/mujoco_sac.py``, the task is its
    ``env=`` and the width its ``hidden=``; methods ``sac``, ``eaudesac``,
    ``polyprune``: :data:`RECIPE_METHODS`).

    Example:
        >>> TaskSpec("configs/study/cartpole.yaml", {"narrow": 32}).widths["narrow"]
        32
    """

    config: str
    widths: dict[str, int]
    overrides: tuple[str, ...] = ()
    recipe: str = "control"


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A study grid: methods x tasks x widths x seeds, and its MLflow experiment.

    Example:
        >>> spec = GridSpec("exp", (0, 1), ("dqn",), {"CartPole-v1": TaskSpec("c.yaml", {"w": 8})})
        >>> len(expand_grid(spec))
        2
    """

    experiment: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    tasks: dict[str, TaskSpec]
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid.

    Example:
        >>> c = Cell("CartPole-v1", "eaudeqn", "wide", 512, 3, "c.yaml", ("env_steps=100",))
        >>> c.key
        'CartPole-v1/eaudeqn/wide/seed3/env_steps=100'
    """

    task: str
    method: str
    width_name: str
    width: int
    seed: int
    config: str
    overrides: tuple[str, ...] = ()
    #: recipe kind (:data:`RECIPES`); not part of the key (a task names one recipe)
    recipe: str = "control"

    @property
    def key(self) -> str:
        """Stable identity of the cell: task/method/width/seed and its budget overrides.

        Two grids that differ in a budget (``env_steps=...``) get different
        keys, so a finished short run never stands in for a longer one.
        """
        return "/".join(
            [self.task, self.method, self.width_name, f"seed{self.seed}", *sorted(self.overrides)]
        ).replace(",", ";")

    def argv(
        self,
        tracking_uri: str,
        experiment: str,
        checkpoint_dir: str,
        *,
        threads: int = 1,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """Arguments of the cell's recipe (:data:`RECIPES`).

        The task and the width go to the recipe's own flags (``task``/``game``/
        ``env``; ``width``/``hidden``). ``extra`` overrides come last (e.g.
        ``device=cuda`` on a GPU worker). A ``tracking_uri`` with credentials
        is not written here (any user can read a process's arguments): the
        recipe gets ``tracking_uri=env:MLFLOW_TRACKING_URI`` and
        :func:`run_cell` puts the URI in its environment.

        Example:
            >>> Cell("Pong", "dqn", "small", 32, 0, "a.yaml", recipe="atari").argv("u", "e", "c")[2]
            'game=Pong'
            >>> Cell("Hopper-v5", "sac", "narrow", 64, 0, "m.yaml", recipe="mujoco").argv(
            ...     "u", "e", "c")[2:5]
            ['env=Hopper-v5', 'method=sac', 'hidden=64']
            >>> [a for a in Cell("T", "dqn", "w", 8, 0, "c.yaml").argv("https://u:p@h", "e", "c")
            ...  if a.startswith("tracking_uri")]
            ['tracking_uri=env:MLFLOW_TRACKING_URI']
        """
        uri_arg = f"{ENV_PREFIX}{URI_ENV}" if has_credentials(tracking_uri) else tracking_uri
        return [
            "--config",
            self.config,
            f"{_TASK_FLAG[self.recipe]}={self.task}",
            f"method={self.method}",
            f"{_WIDTH_FLAG[self.recipe]}={self.width}",
            f"seed={self.seed}",
            *self.overrides,
            f"tracking_uri={uri_arg}",
            f"experiment={experiment}",
            f"checkpoint_dir={checkpoint_dir}",
            "progress_bar=false",
            f"threads={threads}",
            f"run_tags={KEY_TAG}={self.key},study.width_name={self.width_name}",
            *extra,
        ]


#: What a grid file may hold, at the top and per task.
_GRID_KEYS = ("experiment", "seeds", "methods", "tasks", "overrides", "recipe")
_TASK_KEYS = ("config", "widths", "overrides", "recipe")


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )


def _check_mapping(path: pathlib.Path, where: str, value: object, allowed: Sequence[str]) -> dict:
    """A mapping with string keys, all of them in ``allowed`` (a typo names the close key)."""
    import difflib

    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where}: expected a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"{path}: {where}: key {key!r}: expected a string")
        if allowed and key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (expected {list(allowed)})"
            raise ValueError(f"{path}: {where}: unknown key {key!r}{hint}")
    return value


def _overrides(path: pathlib.Path, where: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(
            f"{path}: {where}: expected a list of key=value strings, got {_kind(value)} {value!r}"
        )
    for item in value:
        if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
            raise ValueError(f"{path}: {where}: expected key=value, got {item!r}")
    return tuple(value)


def _name(path: pathlib.Path, where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: {where}: expected a non-empty string, got {value!r}")
    return value


def load_grid(path: str | pathlib.Path) -> GridSpec:
    """Read a grid YAML (see ``configs/study/default.yaml``), checking its whole shape.

    ``experiment`` a non-empty string; ``seeds`` a list of distinct ints in
    NumPy's range; ``methods`` a list of method names; ``tasks`` a mapping
    of task names to ``{config, widths, overrides?, recipe?}`` with
    ``widths`` a mapping of names to positive ints; ``overrides`` (top
    level and per task) a list of ``key=value`` strings; every key a string.

    Raises:
        ValueError: unreadable file, or a missing or malformed section (one
            line naming the file and the section).
    """
    from .config import SEED_MAX

    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ValueError(f"--grid: cannot read {path} ({reason})") from None
    try:
        # safe_load: a grid file is data; YAML tags that build Python objects are refused.
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a valid YAML grid ({str(err).splitlines()[0]})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping with experiment, seeds, methods and tasks, "
            f"got {_kind(data)}"
        )
    _check_mapping(path, "top level", data, _GRID_KEYS)
    for key in ("experiment", "seeds", "methods", "tasks"):
        if key not in data:
            raise ValueError(f"{path}: missing '{key}'")
    experiment = _name(path, "experiment", data["experiment"])
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise ValueError(f"{path}: seeds: expected a non-empty list of ints, got {seeds!r}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
            raise ValueError(f"{path}: seeds: expected ints in 0..{SEED_MAX}, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: seeds: a seed is listed twice ({seeds})")
    methods = data["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"{path}: methods: expected a non-empty list, got {methods!r}")
    default_kind = data.get("recipe", "control")
    tasks = {}
    for name, t in _check_mapping(path, "tasks", data["tasks"], ()).items():
        where = f"tasks: {name!r}"
        _name(path, "tasks", name)
        if not isinstance(t, dict) or "config" not in t or "widths" not in t:
            raise ValueError(f"{path}: task {name!r} needs 'config' and 'widths'")
        _check_mapping(path, where, t, _TASK_KEYS)
        config = pathlib.Path(_name(path, f"{where}: config", t["config"]))
        if not config.is_absolute() and not config.exists():
            config = path.parent / config
        widths = _check_mapping(path, f"{where}: widths", t["widths"], ())
        if not widths:
            raise ValueError(f"{path}: {where}: widths: expected at least one name: width")
        for wname, width in widths.items():
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(
                    f"{path}: {where}: widths: {wname!r}: expected an int >= 1, got {width!r}"
                )
        kind = t.get("recipe", default_kind)
        if not isinstance(kind, str) or kind not in RECIPES:
            raise ValueError(
                f"{path}: task {name!r}: recipe {kind!r} is not one of {list(RECIPES)}"
            )
        overrides = _overrides(path, f"{where}: overrides", t.get("overrides"))
        tasks[name] = TaskSpec(str(config), dict(widths), overrides, kind)
    if not tasks:
        raise ValueError(f"{path}: tasks: expected at least one task")
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"{path}: unknown methods {bad} (expected {METHODS})")
    for name, t in tasks.items():
        bad = [m for m in methods if m not in RECIPE_METHODS[t.recipe]]
        if bad:
            raise ValueError(
                f"{path}: task {name!r}: methods {bad} are not methods of recipe "
                f"{t.recipe!r} (expected {list(RECIPE_METHODS[t.recipe])})"
            )
    return GridSpec(
        experiment,
        tuple(seeds),
        methods,
        tasks,
        _overrides(path, "overrides", data.get("overrides")),
    )


def expand_grid(
    spec: GridSpec,
    *,
    seeds: Iterable[int] | None = None,
    tasks: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
    widths: Iterable[str] | None = None,
) -> list[Cell]:
    """Every cell of ``spec`` (optionally a subset), seed-major so early seeds finish first.

    Seed-major order means a grid cut short still holds complete seeds of
    every method, width and task, which is what the aggregation needs.

    Raises:
        ValueError: an unknown task, or a method its task's recipe does not have.
    """
    seeds = spec.seeds if seeds is None else tuple(seeds)
    unknown_seeds = [s for s in seeds if s not in spec.seeds]
    if unknown_seeds:
        raise ValueError(f"seeds: {unknown_seeds} are not seeds of the grid {list(spec.seeds)}")
    task_names = list(spec.tasks) if tasks is None else list(tasks)
    unknown = [t for t in task_names if t not in spec.tasks]
    if unknown:
        raise ValueError(f"unknown tasks {unknown} (grid has {list(spec.tasks)})")
    methods = spec.methods if methods is None else tuple(methods)
    if widths is not None:
        names = {w for t in task_names for w in spec.tasks[t].widths}
        unknown = [w for w in widths if w not in names]
        if unknown:
            raise ValueError(f"widths: {unknown} are not width names of the grid {sorted(names)}")
    cells = []
    for seed in seeds:
        for task in task_names:
            t = spec.tasks[task]
            bad = [m for m in methods if m not in RECIPE_METHODS[t.recipe]]
            if bad:
                raise ValueError(
                    f"methods: {bad} are not methods of task {task!r} "
                    f"(recipe {t.recipe}: {list(RECIPE_METHODS[t.recipe])})"
                )
            for wname, width in t.widths.items():
                if widths is not None and wname not in widths:
                    continue
                for method in methods:
                    overrides = (*spec.overrides, *t.overrides)
                    cells.append(
                        Cell(task, method, wname, width, seed, t.config, overrides, t.recipe)
                    )
    unknown = [m for m in methods if m not in spec.methods]
    if unknown:
        raise ValueError(f"methods: {unknown} are not methods of the grid {list(spec.methods)}")
    return cells


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


def _ensure_experiment(tracking_uri: str, experiment: str) -> None:
    # Created once here, before the workers start: two processes creating the
    # schema or the experiment at the same moment race in SQLite.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if with_retries(client.get_experiment_by_name, experiment) is None:
        with_retries(client.create_experiment, experiment)


def _slug(key: str) -> str:
    """A file name for a grid key (``/`` -> ``_``; long keys shortened with a hash).

    Example:
        >>> _slug("CartPole-v1/dqn/wide/seed0")
        'CartPole-v1_dqn_wide_seed0'
    """
    name = key.replace("/", "_").replace(os.sep, "_")
    if len(name) > 120:  # file names are limited to 255 bytes; many overrides exceed it
        name = f"{name[:100]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return name


def cell_checkpoint_dir(checkpoint_dir: str | os.PathLike, cell: Cell) -> pathlib.Path:
    """The cell's own checkpoint directory (the recipe adds its run key below it).

    One directory per grid key, not per recipe run key: two cells that differ
    only in a budget override share a run key, and must not resume each
    other's checkpoints.

    Example:
        >>> cell_checkpoint_dir("ckpt", Cell("T", "dqn", "w", 8, 0, "c.yaml")).as_posix()
        'ckpt/T_dqn_w_seed0'
    """
    return pathlib.Path(checkpoint_dir) / _slug(cell.key)


def _latest_cell_checkpoint(cell_dir: pathlib.Path) -> pathlib.Path | None:
    from .checkpointing import latest_checkpoint

    if not cell_dir.is_dir():
        return None
    found = [c for d in cell_dir.iterdir() if d.is_dir() and (c := latest_checkpoint(d))]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


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


def default_recipe(kind: str = "control") -> pathlib.Path:
    """The recipe script of ``kind`` (:data:`RECIPES`) in the checkout this package runs from.

    Example:
        >>> default_recipe("atari").name
        'atari_dqn.py'
    """
    return pathlib.Path(__file__).resolve().parents[1] / RECIPES[kind]


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
) -> dict[str, int]:
    """Run the cells MLflow does not hold as finished, ``workers`` processes at a time.

    The thread-pool backend (``recipes/study.py run --backend threads``; Ray:
    :func:`torchrl_eaudeqn.cluster.run_grid_ray`). Each run is a fresh
    ``recipes/control_dqn.py`` process with ``threads`` torch threads
    (``OMP_NUM_THREADS``), so ``workers`` runs use ``workers x threads``
    cores without oversubscription; its output goes to
    ``log_dir/<run key>.log``. A run that fails is tried again, up to
    ``attempts`` times in all, resumed from its newest checkpoint when it
    wrote one (:func:`run_cell`); the grid is resumable: run it again and
    finished cells are skipped. While ``pause_file`` exists no new run
    starts (on a shared machine, another job can hold the cores).

    Returns:
        ``{"skipped": n, "finished": n, "failed": n}``.
    """
    done = finished_keys(tracking_uri, experiment)
    todo = [c for c in cells if c.key not in done]
    counts = {"skipped": len(cells) - len(todo), "finished": 0, "failed": 0}
    echo(f"grid: {len(cells)} cells, {counts['skipped']} finished in MLflow, {len(todo)} to run")
    if not todo:
        return counts
    _ensure_experiment(tracking_uri, experiment)
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
                return True
            if attempt + 1 < attempts:
                time.sleep(2.0)
        return False

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for ok in pool.map(one, enumerate(todo)):
            counts["finished" if ok else "failed"] += 1
    return counts


# --------------------------------------------------------------------------- aggregation
@dataclasses.dataclass
class RunRecord:
    """What the aggregation reads of one finished run.

    Example:
        >>> r = RunRecord("k", "CartPole-v1", "dqn", "wide", 512, 0, 30000, 500.0, 20.0, 0.0)
        >>> r.final_score
        500.0
    """

    key: str
    task: str
    method: str
    width_name: str
    width: int
    seed: int
    env_steps: int
    final_score: float
    random_score: float
    final_sparsity: float
    #: ``(env step, training episode return)`` pairs.
    returns: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    #: ``(env step, acting member's sparsity)`` pairs.
    sparsity: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    #: ``(env step, sparsity of the selected network)`` at every target update
    #: (MuJoCo: the selected actor's, at every selection).
    updates: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    #: recipe kind (:data:`RECIPES`), told apart by the run's task parameter.
    recipe: str = "control"
    #: MuJoCo: final sparsity of the selected critic (twin-Q); NaN for the Q-learning recipes.
    critic_sparsity: float = float("nan")


def collect_runs(tracking_uri: str, experiment: str, histories: bool = True) -> list[RunRecord]:
    """The experiment's finished grid runs as :class:`RunRecord` s (latest run per key)."""
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

    def history(run_id: str, key: str) -> list[tuple[int, float]]:
        if not histories:
            return []
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    def first_history(run_id: str, *keys: str) -> list[tuple[int, float]]:
        for k in keys:  # the recipes name the same curve differently
            if found := history(run_id, k):
                return found
        return []

    records = []
    for key, run in sorted(latest.items()):
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        # control recipe: task, width, eval/return_mean; Atari recipe: game, width,
        # eval/score_mean; MuJoCo recipe: env, hidden, eval/return_mean (the selected
        # actor's sparsity: sparsity/actor_selected).
        final = t.get("final_eval_return", m.get("eval/return_mean", m.get("eval/score_mean")))
        if final is None:
            continue
        kind = "control" if "task" in p else "atari" if "game" in p else "mujoco"
        width = p.get("width") or p["hidden"]
        last = m.get("sparsity/member_0", m.get("sparsity/actor_selected", 0.0))
        sparsity = float(t.get("final_sparsity", last))
        rid = run.info.run_id
        records.append(
            RunRecord(
                key=key,
                task=p.get("task") or p.get("game") or p["env"],
                method=p["method"],
                width_name=t.get("study.width_name", width),
                width=int(width),
                seed=int(p["seed"]),
                env_steps=int(p["env_steps"]),
                final_score=float(final),
                random_score=float(
                    m.get("eval_random/return_mean", m.get("eval_random/score_mean", np.nan))
                ),
                final_sparsity=sparsity,
                returns=first_history(rid, "episode_return", "episode_score"),
                sparsity=first_history(rid, "sparsity/member_0", "sparsity/actor_selected"),
                updates=first_history(
                    rid, "target_update/selected_sparsity", "selection/actor_sparsity"
                ),
                recipe=kind,
                critic_sparsity=float(
                    t.get("final_critic_sparsity", m.get("sparsity/critic_selected", np.nan))
                ),
            )
        )
    return records


def task_bounds(
    records: Sequence[RunRecord], reference_method: str | None = None
) -> dict[str, tuple[float, float]]:
    """Per task ``(random, reference)``: the mean random-policy score over all runs, and the
    mean final score of ``reference_method`` at the task's widest width.

    ``reference_method=None``: the task's dense baseline (:data:`DENSE_METHODS`:
    ``dqn``, or ``sac`` on a MuJoCo task).

    Example:
        >>> rs = [RunRecord("a", "T", "dqn", "wide", 64, 0, 1, 10.0, 2.0, 0.0),
        ...       RunRecord("b", "T", "dqn", "narrow", 8, 0, 1, 4.0, 0.0, 0.0)]
        >>> task_bounds(rs)
        {'T': (1.0, 10.0)}
    """
    bounds = {}
    for task in sorted({r.task for r in records}):
        rs = [r for r in records if r.task == task]
        random = float(np.nanmean([r.random_score for r in rs]))
        ref = reference_method or next(
            (d for d in DENSE_METHODS if any(r.method == d for r in rs)), "dqn"
        )
        ref_rs = [r for r in rs if r.method == ref]
        if not ref_rs:
            raise ValueError(f"task {task!r}: no {ref!r} runs to normalise against")
        widest = max(r.width for r in ref_rs)
        reference = float(np.mean([r.final_score for r in ref_rs if r.width == widest]))
        bounds[task] = (random, reference)
    return bounds


def method_label(method: str, records: Sequence[RunRecord] = ()) -> str:
    """The method's name in tables and figures (PolyPrune is named after its recipe's agent).

    Example:
        >>> r = RunRecord("k", "HalfCheetah-v5", "polyprune", "w", 64, 0, 1, 0.0, 0.0, 0.9,
        ...               recipe="mujoco")
        >>> method_label("polyprune"), method_label("polyprune", [r])
        ('PolyPruneQN (95%)', 'PolyPruneSAC (95%)')
    """
    runs = [r for r in records if r.method == method]
    if method == "polyprune" and runs and all(r.recipe == "mujoco" for r in runs):
        return "PolyPruneSAC (95%)"
    return METHOD_LABELS[method]


def normalise(score: float | np.ndarray, bounds: tuple[float, float]) -> float | np.ndarray:
    """``(score - random) / (reference - random)``: 0 is random play, 1 the reference.

    Example:
        >>> normalise(55.0, (10.0, 100.0))
        0.5
    """
    random, reference = bounds
    return (score - random) / max(reference - random, 1e-8)


def normalised_scores(
    records: Sequence[RunRecord],
    bounds: dict[str, tuple[float, float]],
    value: Callable[[RunRecord], float] | None = None,
) -> dict[tuple[str, str], np.ndarray]:
    """``{(method, width name): scores[runs, tasks]}`` for rliable, tasks in sorted order.

    ``value(record)`` is the raw score (default: the final evaluation
    return), normalised per task. Only seeds finished for every task of a
    (method, width) enter, so the matrix is rectangular.

    Example:
        >>> rs = [RunRecord("a", "T", "dqn", "w", 8, s, 1, 10.0 * s, 0.0, 0.0) for s in (1, 2)]
        >>> normalised_scores(rs, {"T": (0.0, 10.0)})[("dqn", "w")].ravel().tolist()
        [1.0, 2.0]
    """
    value = value or (lambda r: r.final_score)
    tasks = sorted(bounds)
    out = {}
    groups = sorted({(r.method, r.width_name) for r in records})
    for group in groups:
        rs = [r for r in records if (r.method, r.width_name) == group]
        by_task = {t: {r.seed: r for r in rs if r.task == t} for t in tasks}
        present = [t for t in tasks if by_task[t]]
        seeds = sorted(set.intersection(*(set(by_task[t]) for t in present)))
        if not seeds:
            continue
        out[group] = np.array(
            [[normalise(value(by_task[t][s]), bounds[t]) for t in present] for s in seeds]
        )
    return out


def stratified_bootstrap(
    scores: np.ndarray,
    func: Callable[[np.ndarray], np.ndarray],
    reps: int = 2000,
    seed: int = 0,
    size: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile confidence interval of ``func(scores)`` by stratified bootstrap.

    Runs are resampled with replacement *within each task* (the strata), as
    rliable's ``StratifiedBootstrap`` does. rliable's ``library`` module
    imports the ``arch`` package, which fails to import with the pandas
    this project installs, so the resampling is done here and rliable's
    ``metrics`` supply the statistics.

    Args:
        scores: ``[runs, tasks]``.
        func: ``scores -> statistic`` (a scalar or a vector of statistics).
        reps: bootstrap resamples.
        seed: resampling seed.
        size: coverage of the interval.

    Returns:
        ``(point, ci)`` with ``ci`` of shape ``[2, *point.shape]`` (low, high).

    Example:
        >>> point, ci = stratified_bootstrap(np.ones((3, 2)), np.mean, reps=50)
        >>> float(point), ci.ravel().tolist()
        (1.0, [1.0, 1.0])
    """
    scores = np.asarray(scores, dtype=float)
    rng = np.random.RandomState(seed)
    n, m = scores.shape
    point = np.asarray(func(scores))
    stats = np.empty((reps, *point.shape))
    cols = np.arange(m)
    for i in range(reps):
        stats[i] = func(scores[rng.randint(0, n, size=(n, m)), cols])
    tail = (1 - size) / 2 * 100
    return point, np.percentile(stats, [tail, 100 - tail], axis=0)


def interval_estimates(
    scores: dict[Any, np.ndarray], reps: int = 2000, seed: int = 0
) -> dict[Any, dict[str, float]]:
    """IQM and mean with 95% stratified bootstrap confidence intervals.

    The statistics are ``rliable.metrics.aggregate_iqm`` and
    ``aggregate_mean``; the intervals come from :func:`stratified_bootstrap`.

    Example:
        >>> est = interval_estimates({"m": np.array([[0.0], [1.0], [2.0], [3.0]])}, reps=200)
        >>> est["m"]["iqm"], est["m"]["mean"]
        (1.5, 1.5)
    """
    from rliable import metrics

    def both(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    out = {}
    for k, arr in scores.items():
        p, ci = stratified_bootstrap(arr, both, reps=reps, seed=seed)
        out[k] = {
            "iqm": float(p[0]),
            "iqm_low": float(ci[0, 0]),
            "iqm_high": float(ci[1, 0]),
            "mean": float(p[1]),
            "mean_low": float(ci[0, 1]),
            "mean_high": float(ci[1, 1]),
            "runs": int(arr.shape[0]),
            "tasks": int(arr.shape[1]),
        }
    return out


def binned_curve(points: Sequence[tuple[int, float]], edges: np.ndarray) -> np.ndarray:
    """Mean of ``points`` in each ``[edges[i], edges[i+1])`` bin; empty bins carry the last value.

    Example:
        >>> binned_curve([(1, 1.0), (2, 3.0), (7, 5.0)], np.array([0, 4, 8, 12])).tolist()
        [2.0, 5.0, 5.0]
    """
    out = np.full(len(edges) - 1, np.nan)
    if points:
        steps = np.array([p[0] for p in points])
        vals = np.array([p[1] for p in points], dtype=float)
        for i in range(len(edges) - 1):
            sel = (steps >= edges[i]) & (steps < edges[i + 1])
            if sel.any():
                out[i] = vals[sel].mean()
    last = np.nan
    for i in range(len(out)):  # a bin with no finished episode keeps the previous mean
        if np.isnan(out[i]):
            out[i] = last
        last = out[i]
    return out


def area_under_curve(record: RunRecord, empty: float, bins: int = 20) -> float:
    """Mean training return over the run, in ``bins`` equal slices of its budget (raw units).

    The area under the score curve divided by the budget; pass it through
    :func:`normalised_scores` (``value=``) to normalise it like a final score
    (1.0: played at the reference's final level from the first step). Slices
    before the first finished episode count as ``empty`` (the random score).

    Example:
        >>> r = RunRecord("k", "T", "dqn", "w", 8, 0, 100, 0.0, 0.0, 0.0, returns=[(60, 10.0)])
        >>> area_under_curve(r, empty=0.0, bins=2)
        5.0
    """
    edges = np.linspace(0, record.env_steps + 1, bins + 1)
    return float(np.mean(np.nan_to_num(binned_curve(record.returns, edges), nan=empty)))
