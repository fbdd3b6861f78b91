"""What a training run prints: numbers for a person, the end-of-run summary, quiet known noise.

* :func:`human_count` (``17000 -> '17.0k'``), :func:`human_value`
  (``1520.4 -> '1,520'``), :func:`human_percent` (``0.7581 -> '75.8%'``),
  :func:`human_duration` (``552 -> '9m12s'``): the progress bar
  (:class:`~torchrl_eaudeqn.lightning.EnvStepProgressBar`) and the summary use them;
* :func:`compare_with_random`: the verdict rule, final mean minus random mean
  against twice the standard error of that difference;
* :class:`RunSummary` and :func:`format_summary`: the block a recipe prints
  when it is done (pure); :func:`~torchrl_eaudeqn.tracking.summary.gather_summary`
  fills one from a finished run (the module, its MLflow run, what was registered);
* :func:`known_noise_silenced` and :func:`mujoco_compiler_warnings_silenced`:
  the known-harmless lines the project's own calls trigger (Lightning's tips,
  two Lightning warnings, TorchRL's storage line, MuJoCo's ``settotalmass``
  deprecation), hidden only while those calls run and matched by message, so a
  user's own warnings still show.

Example:
    >>> v = compare_with_random(EvalStats(1520.0, 523.0, 10), EvalStats(20.0, 40.0, 10))
    >>> v.above, v.text
    (True, 'above random (diff 1,500 > 2 SE = 332)')
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ._lazy import moved_names

__all__ = [
    "EvalStats",
    "Registered",
    "RunSummary",
    "SelectionCount",
    "SparsityReport",
    "Verdict",
    "compare_with_random",
    "count_selections",
    "format_summary",
    "gather_summary",  # noqa: F822 - resolved lazily by __getattr__ (tracking.summary)
    "human_count",
    "human_duration",
    "human_percent",
    "human_value",
    "known_noise_silenced",
    "layer_labels",
    "mujoco_compiler_warnings_silenced",
    "network_sparsity",
]


# --------------------------------------------------------------------------- numbers
def human_count(n: float) -> str:
    """A count with three significant digits and a k/M/G suffix (``17000 -> '17.0k'``).

    Example:
        >>> [human_count(x) for x in (950, 1500, 17000, 250_000, 10_000_000)]
        ['950', '1.50k', '17.0k', '250k', '10.0M']
    """
    x = float(n)
    if not math.isfinite(x):
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale * 0.9995:
            y = x / scale
            digits = 0 if abs(y) >= 99.95 else 1 if abs(y) >= 9.995 else 2
            return f"{y:.{digits}f}{suffix}"
    return f"{x:.0f}"


def human_value(x: float) -> str:
    """A score or return: thousands separators, decimals only where they matter.

    Example:
        >>> [human_value(x) for x in (1520.4, -203.9, 20.66, 0.5, 0.0, float("nan"))]
        ['1,520', '-204', '20.7', '0.50', '0', '-']
    """
    x = float(x)
    if not math.isfinite(x):
        return "-"
    if abs(x) >= 99.95 or x == int(x):  # game scores are whole numbers
        return f"{x:,.0f}"
    if abs(x) >= 9.995:
        return f"{x:.1f}"
    return f"{x:.2f}"


def human_percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal (``0.7581 -> '75.8%'``).

    Example:
        >>> human_percent(0.7581), human_percent(0.0), human_percent(float("nan"))
        ('75.8%', '0.0%', '-')
    """
    x = float(fraction)
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def human_duration(seconds: float) -> str:
    """``45s``, ``9m12s`` or ``1h02m``.

    Example:
        >>> human_duration(45.2), human_duration(552), human_duration(3725)
        ('45s', '9m12s', '1h02m')
    """
    s = int(round(max(0.0, float(seconds))))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# --------------------------------------------------------------------------- verdict
