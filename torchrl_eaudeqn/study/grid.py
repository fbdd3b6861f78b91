"""A study grid: a YAML file of methods x tasks x widths x seeds, and its cells.

:func:`load_grid` checks the file (each problem one line naming its key);
:func:`expand_grid` turns it into :class:`Cell` s, each with a stable grid
key and the recipe command line that runs it (:meth:`Cell.argv`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Iterable, Sequence

import yaml

from ..credentials import ENV_PREFIX, has_credentials
from ..tracking.study_runs import KEY_TAG

__all__ = [
    "DENSE_METHODS",
    "FAULT_ENV",
    "KEY_TAG",
    "METHODS",
    "METHOD_LABELS",
    "RECIPES",
    "RECIPE_METHODS",
    "URI_ENV",
    "Cell",
    "GridSpec",
    "TaskSpec",
    "cell_checkpoint_dir",
    "default_recipe",
    "expand_grid",
    "load_grid",
]

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


# --------------------------------------------------------------------------- grid
@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a grid: its base config, the widths to run and the recipe kind.

    ``recipe`` is a key of :data:`RECIPES`: ``control`` (``recipes/control_dqn.py``),
    ``atari`` (``recipes/atari_dqn.py``) or ``mujoco`` (``recipes/mujoco_sac.py``;
    methods ``sac``, ``eaudesac``, ``polyprune``: :data:`RECIPE_METHODS`). Each
    recipe takes the task as ``env=`` and the width (per hidden layer) as ``width=``.

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

        The task and the width go to the recipe's ``env=`` and ``width=``.
        ``extra`` overrides come last (e.g. ``device=cuda`` on a GPU worker).
        A ``tracking_uri`` with credentials is not written here (any user can
        read a process's arguments): the recipe gets
        ``tracking_uri=env:MLFLOW_TRACKING_URI`` and :func:`run_cell` puts the
        URI in its environment.

        Example:
            >>> Cell("Pong", "dqn", "small", 32, 0, "a.yaml", recipe="atari").argv("u", "e", "c")[2]
            'env=Pong'
            >>> Cell("Hopper-v5", "sac", "narrow", 64, 0, "m.yaml", recipe="mujoco").argv(
            ...     "u", "e", "c")[2:5]
            ['env=Hopper-v5', 'method=sac', 'width=64']
            >>> [a for a in Cell("T", "dqn", "w", 8, 0, "c.yaml").argv("https://u:p@h", "e", "c")
            ...  if a.startswith("tracking_uri")]
            ['tracking_uri=env:MLFLOW_TRACKING_URI']
        """
        uri_arg = f"{ENV_PREFIX}{URI_ENV}" if has_credentials(tracking_uri) else tracking_uri
        return [
            "--config",
            self.config,
            f"env={self.task}",
            f"method={self.method}",
            f"width={self.width}",
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
    from ..config import SEED_MAX

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


def default_recipe(kind: str = "control") -> pathlib.Path:
    """The recipe script of ``kind`` (:data:`RECIPES`) in the checkout this package runs from.

    Example:
        >>> default_recipe("atari").name
        'atari_dqn.py'
    """
    return pathlib.Path(__file__).resolve().parents[2] / RECIPES[kind]
