"""The paper's claims read off a study's runs: holds, fails, or unclear, with the numbers.

The study report (``recipes/study.py report``) ends with these readings so
that a grid that grows session by session is read the same way each time,
by rules fixed before the results came in:

1. *Sparsity rises with width*: in every task, EauDeQN's mean final sparsity
   strictly increases from each width to the next wider one.
2. *High sparsity at the widest width*: EauDeQN's mean final sparsity at the
   widest width is at least 90% in every task.
3. *Performance kept*: at every width but the narrowest, EauDeQN's IQM of
   normalised scores is at least 95% of dense DQN's (or above).
4. *PolyPruneQN's fixed sparsity costs more where the network is small*: at
   the narrowest width PolyPruneQN's IQM falls below EauDeQN's.

A claim is ``unclear`` until every run it reads (every seed of every task of
the grid, for the methods and widths concerned) has finished; the evidence
then says what the runs so far show. Verdicts come from point estimates;
the evidence gives the 95% stratified-bootstrap intervals beside them, and
says when they overlap.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .aggregate import RunRecord

__all__ = ["Claim", "claims_markdown", "read_claims"]

HOLDS, FAILS, UNCLEAR = "holds", "fails", "unclear"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim's reading.

    Example:
        >>> Claim("c", "unclear", "2 of 5 tasks").line()
        '| c | unclear | 2 of 5 tasks |'
    """

    claim: str
    verdict: str
    evidence: str

    def line(self) -> str:
        """The claim as a Markdown table row."""
        return f"| {self.claim} | {self.verdict} | {self.evidence} |"


def _widths(cells: Sequence[Any]) -> list[tuple[str, int]]:
    """The grid's ``(width name, width)`` pairs, narrowest first."""
    return sorted({(c.width_name, int(c.width)) for c in cells}, key=lambda w: (w[1], w[0]))


def _wanted(cells: Sequence[Any], **match: Any) -> set[str]:
    """Keys of the grid cells whose attributes match (a tuple value: any of its items)."""
    match = {k: v if isinstance(v, tuple) else (v,) for k, v in match.items()}
    return {c.key for c in cells if all(getattr(c, k) in v for k, v in match.items())}


def _complete(records: Sequence[RunRecord], cells: Sequence[Any], **match: Any) -> bool:
    """Whether every grid cell matching ``match`` has a finished run."""
    want = _wanted(cells, **match)
    return bool(want) and want <= {r.key for r in records}


def _sparsity(records: Sequence[RunRecord], task: str, width_name: str) -> list[float]:
    return [
        r.final_sparsity
        for r in records
        if (r.task, r.method, r.width_name) == (task, "eaudeqn", width_name)
    ]


def _fmt_iqm(e: dict[str, float]) -> str:
    return f"{e['iqm']:.3f} [{e['iqm_low']:.3f}, {e['iqm_high']:.3f}]"


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["iqm_low"] <= b["iqm_high"] and b["iqm_low"] <= a["iqm_high"]


def _verdict(ok: bool, complete: bool) -> str:
    return (HOLDS if ok else FAILS) if complete else UNCLEAR


def _progress(records: Sequence[RunRecord], cells: Sequence[Any], **match: Any) -> str:
    want = _wanted(cells, **match)
    return f"{len(want & {r.key for r in records})} of {len(want)} runs"


