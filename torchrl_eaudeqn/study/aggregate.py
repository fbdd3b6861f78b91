"""Aggregating a grid's runs: normalised scores, IQM and mean with stratified-bootstrap CIs.

:func:`collect_runs` reads finished runs (:mod:`torchrl_eaudeqn.tracking.study_runs`)
into :class:`RunRecord` s; :func:`normalised_scores` and
:func:`interval_estimates` give rliable's IQM and mean with 95% stratified
bootstrap confidence intervals; :func:`area_under_curve` summarises a curve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from ..tracking.study_runs import finished_runs
from .grid import DENSE_METHODS, METHOD_LABELS

__all__ = [
    "RunRecord",
    "area_under_curve",
    "binned_curve",
    "collect_runs",
    "interval_estimates",
    "method_label",
    "normalise",
    "normalised_scores",
    "stratified_bootstrap",
    "task_bounds",
]


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
    #: ``(env step, selected member)`` at every target update (EauDe*; empty otherwise).
    selected: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    run_id: str = ""
    #: The run's logged config (MLflow params, strings).
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Seconds from the run's start to its end (MLflow's clock; a resumed run counts its pause).
    wall_s: float | None = None


def collect_runs(
    tracking_uri: str,
    experiment: str,
    histories: bool = True,
    keys: Collection[str] | None = None,
) -> list[RunRecord]:
    """The experiment's finished grid runs as :class:`RunRecord` s (latest run per key).

    ``keys``: only these grid keys (``None``: all).
    """
    records = []
    hist = _HISTORY_KEYS if histories else ()
    for run in finished_runs(tracking_uri, experiment, hist, keys=keys):
        p, m, t = run.params, run.metrics, run.tags
        # control recipe: eval/return_mean; Atari recipe: eval/score_mean; MuJoCo
        # recipe: eval/return_mean and the selected actor's sparsity/actor_selected.
        final = t.get("final_eval_return", m.get("eval/return_mean", m.get("eval/score_mean")))
        if final is None:
            continue

        def first_history(*keys: str, run=run) -> list[tuple[int, float]]:
            for k in keys:  # the recipes name the same curve differently
                if found := run.histories.get(k):
                    return found
            return []

        # A field only that family has; game / hidden: runs logged before the rename to env / width.
        atari, mujoco = {"frame_skip", "game"} & p.keys(), {"tau", "hidden"} & p.keys()
        kind = "atari" if atari else "mujoco" if mujoco else "control"
        width = p.get("width") or p["hidden"]  # hidden: SAC runs before the rename
        last = m.get("sparsity/member_0", m.get("sparsity/actor_selected", 0.0))
        records.append(
            RunRecord(
                key=run.key,
                task=p.get("env") or p.get("task") or p["game"],
                method=p["method"],
                width_name=t.get("study.width_name", width),
                width=int(width),
                seed=int(p["seed"]),
                env_steps=int(p["env_steps"]),
                final_score=float(final),
                random_score=float(
                    m.get("eval_random/return_mean", m.get("eval_random/score_mean", np.nan))
                ),
                final_sparsity=float(t.get("final_sparsity", last)),
                returns=first_history("episode_return", "episode_score"),
                sparsity=first_history("sparsity/member_0", "sparsity/actor_selected"),
                updates=first_history(
                    "target_update/selected_sparsity", "selection/actor_sparsity"
                ),
                recipe=kind,
                critic_sparsity=float(
                    t.get("final_critic_sparsity", m.get("sparsity/critic_selected", np.nan))
                ),
                selected=first_history("target_update/selected", "selected/actor"),
                run_id=run.run_id,
                params=dict(p),
                wall_s=(run.end_ms - run.start_ms) / 1e3 if run.end_ms and run.start_ms else None,
            )
        )
    return records


#: The curves a :class:`RunRecord` holds, under each recipe's metric name.
_HISTORY_KEYS = (
    "episode_return", "episode_score", "sparsity/member_0", "sparsity/actor_selected",
    "target_update/selected_sparsity", "selection/actor_sparsity",
    "target_update/selected", "selected/actor",
)  # fmt: skip


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