@dataclasses.dataclass(frozen=True)
class EvalStats:
    """One evaluation: mean, *sample* standard deviation (ddof=1) and episode count.

    Example:
        >>> EvalStats.from_population(mean=2.0, std=1.0, episodes=2).std  # logged np.std is ddof=0
        1.4142135623730951
    """

    mean: float
    std: float
    episodes: int

    @classmethod
    def from_population(cls, mean: float, std: float, episodes: float) -> EvalStats:
        """From the logged ``np.std`` (ddof=0); the sample std is NaN for one episode."""
        n = int(episodes)
        sample = float(std) * math.sqrt(n / (n - 1)) if n > 1 else float("nan")
        return cls(float(mean), sample, n)

    def __str__(self) -> str:
        plural = "" if self.episodes == 1 else "s"
        spread = f" +- {human_value(self.std)}" if math.isfinite(self.std) else ""
        return f"{human_value(self.mean)}{spread} ({self.episodes} episode{plural})"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """:func:`compare_with_random`'s answer: ``above`` and the sentence that says why."""

    above: bool
    diff: float
    se: float
    text: str


def compare_with_random(final: EvalStats, random: EvalStats) -> Verdict:
    """Is the final agent clearly above the random policy?

    Above when ``final.mean - random.mean > 2 * SE``, with
    ``SE = sqrt(s1^2 / n1 + s2^2 / n2)`` from the sample standard deviations;
    "not clearly above random" otherwise, and also when a standard error
    cannot be computed (one episode on either side).

    Example:
        >>> compare_with_random(EvalStats(30.0, 20.0, 10), EvalStats(20.0, 10.0, 10)).text
        'not clearly above random (diff 10 <= 2 SE = 14.1)'
    """
    diff = final.mean - random.mean
    se = math.sqrt(final.std**2 / max(final.episodes, 1) + random.std**2 / max(random.episodes, 1))
    if not math.isfinite(se):
        return Verdict(
            False,
            diff,
            se,
            f"not clearly above random (diff {human_value(diff)}; a standard error needs "
            ">= 2 episodes on each side)",
        )
    above = diff > 2 * se
    sign = ">" if above else "<="
    head = "above random" if above else "not clearly above random"
    return Verdict(
        above, diff, se, f"{head} (diff {human_value(diff)} {sign} 2 SE = {human_value(2 * se)})"
    )


