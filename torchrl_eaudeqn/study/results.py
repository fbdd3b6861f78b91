"""One small JSON file per finished grid cell: what a report needs, without the MLflow store.

A grid that outlasts one session (or one machine) keeps its finished cells in
files committed beside the code: :func:`run_grid` skips a cell whose file
exists and writes the file when the cell finishes. Each file holds the cell's
grid key and resolved config, its final evaluation and the random policy's
score, the selected member and its sparsity at every target update, the
training return (100-episode moving average, sampled), and its wall time.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .grid import Cell

if TYPE_CHECKING:
    from .aggregate import RunRecord

__all__ = [
    "RESULT_VERSION",
    "cell_results",
    "has_result",
    "load_results",
    "result_path",
    "run_records",
    "write_result",
]

#: Bumped when a field changes meaning; readers refuse other versions.
RESULT_VERSION = 1
#: Points kept of the training-return curve (its moving average, evenly spaced).
CURVE_POINTS = 200
#: Episodes in the training-return moving average (the MinAtar paper's plots use 100).
CURVE_WINDOW = 100


def result_path(results_dir: str | pathlib.Path, cell: Cell) -> pathlib.Path:
    """Where ``cell``'s result file lives.

    Example:
        >>> result_path("results", Cell("minatar:breakout", "dqn", "paper", 128, 0, "c.yaml")).name
        'minatar_breakout_dqn_paper_seed0.json'
    """
    # Portable file names (no ':'); the record's own "key" says which cell it is.
    return pathlib.Path(results_dir) / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', cell.key)}.json"


def _read_record(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON result file ({exc})") from None


def has_result(results_dir: str | pathlib.Path, cell: Cell) -> bool:
    """Whether ``cell``'s result file exists; one that names another cell raises.

    Raises:
        ValueError: the file is not a result record of this cell.
    """
    path = result_path(results_dir, cell)
    if not path.is_file():
        return False
    record = _read_record(path)
    if not isinstance(record, dict) or record.get("key") != cell.key:
        raise ValueError(f"{path}: expected the result of cell {cell.key!r}")
    return True


def _moving_average(points: list[tuple[int, float]]) -> list[list[float]]:
    """``[env step, mean of the last CURVE_WINDOW episode returns]``, at most CURVE_POINTS."""
    if not points:
        return []
    values = [v for _, v in points]
    out, total = [], 0.0
    for i, (step, value) in enumerate(points):
        total += value - (values[i - CURVE_WINDOW] if i >= CURVE_WINDOW else 0.0)
        out.append([step, total / min(i + 1, CURVE_WINDOW)])
    stride = max(1, math.ceil(len(out) / CURVE_POINTS))
    kept = out[::stride]
    if kept[-1] is not out[-1]:
        kept.append(out[-1])
    return kept


def cell_results(
    tracking_uri: str, experiment: str, cells: Sequence[Cell]
) -> dict[str, dict[str, Any]]:
    """Result records of the cells with a ``FINISHED`` run (newest per cell), by grid key.

    Read through :func:`~torchrl_eaudeqn.study.aggregate.collect_runs` (one
    query for all the cells), so the score, sparsity and curves are the ones
    the MLflow-based report uses.
    """
    from .aggregate import collect_runs

    by_key = {c.key: c for c in cells}
    out = {}
    for r in collect_runs(tracking_uri, experiment, keys=set(by_key)):
        cell = by_key[r.key]
        sparsity = dict(r.updates)
        out[r.key] = {
            "version": RESULT_VERSION,
            "key": cell.key,
            "task": cell.task,
            "method": cell.method,
            "width_name": cell.width_name,
            "width": cell.width,
            "seed": cell.seed,
            "recipe": r.recipe,
            "env_steps": r.env_steps,
            "config": dict(sorted(r.params.items())),
            "mlflow_run_id": r.run_id,
            "final_score": r.final_score,
            "random_score": r.random_score,
            "final_sparsity": r.final_sparsity,
            "critic_sparsity": r.critic_sparsity,
            # Every target update: [env step, selected member, its sparsity].
            "target_updates": [
                [int(step), int(member), sparsity.get(step)] for step, member in r.selected
            ],
            "training_return": _moving_average([(int(s), v) for s, v in r.returns]),
            "wall_s": r.wall_s,
        }
    return out


def _finite(value: Any) -> Any:
    """NaN and infinities as ``None`` (JSON has neither), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_result(path: str | pathlib.Path, record: dict[str, Any]) -> pathlib.Path:
    """Write ``record`` as JSON atomically (a temporary file, ``fsync``, a rename).

    NaN and infinite values are written as ``null``.
    """
    path = pathlib.Path(path)
    record = _finite(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_results(results_dir: str | pathlib.Path) -> list[dict[str, Any]]:
    """Every result file under ``results_dir`` (sorted by name); a bad file raises naming it.

    Raises:
        ValueError: a file that is not JSON or not a result record of :data:`RESULT_VERSION`.
    """
    out = []
    for path in sorted(pathlib.Path(results_dir).glob("*.json")):
        record = _read_record(path)
        if not isinstance(record, dict) or record.get("version") != RESULT_VERSION:
            raise ValueError(f"{path}: expected a result record of version {RESULT_VERSION}")
        out.append(record)
    return out


def run_records(results_dir: str | pathlib.Path, keys: set[str] | None = None) -> list[RunRecord]:
    """The result files under ``results_dir`` as the report's run records (no MLflow).

    What the files keep is what the report reads, with two differences from
    :func:`~torchrl_eaudeqn.study.aggregate.collect_runs`: the training curve
    is the file's 100-episode moving average (sampled) rather than every
    episode's return, and the sparsity curve is the selected member's at
    each target update rather than the logged acting member's.

    Args:
        results_dir: a directory of :func:`write_result` files.
        keys: only these grid keys (default: all).

    Raises:
        ValueError: a file that is not a result record (see :func:`load_results`).

    Example:
        >>> import tempfile
        >>> from torchrl_eaudeqn.study.grid import Cell
        >>> d = tempfile.mkdtemp()
        >>> cell = Cell("CartPole-v1", "eaudeqn", "wide", 256, 0, "c.yaml")
        >>> _ = write_result(result_path(d, cell), {"version": RESULT_VERSION, "key": cell.key,
        ...     "task": cell.task, "method": cell.method, "width_name": "wide", "width": 256,
        ...     "seed": 0, "env_steps": 100, "final_score": 50.0, "random_score": 20.0,
        ...     "final_sparsity": 0.4, "target_updates": [[50, 2, 0.25], [100, 0, 0.4]],
        ...     "training_return": [[10, 20.0], [100, 45.0]], "wall_s": 3.0})
        >>> (r,) = run_records(d)
        >>> r.key, r.final_score, r.updates, r.selected
        ('CartPole-v1/eaudeqn/wide/seed0', 50.0, [(50, 0.25), (100, 0.4)], [(50, 2), (100, 0)])
    """
    from .aggregate import RunRecord

    out = []
    for rec in load_results(results_dir):
        if keys is not None and rec["key"] not in keys:
            continue
        updates = [(int(s), float(v)) for s, _, v in rec["target_updates"] if v is not None]

        def num(name: str, rec: dict[str, Any] = rec) -> float:
            value = rec.get(name)
            return float("nan") if value is None else float(value)

        out.append(
            RunRecord(
                key=rec["key"],
                task=rec["task"],
                method=rec["method"],
                width_name=rec["width_name"],
                width=int(rec["width"]),
                seed=int(rec["seed"]),
                env_steps=int(rec["env_steps"]),
                final_score=num("final_score"),
                random_score=num("random_score"),
                final_sparsity=num("final_sparsity"),
                returns=[(int(s), float(v)) for s, v in rec["training_return"]],
                sparsity=updates,
                updates=updates,
                recipe=rec.get("recipe", "control"),
                critic_sparsity=num("critic_sparsity"),
                selected=[(int(s), int(m)) for s, m, _ in rec["target_updates"]],
                run_id=rec.get("mlflow_run_id", ""),
                params=dict(rec.get("config", {})),
                wall_s=rec.get("wall_s"),
            )
        )
    return out
