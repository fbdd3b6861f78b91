"""The MinAtar reference check's settings: the MinAtar paper's DQN, on all six actions.

The grid (``configs/study/minatar_reference_grid.yaml``) must give every cell
the settings of that paper's ``examples/dqn.py`` (docs/results.md lists them);
the env must offer the full action set when asked and the minimal one by default.
"""

from __future__ import annotations

import pathlib
import warnings

import pytest

from torchrl_eaudeqn import study
from torchrl_eaudeqn.config import MINATAR_GAMES, ControlConfig, load_config
from torchrl_eaudeqn.envs import make_task_env, make_task_gym_env

pytest.importorskip("minatar")

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRID = ROOT / "configs" / "study" / "minatar_reference_grid.yaml"


def _cell_config(cell: study.Cell) -> ControlConfig:
    argv = cell.argv("sqlite:///x.db", "e", "c")
    assert argv[:2] == ["--config", cell.config]
    overrides = [a for a in argv[2:] if not a.startswith(("tracking_uri", "checkpoint_dir"))]
    return load_config(ControlConfig, pathlib.Path(cell.config), overrides)


def test_every_cell_is_the_minatar_papers_dqn_on_its_game():
    cells = study.expand_grid(study.load_grid(GRID))
    assert len(cells) == 15
    assert {c.task for c in cells} == {f"minatar:{g}" for g in MINATAR_GAMES}
    assert {c.seed for c in cells} == {0, 1, 2}
    for cell in cells:
        cfg = _cell_config(cell)
        assert cfg.env == cell.task and cfg.method == "dqn" and cfg.members == 1
        assert (cfg.width, cfg.action_set, cfg.env_steps) == (128, "full", 1_000_000)
        assert (cfg.buffer_size, cfg.learning_starts, cfg.batch_size, cfg.train_freq) == (
            100_000, 5_000, 32, 1,
        )  # fmt: skip
        assert (cfg.target_period, cfg.gamma, cfg.loss_function) == (1000, 0.99, "smooth_l1")
        assert (cfg.eps_start, cfg.eps_end, cfg.eps_decay_steps) == (1.0, 0.1, 100_000)
        assert (cfg.optimizer, cfg.lr, cfg.rmsprop_alpha, cfg.rmsprop_eps) == (
            "rmsprop", 2.5e-4, 0.95, 0.01,
        )  # fmt: skip
        assert cfg.max_episode_steps == 0  # uncapped training episodes, as MinAtar


@pytest.mark.parametrize("action_set, n", [("minimal", 3), ("full", 6)])
def test_the_action_set_reaches_both_env_paths(action_set, n):
    cfg = ControlConfig(env="minatar:breakout", action_set=action_set)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        genv = make_task_gym_env(cfg)
    assert not [w for w in seen if "out of date" in str(w.message)]  # -v0 is chosen, not stale
    assert genv.action_space.n == n
    assert genv.spec.id.endswith("-v0" if action_set == "full" else "-v1")
    assert genv.unwrapped.game.sticky_action_prob == 0.1
    assert make_task_env(cfg, seed=0).action_spec.shape == (n,)


def test_the_minatar_grid_is_the_issues_design_with_one_budget():
    """5 games x {EauDeQN, PolyPruneQN 95%, DQN} x 3 widths x 3 seeds, >= 100 selections."""
    cells = study.expand_grid(study.load_grid(ROOT / "configs" / "study" / "minatar_grid.yaml"))
    assert len(cells) == 5 * 3 * 3 * 3
    assert {c.task for c in cells} == {f"minatar:{g}" for g in MINATAR_GAMES}
    assert {(c.width_name, c.width) for c in cells} == {("narrow", 32), ("paper", 128),
                                                       ("wide", 512)}  # fmt: skip
    budgets = set()
    for cell in cells:
        cfg = _cell_config(cell)
        assert (cfg.env, cfg.method, cfg.width) == (cell.task, cell.method, cell.width)
        budgets.add(cfg.env_steps)
        assert (cfg.env_steps - cfg.learning_starts) // cfg.target_period >= 100
        # The reference check's settings but the update ratio and the budget.
        assert (cfg.optimizer, cfg.loss_function, cfg.action_set, cfg.train_freq) == (
            "rmsprop", "smooth_l1", "full", 4,
        )  # fmt: skip
        if cell.method == "eaudeqn":
            assert (cfg.members, cfg.max_speed, cfg.speed_policy) == (5, 0.01, "grid")
            assert cfg.reset_optimizer
        else:
            assert cfg.members == 1
        if cell.method == "polyprune":
            assert cfg.final_sparsity == 0.95
            assert cfg.learning_starts < cfg.prune_start < cfg.prune_end < cfg.env_steps
    assert budgets == {500_000}