# --------------------------------------------------------------------------- sparsity
@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Sparsity of one network: over prunable weights, over all parameters, per layer.

    ``name`` is empty for a recipe's single acting network, ``"actor"`` /
    ``"critic"`` for SAC's two.
    """

    name: str
    prunable: float
    overall: float
    layers: tuple[tuple[str, float], ...]

    def __str__(self) -> str:
        head = f"{self.name} " if self.name else ""
        layers = ", ".join(f"{label} {human_percent(s)}" for label, s in self.layers)
        return (
            f"{head}{human_percent(self.prunable)} of weights "
            f"({human_percent(self.overall)} of all parameters); {layers}"
        )


def layer_labels(names: Sequence[str], kinds: Sequence[str] | None = None) -> list[str]:
    """Short labels of prunable weights, in order: ``conv1``, ``fc1``, ..., ``head``.

    ``kinds`` says ``"conv"`` or ``"fc"`` per name (default: all ``"fc"``).
    Names are grouped by what precedes their layer index (``q1.0.weight`` and
    ``q1.2.weight`` are group ``q1``); each group's last layer is its ``head``.

    Example:
        >>> layer_labels(["1.weight", "3.weight", "8.weight", "10.weight"],
        ...              ["conv", "conv", "fc", "fc"])
        ['conv1', 'conv2', 'fc1', 'head']
        >>> layer_labels(["q1.0.weight", "q1.2.weight", "q2.0.weight", "q2.2.weight"])
        ['q1.fc1', 'q1.head', 'q2.fc1', 'q2.head']
    """
    kinds = list(kinds) if kinds is not None else ["fc"] * len(names)
    groups = []
    for name in names:
        parts = name.split(".")
        stem = parts[:-1]  # drop "weight"
        group = ".".join(p for p in stem[:-1] if not p.isdigit() and p != "net")
        groups.append(group)
    labels = []
    counts: dict[tuple[str, str], int] = {}
    for i, (group, kind) in enumerate(zip(groups, kinds, strict=True)):
        last = i == len(names) - 1 or groups[i + 1] != group
        if last and kind == "fc":
            label = "head"
        else:
            counts[(group, kind)] = counts.get((group, kind), 0) + 1
            label = f"{kind}{counts[(group, kind)]}"
        labels.append(f"{group}.{label}" if group else label)
    return labels


def network_sparsity(net: Any, name: str = "") -> SparsityReport:
    """:class:`SparsityReport` of a plain network, read from its zeros (as the registry tags).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 2.0]]))
        >>> str(network_sparsity(net))
        '33.3% of weights (22.2% of all parameters); fc1 50.0%, head 0.0%'
    """
    import torch

    from .sparsity import prunable_parameter_names
    from .tracking.registry import network_sparsity_tags

    tags = network_sparsity_tags(net)
    names = prunable_parameter_names(net)
    kinds = []
    for param in names:
        module = net.get_submodule(param.rsplit(".", 1)[0]) if "." in param else net
        kinds.append("conv" if isinstance(module, torch.nn.modules.conv._ConvNd) else "fc")
    layers = tuple(
        (label, float(tags[f"sparsity.{param}"]))
        for label, param in zip(layer_labels(names, kinds), names, strict=True)
    )
    return SparsityReport(
        name, float(tags["sparsity_prunable"]), float(tags["sparsity_overall"]), layers
    )


# --------------------------------------------------------------------------- selections
@dataclasses.dataclass(frozen=True)
class SelectionCount:
    """How many selections an updater made and how many a pruned member won.

    ``pruned_wins`` is ``None`` where nothing is selected (PolyPrune: one
    network pruned on a schedule). ``counted`` is set when the updater kept
    only its newest ``counted`` history entries (``history_len``): the wins
    (and a PolyPrune count) are over those entries, ``total`` of a selection
    count is still the whole run's.
    """

    name: str
    total: int
    pruned_wins: int | None
    counted: int | None = None

    def __str__(self) -> str:
        if self.pruned_wins is None:
            window = f" in the newest {self.counted:,} updater entries" if self.counted else ""
            return f"{self.total}{window} (one network pruned on a schedule: no selection)"
        window = f" of the newest {self.counted:,}" if self.counted else ""
        return f"{self.total}, won by a pruned member {self.pruned_wins}{window}"


def count_selections(
    history: Sequence[Mapping[str, Any]], total: int | None = None
) -> tuple[SelectionCount, ...]:
    """Count target updates (DQN family) or selections (SAC) in an updater's ``history``.

    A win "by a pruned member" is a selection whose winner was pruned further
    during the period (its pruning speed was above 0): the steady copy of the
    last winner losing to a sparser one.

    Args:
        history: the updater's entries (it keeps the newest ``history_len``).
        total: how many entries the updater recorded in all (``history_total``);
            above ``len(history)``, the oldest are gone and the counts say so.

    Example:
        >>> count_selections([
        ...     {"selected": 0, "speeds_before": [0.0, 0.0, 0.0]},
        ...     {"selected": 2, "speeds_before": [0.0, 0.1, 0.2]},
        ...     {"selected": 0, "speeds_before": [0.0, 0.1, 0.2]}])[0]
        SelectionCount(name='target updates', total=3, pruned_wins=1, counted=None)
    """
    kept = len(history)
    # Fewer kept than recorded: the oldest entries were dropped (bounded history).
    counted = kept if total is not None and total > kept else None
    from .updaters.common import UpdateEvent  # here: the module stays importable without torch

    events = [UpdateEvent(h) for h in history]
    dqn = [h for h in events if h.pruned_win("value") is not None]
    schedule = [h for h in events if h.event == "target"]
    sac = [h for h in events if "actor" in h.roles]
    prunes = [h for h in events if h.event == "prune"]

    def wins(entries: list[UpdateEvent], role: str) -> int:
        return sum(1 for h in entries if h.pruned_win(role))

    # Every entry of a selecting updater is a selection: the whole run's count is ``total``.
    every = total if counted is not None else None
    if sac:
        return tuple(
            SelectionCount(
                f"{who} selections",
                every or len(sac),
                wins(sac, who),
                counted,
            )
            for who in ("actor", "critic")
        )
    if dqn:
        return (SelectionCount("target updates", every or len(dqn), wins(dqn, "value"), counted),)
    if schedule:
        return (SelectionCount("target updates", len(schedule), None, counted),)
    if prunes:
        return (SelectionCount("mask updates", len(prunes), None, counted),)
    return (SelectionCount("target updates", 0, 0),)


# --------------------------------------------------------------------------- the block
@dataclasses.dataclass(frozen=True)
class Registered:
    """What a recipe's ``register`` step returns to :func:`~torchrl_eaudeqn.recipe.run_recipe`.

    Args:
        model_uri: ``models:/NAME/VERSION`` of the registered agent, or ``None``.
        sparsity: the reports of the final networks (the registered one first).
        evaluate_args: the task arguments of ``recipes/evaluate.py``
            (``("--game", "RoadRunner")``), without ``--model``/``--tracking-uri``;
            ``None``: evaluate.py does not play this kind of model.
        alias: the alias set on the version (``"final"``).
        note: why nothing was registered (``model_uri=None``).
        evaluate_note: what to do instead when ``evaluate_args`` is ``None``.

    Example:
        >>> Registered("models:/pong/3", (), ("--game", "Pong"), alias="final").model_uri
        'models:/pong/3'
    """

    model_uri: str | None
    sparsity: tuple[SparsityReport, ...]
    evaluate_args: tuple[str, ...] | None = ()
    alias: str = ""
    note: str = ""
    evaluate_note: str = ""


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Everything the end-of-run block says (:func:`format_summary` prints it).

    ``random`` is ``None`` when no random baseline was scored
    (``random_note`` says why); ``model_uri``, ``evaluate_cmd`` and ``plot``
    likewise with ``model_note`` / ``evaluate_note`` / ``plot_note``.
    """

    title: str
    env_steps: int
    start_steps: int
    wall_s: float
    train_s: float
    metric: str
    final: EvalStats
    random: EvalStats | None
    random_note: str
    history: tuple[tuple[int, float], ...]
    history_note: str
    training: tuple[float, float] | None
    sparsity: tuple[SparsityReport, ...]
    selections: tuple[SelectionCount, ...]
    model_uri: str | None
    model_note: str
    evaluate_cmd: str | None
    evaluate_note: str
    plot: str | None
    plot_note: str
    ui: str
    run_id: str

    @property
    def verdict(self) -> Verdict | None:
        return None if self.random is None else compare_with_random(self.final, self.random)


