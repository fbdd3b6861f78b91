"""The study's figures, from :class:`~torchrl_eaudeqn.study.aggregate.RunRecord` s.

Each ``plot_*`` writes one PNG (matplotlib's Agg backend, so no display is
needed): score curves (IQM with a 95% CI band) per width, sparsity curves per
task, final sparsity against width, and score against sparsity.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from .aggregate import RunRecord, binned_curve, method_label, normalise, stratified_bootstrap
from .grid import METHODS

__all__ = [
    "COLORS",
    "plot_score_curves",
    "plot_score_vs_sparsity",
    "plot_sparsity_curves",
    "plot_sparsity_vs_width",
    "width_names",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(n: int, panel_width: float):
    """A row of ``n`` panels; returns the figure and its axes (one row)."""
    fig, axes = _plt().subplots(1, n, figsize=(panel_width * n, 3.4), squeeze=False)
    return fig, axes[0]


def _save(fig, out: pathlib.Path, axes=None, ylabel: str = "", **legend) -> None:
    """Label the first panel, put the legend on the last, write the figure and free it."""
    if axes is not None:
        axes[0].set_ylabel(ylabel)
        axes[-1].legend(**legend)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _plt().close(fig)


COLORS = {
    "dqn": "tab:gray",
    "sac": "tab:gray",
    "eaudeqn": "tab:blue",
    "eaudesac": "tab:blue",
    "polyprune": "tab:orange",
}


def width_names(records: list[RunRecord]) -> list[str]:
    """Width names in table order: narrow, medium, wide, then any other alphabetically.

    Example:
        >>> def run(width_name):
        ...     return RunRecord("k", "T", "dqn", width_name, 8, 0, 10, 1.0, 0.0, 0.0)
        >>> width_names([run("wide"), run("x8"), run("narrow")])
        ['narrow', 'wide', 'x8']
    """
    order = {"narrow": 0, "medium": 1, "wide": 2}
    return sorted({r.width_name for r in records}, key=lambda w: (order.get(w, 9), w))


def _iqm_per_bin(x: np.ndarray, bins: int) -> np.ndarray:
    from rliable import metrics

    per_bin = x.reshape(x.shape[0], -1, bins).transpose(2, 0, 1)  # [bins, runs, tasks]
    return np.array([metrics.aggregate_iqm(c) for c in per_bin])


def plot_score_curves(records, bounds, out: pathlib.Path, reps: int) -> None:
    """Normalised training return over env steps per width, IQM with 95% CI band."""
    widths = width_names(records)
    bins = 15
    fig, axes = _panels(len(widths), 4.2)
    for ax, w in zip(axes, widths, strict=True):
        for method in METHODS:
            rs = [r for r in records if r.width_name == w and r.method == method]
            if not rs:
                continue
            tasks = sorted({r.task for r in rs})
            budget = max(r.env_steps for r in rs)
            frac = np.linspace(0, 1, bins + 1)
            # Curves of every task on one axis: fraction of each task's budget.
            per_task = []
            for t in tasks:
                trs = sorted((r for r in rs if r.task == t), key=lambda r: r.seed)
                per_task.append(
                    [
                        normalise(
                            np.nan_to_num(
                                binned_curve(r.returns, frac * (r.env_steps + 1)),
                                nan=bounds[t][0],
                            ),
                            bounds[t],
                        )
                        for r in trs
                    ]
                )
            n = min(len(x) for x in per_task)
            arr = np.stack([np.array(x[:n]) for x in per_task], axis=1)  # [runs, tasks, bins]
            # Columns are (task, bin) pairs: each bin's IQM resamples runs within tasks.
            point, ci = stratified_bootstrap(
                arr.reshape(n, -1), functools.partial(_iqm_per_bin, bins=bins), reps=reps
            )
            y, lo, hi = point, ci[0], ci[1]
            x = (frac[:-1] + frac[1:]) / 2 * budget
            ax.plot(x, y, color=COLORS[method], label=method_label(method, records))
            ax.fill_between(x, lo, hi, color=COLORS[method], alpha=0.2)
        ax.set_title(f"width: {w}")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    _save(fig, out, axes, "normalised training return (IQM)", loc="lower right", fontsize=8)


def plot_sparsity_curves(records, out: pathlib.Path) -> None:
    """Sparsity of the acting network over env steps, a panel per task, a colour per width."""
    tasks = sorted({r.task for r in records})
    widths = width_names(records)
    palette = ("tab:red", "tab:green", "tab:blue", "tab:purple", "tab:brown", "tab:olive")
    cmap = {w: palette[i % len(palette)] for i, w in enumerate(widths)}
    fig, axes = _panels(len(tasks), 4.5)
    for ax, t in zip(axes, tasks, strict=True):
        for method, style in (("eaudeqn", "-"), ("eaudesac", "-"), ("polyprune", ":")):
            for w in widths:
                rs = [r for r in records if (r.task, r.method, r.width_name) == (t, method, w)]
                if not rs:
                    continue
                edges = np.linspace(0, max(r.env_steps for r in rs) + 1, 31)
                curves = np.array([binned_curve(r.sparsity, edges) for r in rs])
                x = (edges[:-1] + edges[1:]) / 2
                mean = np.nanmean(curves, axis=0)
                label = f"{method_label(method, records).split()[0]} {w}"
                ax.plot(x, mean, style, color=cmap[w], label=label)
                if method in ("eaudeqn", "eaudesac"):
                    ax.fill_between(
                        x, np.nanmin(curves, 0), np.nanmax(curves, 0), color=cmap[w], alpha=0.15
                    )
        ax.set_title(t)
        ax.set_xlabel("env steps")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    _save(fig, out, axes, "sparsity of the acting network (actor)", loc="upper left", fontsize=7)


def plot_sparsity_vs_width(records, out: pathlib.Path) -> None:
    """Final sparsity against width (log scale), per task and method; dots are seeds."""
    tasks = sorted({r.task for r in records})
    fig, axes = _panels(len(tasks), 4.2)
    for ax, t in zip(axes, tasks, strict=True):
        for method in ("eaudeqn", "eaudesac", "polyprune"):
            rs = [r for r in records if r.task == t and r.method == method]
            if not rs:
                continue
            widths = sorted({r.width for r in rs})
            means = [np.mean([r.final_sparsity for r in rs if r.width == w]) for w in widths]
            label = method_label(method, records)
            ax.plot(widths, means, "o-", color=COLORS[method], label=label)
            ax.scatter(
                [r.width for r in rs], [r.final_sparsity for r in rs], color=COLORS[method],
                alpha=0.35, s=12,
            )  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_title(t)
        ax.set_xlabel("hidden width")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    _save(fig, out, axes, "final sparsity", loc="lower right", fontsize=8)


def plot_score_vs_sparsity(records, bounds, out: pathlib.Path) -> None:
    """Every run: final normalised score against final sparsity; marker size grows with width."""
    widths = width_names(records)
    size = {w: 15 + 25 * i for i, w in enumerate(widths)}
    fig, ax = _plt().subplots(figsize=(5.5, 4))
    for method in METHODS:
        rs = [r for r in records if r.method == method]
        if not rs:
            continue
        ax.scatter(
            [r.final_sparsity for r in rs],
            [normalise(r.final_score, bounds[r.task]) for r in rs],
            s=[size[r.width_name] for r in rs],
            color=COLORS[method],
            alpha=0.6,
            label=method_label(method, records),
        )
    ax.set_xlabel("final sparsity (marker size: width)")
    ax.set_ylabel("final normalised score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out)
