"""The report's reading of the paper's claims: fixed rules on finished runs (pure logic)."""

from __future__ import annotations

import pytest

from torchrl_eaudeqn import study
from torchrl_eaudeqn.study import Cell, RunRecord, read_claims

WIDTHS = (("narrow", 32), ("paper", 128), ("wide", 512))
TASKS = ("a", "b")
SEEDS = (0, 1, 2)


def grid():
    return [
        Cell(t, m, n, w, s, "c.yaml")
        for t in TASKS
        for m in ("eaudeqn", "polyprune", "dqn")
        for n, w in WIDTHS
        for s in SEEDS
    ]


def runs(cells, score, sparsity):
    """One record per cell; ``score(cell)`` and ``sparsity(cell)`` give its results."""
    return [
        RunRecord(
            c.key, c.task, c.method, c.width_name, c.width, c.seed, 1000, score(c), 0.0, sparsity(c)
        )  # fmt: skip
        for c in cells
    ]


def paper_like(c):
    """EauDeQN sparser with width, at DQN's score; PolyPruneQN weak when narrow."""
    if c.method == "eaudeqn":
        return 10.0 + c.seed
    if c.method == "polyprune":
        return (4.0 if c.width == 32 else 10.0) + c.seed
    return 10.0 + c.seed


def sparsity_like(c):
    if c.method == "dqn":
        return 0.0
    if c.method == "polyprune":
        return 0.95
    return {32: 0.6, 128: 0.8, 512: 0.93}[c.width] + 0.01 * c.seed


def verdicts(records, cells):
    return [c.verdict for c in read_claims(
        records,
        study.interval_estimates(
            study.normalised_scores(records, study.task_bounds(records)), reps=50
        ),
        cells,
    )]  # fmt: skip


def test_a_complete_grid_that_shows_the_paper_reads_holds_four_times():
    cells = grid()
    claims = read_claims(
        recs := runs(cells, paper_like, sparsity_like),
        study.interval_estimates(study.normalised_scores(recs, study.task_bounds(recs)), reps=50),
        cells,
    )
    assert [c.verdict for c in claims] == ["holds"] * 4
    assert "a: narrow 0.610 (3), paper 0.810 (3), wide 0.940 (3)" in claims[0].evidence
    assert "ratio 1.00" in claims[2].evidence


@pytest.mark.parametrize(
    "change, claim",
    [
        # Task b's paper-width network is as sparse as its wide one.
        (lambda c, s: 0.95 if (c.task, c.method, c.width) == ("b", "eaudeqn", 128) else s, 0),
        # Wide EauDeQN stops at 89%.
        (lambda c, s: 0.89 if (c.method, c.width) == ("eaudeqn", 512) else s, 1),
    ],
)
def test_sparsity_claims_fail_on_the_runs_that_break_them(change, claim):
    cells = grid()
    recs = runs(cells, paper_like, lambda c: change(c, sparsity_like(c)))
    got = verdicts(recs, cells)
    assert got[claim] == "fails"
    assert got.count("fails") == 1


def test_score_claims_fail_on_the_runs_that_break_them():
    cells = grid()
    # EauDeQN at 90% of DQN's score at the paper width: outside the 5% margin.
    lower = runs(
        cells,
        lambda c: 9.0 + c.seed if (c.method, c.width) == ("eaudeqn", 128) else paper_like(c),
        sparsity_like,
    )
    assert verdicts(lower, cells) == ["holds", "holds", "fails", "holds"]
    # PolyPruneQN as good as EauDeQN when narrow.
    even = runs(cells, lambda c: 10.0 + c.seed, sparsity_like)
    assert verdicts(even, cells)[3] == "fails"


def test_a_missing_run_makes_the_claims_it_reads_unclear():
    cells = grid()
    recs = [
        r for r in runs(cells, paper_like, sparsity_like)
        if r.key != "b/eaudeqn/wide/seed2"
    ]  # fmt: skip
    claims = read_claims(
        recs,
        study.interval_estimates(study.normalised_scores(recs, study.task_bounds(recs)), reps=50),
        cells,
    )
    # Claim 4 reads only the narrow width, which is complete.
    assert [c.verdict for c in claims] == ["unclear", "unclear", "unclear", "holds"]
    assert "(incomplete)" in claims[0].evidence
    assert "5 of 6 runs" in claims[1].evidence


def test_grids_without_the_three_methods_have_no_claims():
    cells = [c for c in grid() if c.method != "polyprune"]
    assert read_claims(runs(cells, paper_like, sparsity_like), {}, cells) == []