#: Width of the label column of the block.
_LABEL = 18
#: The most evaluations the history line shows (evenly spaced, first and last kept).
MAX_HISTORY = 10


def _line(label: str, text: str) -> str:
    return f"{label:<{_LABEL}}{text}"


def _history(points: Sequence[tuple[int, float]]) -> str:
    shown = list(points)
    note = ""
    if len(shown) > MAX_HISTORY:
        idx = sorted({round(i * (len(shown) - 1) / (MAX_HISTORY - 1)) for i in range(MAX_HISTORY)})
        shown = [shown[i] for i in idx]
        note = f" ({len(shown)} of {len(points)} shown)"
    return " | ".join(f"{human_count(s)}: {human_value(v)}" for s, v in shown) + note


def format_summary(s: RunSummary) -> str:
    """The end-of-run block: one line per field, a person reads it in ten seconds.

    Example:
        >>> block = format_summary(RunSummary(
        ...     title="EauDeQN on Pong", env_steps=2000, start_steps=0, wall_s=75, train_s=60,
        ...     metric="score", final=EvalStats(3.0, 1.0, 5), random=EvalStats(-20.0, 1.0, 5),
        ...     random_note="", history=((1000, -19.0), (2000, 3.0)), history_note="",
        ...     training=(-20.5, -10.0), sparsity=(), selections=(), model_uri=None,
        ...     model_note="not registered (register=false)", evaluate_cmd=None, evaluate_note="",
        ...     plot="/tmp/plot.png", plot_note="", ui="http://mlflow:5000/#/experiments/1/runs/ab",
        ...     run_id="ab"))
        >>> print(block.splitlines()[0]); print(block.splitlines()[3])
        == EauDeQN on Pong: done ==
        random policy     -20 +- 1 (5 episodes) -> above random (diff 23 > 2 SE = 1.26)
    """
    out = [f"== {s.title}: done =="]
    steps = f"{s.env_steps:,}"
    if s.start_steps:
        steps += f" ({s.env_steps - s.start_steps:,} after resuming at {s.start_steps:,})"
    rate = (s.env_steps - s.start_steps) / s.train_s if s.train_s > 0 else float("nan")
    rate_text = f"{rate:,.0f}" if math.isfinite(rate) and rate >= 10 else human_value(rate)
    out.append(
        _line(
            "env steps",
            f"{steps} in {human_duration(s.wall_s)}; training {human_duration(s.train_s)} "
            f"at {rate_text} steps/s",
        )
    )
    out.append(_line("final eval", f"{s.final}: the final agent, the one registered"))
    if s.random is None:
        out.append(_line("random policy", s.random_note))
    else:
        out.append(_line("random policy", f"{s.random} -> {s.verdict.text}"))
    history = _history(s.history) if s.history else "no evaluation logged"
    out.append(_line("eval history", history + (f" ({s.history_note})" if s.history_note else "")))
    if s.training is not None:
        first, last = s.training
        none = "" if math.isfinite(first + last) else " (-: no episode ended in that tenth)"
        out.append(
            _line(
                "training",
                f"episode {s.metric} first/last tenth of the steps "
                f"{human_value(first)} -> {human_value(last)}{none}",
            )
        )
    for i, report in enumerate(s.sparsity):
        out.append(_line("sparsity" if i == 0 else "", str(report)))
    for count in s.selections:
        out.append(_line(count.name, str(count)))
    out.append(_line("model", s.model_uri or s.model_note))
    out.append(_line("evaluate", s.evaluate_cmd or s.evaluate_note or s.model_note))
    out.append(_line("plot", s.plot or s.plot_note))
    out.append(_line("MLflow UI", s.ui))
    return "\n".join(out)