def read_claims(
    records: Sequence[RunRecord],
    estimates: dict[tuple[str, str], dict[str, float]],
    cells: Sequence[Any],
) -> list[Claim]:
    """Read the four claims (module docstring) off ``records``.

    Args:
        records: the finished runs.
        estimates: :func:`~torchrl_eaudeqn.study.interval_estimates` of their
            normalised scores, keyed ``(method, width name)``.
        cells: the grid's cells (:func:`~torchrl_eaudeqn.study.expand_grid`):
            what a complete reading needs.

    Returns:
        One :class:`Claim` per claim, in the module docstring's order; none
        unless the grid runs EauDeQN, PolyPruneQN and DQN.

    Example:
        >>> from torchrl_eaudeqn.study import Cell
        >>> cells = [Cell("T", m, n, w, 0, "c.yaml") for m in ("eaudeqn", "polyprune", "dqn")
        ...          for n, w in (("a", 8), ("b", 64))]
        >>> recs = [RunRecord(c.key, "T", "eaudeqn", c.width_name, c.width, 0, 1, 1.0, 0.0, s)
        ...         for c, s in zip(cells[:2], (0.5, 0.95))]
        >>> [c.verdict for c in read_claims(recs, {}, cells)]
        ['holds', 'holds', 'unclear', 'unclear']
    """
    if not {"eaudeqn", "polyprune", "dqn"} <= {c.method for c in cells}:
        return []
    widths = _widths(cells)
    names = [n for n, _ in widths]
    tasks = sorted({c.task for c in cells})
    out: list[Claim] = []

    # 1. Sparsity rises with width, task by task.
    parts, complete, ok = [], True, True
    for t in tasks:
        means = {n: _sparsity(records, t, n) for n in names}
        shown = ", ".join(
            f"{n} {np.mean(v):.3f} ({len(v)})" if v else f"{n} -" for n, v in means.items()
        )
        done = _complete(records, cells, task=t, method="eaudeqn")
        complete &= done
        rising = all(means[n] for n in names) and all(
            np.mean(means[a]) < np.mean(means[b]) for a, b in itertools.pairwise(names)
        )
        if done:
            ok &= rising
        parts.append(f"{t}: {shown}" + ("" if done else " (incomplete)"))
    out.append(
        Claim(
            "EauDeQN's final sparsity rises with width in every task",
            _verdict(ok, complete),
            "mean final sparsity (runs) by width: " + "; ".join(parts),
        )
    )

    # 2. At least 90% at the widest width.
    wide = names[-1]
    vals = {t: _sparsity(records, t, wide) for t in tasks}
    done = _complete(records, cells, method="eaudeqn", width_name=wide)
    ok = all(v and np.mean(v) >= 0.9 for v in vals.values())
    shown = "; ".join(
        f"{t} {np.mean(v):.3f} ({len(v)})" if v else f"{t} -" for t, v in vals.items()
    )
    out.append(
        Claim(
            f"EauDeQN's final sparsity at the widest width ({wide}) is at least 90%",
            _verdict(ok, done),
            f"mean final sparsity (runs): {shown}; "
            + _progress(records, cells, method="eaudeqn", width_name=wide),
        )
    )

    # 3. EauDeQN within 5% of dense DQN's IQM at every width but the narrowest.
    parts, complete, ok = [], True, True
    for n in names[1:]:
        e, d = estimates.get(("eaudeqn", n)), estimates.get(("dqn", n))
        done = _complete(records, cells, method=("eaudeqn", "dqn"), width_name=n)
        complete &= done
        if e is None or d is None:
            ok = False
            parts.append(f"{n}: no runs of both")
            continue
        ratio = e["iqm"] / d["iqm"] if d["iqm"] > 0 else float("nan")
        ok &= bool(ratio >= 0.95)
        parts.append(
            f"{n}: EauDeQN {_fmt_iqm(e)} vs DQN {_fmt_iqm(d)}, ratio {ratio:.2f}"
            + (", intervals overlap" if _overlap(e, d) else "")
            + ("" if done else " (incomplete)")
        )
    out.append(
        Claim(
            "EauDeQN's IQM is within 5% of dense DQN's (or above) at the "
            + " and ".join(names[1:])
            + " widths",
            _verdict(ok, complete),
            "IQM of normalised scores [95% CI]: " + "; ".join(parts),
        )
    )

    # 4. PolyPruneQN below EauDeQN at the narrowest width.
    narrow = names[0]
    pair = ("eaudeqn", "polyprune")
    e, p = estimates.get(("eaudeqn", narrow)), estimates.get(("polyprune", narrow))
    done = _complete(records, cells, method=pair, width_name=narrow)
    if e is None or p is None:
        verdict, evidence = _verdict(False, done), "no runs of both"
    else:
        verdict = _verdict(p["iqm"] < e["iqm"], done)
        evidence = (
            f"IQM of normalised scores [95% CI]: PolyPruneQN {_fmt_iqm(p)} vs EauDeQN "
            f"{_fmt_iqm(e)}"
            + (", intervals overlap" if _overlap(e, p) else "")
            + "; "
            + _progress(records, cells, method=pair, width_name=narrow)
        )
    out.append(
        Claim(
            f"PolyPruneQN (95%) falls below EauDeQN at the narrowest width ({narrow})",
            verdict,
            evidence,
        )
    )
    return out


def claims_markdown(claims: Sequence[Claim]) -> list[str]:
    """The readings as a Markdown table (lines).

    Example:
        >>> claims_markdown([Claim("c", "holds", "e")])[-1]
        '| c | holds | e |'
    """
    return ["| claim | reading | evidence |", "|---|---|---|", *(c.line() for c in claims)]