# --------------------------------------------------------------------------- quiet
#: Warnings the project's own calls trigger and that say nothing to act on (regexes
#: matched at the start of the message).
KNOWN_WARNINGS = (
    # Lightning: the module's env-step stream has a __len__ (the budget) and one worker.
    r"Your `IterableDataset` has `__len__` defined",
    # Lightning's own pytree helper, with a class this torch deprecates.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Lightning on --resume: the stream restarts from the module's env steps by design.
    r"You're resuming from a checkpoint that ended before the epoch ended",
)
#: Log lines dropped while the project's calls run: ``logger name -> message prefixes``.
KNOWN_LOG_LINES = {
    # Lightning's advertising tips (litlogger, litmodels).
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
    # TorchRL's replay storage announcing its shape at the first extend.
    "torchrl": ("Initialized LazyTensorStorage", "Initialized LazyMemmapStorage"),
    # MLflow creating the tables of a new SQLite store (recipe._init_sqlite_store).
    "mlflow.store.db.utils": (
        "Creating initial MLflow database tables",
        "Updating database tables",
    ),
}
#: MuJoCo compiler warnings about Gymnasium's own model files.
KNOWN_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


@contextlib.contextmanager
def known_noise_silenced() -> Iterator[None]:
    """Hide :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_LINES` while the block runs.

    Scoped: ``warnings.catch_warnings`` restores the warning filters on exit and
    the log filters are removed again; nothing else is hidden (a warning or a
    log line with another message shows as usual, inside the block too).
    Also usable as a decorator.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     with known_noise_silenced():
        ...         warnings.warn("Your `IterableDataset` has `__len__` defined. ...")
        ...         warnings.warn("a user's warning")
        >>> [str(w.message) for w in seen]
        ["a user's warning"]
    """
    filters = [(logging.getLogger(name), _DropPrefixes(p)) for name, p in KNOWN_LOG_LINES.items()]
    with warnings.catch_warnings():
        for pattern in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger, f in filters:
            logger.addFilter(f)
        try:
            yield
        finally:
            for logger, f in filters:
                logger.removeFilter(f)


@contextlib.contextmanager
def mujoco_compiler_warnings_silenced() -> Iterator[None]:
    """Drop MuJoCo's :data:`KNOWN_MUJOCO_WARNINGS` while Gymnasium compiles a model.

    MuJoCo prints compiler warnings from C (``WARNING: ...`` on stderr), so
    Python's warning filters cannot reach them; this installs MuJoCo's
    warning callback for the block, passes any other warning on (to the
    previous callback, or to stderr as MuJoCo would), and restores the
    previous callback. A no-op without MuJoCo.

    Example:
        >>> with mujoco_compiler_warnings_silenced():
        ...     pass
    """
    try:
        import mujoco
    except ImportError:
        yield
        return
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if str(message).startswith(KNOWN_MUJOCO_WARNINGS):
            return
        if previous is not None:
            previous(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


_MOVED = (
    "absolute_tracking_uri",
    "evaluate_command",
    "gather_summary",
    "local_artifact_path",
    "ui_hint",
)

# These read a finished MLflow run; they live in tracking.summary (which imports this module).
__getattr__ = moved_names(__name__, "torchrl_eaudeqn.tracking.summary", _MOVED)
