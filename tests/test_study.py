"""The reproduction study: grid, resumability against a real MLflow store, aggregation,
and the seeded regression reference."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import scipy.stats
from scripts import load_script

from torchrl_eaudeqn import study
from torchrl_eaudeqn.config import ConfigError, load_config
from torchrl_eaudeqn.control import ControlConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_recipe():
    return load_script("recipes/study.py", "study_recipe")


# --------------------------------------------------------------------------- grid
def test_default_grid_expands_seed_major_with_unique_keys():
    spec = study.load_grid(ROOT / "configs/study/default.yaml")
    cells = study.expand_grid(spec)
    n_widths = sum(len(t.widths) for t in spec.tasks.values())
    assert len(cells) == len(spec.seeds) * len(spec.methods) * n_widths
    assert len({c.key for c in cells}) == len(cells)
    # seed-major: a grid cut short holds whole seeds
    seeds = [c.seed for c in cells]
    assert seeds == sorted(seeds)
    full = study.expand_grid(study.load_grid(ROOT / "configs/study/full.yaml"), seeds=[0])
    assert {c.key for c in cells} <= {c.key for c in study.expand_grid(
        study.load_grid(ROOT / "configs/study/full.yaml"))}  # fmt: skip
    for c in cells + full:  # every cell's config loads and validates
        load_config(ControlConfig, c.config, [f"task={c.task}", f"width={c.width}"])


def test_grid_subsets_and_unknown_task():
    spec = study.load_grid(ROOT / "configs/study/default.yaml")
    cells = study.expand_grid(
        spec, seeds=[1], tasks=["CartPole-v1"], methods=["dqn"], widths=["wide"]
    )
    assert [c.key for c in cells] == ["CartPole-v1/dqn/wide/seed1"]
    with pytest.raises(ValueError, match="unknown tasks"):
        study.expand_grid(spec, tasks=["Pong"])
    full = study.load_grid(ROOT / "configs/study/full.yaml")
    assert len(study.expand_grid(full, tasks=["minatar:breakout"], seeds=[0])) == 9


def test_budget_overrides_change_the_key():
    a = study.Cell("T", "dqn", "w", 8, 0, "c.yaml")
    b = study.Cell("T", "dqn", "w", 8, 0, "c.yaml", ("env_steps=10",))
    assert a.key != b.key and "env_steps=10" in b.key


def test_run_tags_are_parsed_and_checked():
    cfg = ControlConfig(run_tags="study.key=a/b,x=1")
    assert cfg.tags["study.key"] == "a/b" and cfg.tags["x"] == "1"
    with pytest.raises(ConfigError, match="run_tags"):
        ControlConfig(run_tags="nokey")


STUB_RECIPE = """
import sys
from mlflow import MlflowClient
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
client = MlflowClient(args["tracking_uri"])
exp = client.get_experiment_by_name(args["experiment"]).experiment_id
tags = dict(t.split("=", 1) for t in args["run_tags"].split(","))
run = client.create_run(exp, tags=tags)
client.set_terminated(run.info.run_id, "FAILED" if args["seed"] == "1" else "FINISHED")
sys.exit(3 if args["seed"] == "1" else 0)
"""


def test_finished_cells_are_skipped_without_starting_a_process(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cells = [study.Cell("T", "dqn", "w", 8, seed, "c.yaml") for seed in (0, 1)]
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    for cell, status in zip(cells, ("FINISHED", "FAILED"), strict=True):
        run = client.create_run(exp, tags={study.KEY_TAG: cell.key})
        client.set_terminated(run.info.run_id, status)
    assert study.finished_keys(uri, "e") == {cells[0].key}
    counts = study.run_grid(cells[:1], tracking_uri=uri, experiment="e", recipe="/nonexistent",
                            log_dir=tmp_path / "logs", echo=lambda s: None)  # fmt: skip
    assert counts == {"skipped": 1, "finished": 0, "failed": 0}


@pytest.mark.slow
def test_run_grid_skips_finished_and_retries_failed_cells(tmp_path):
    """Skip and retry logic with two worker processes on a real SQLite store (stub recipe)."""
    stub = tmp_path / "stub.py"
    stub.write_text(STUB_RECIPE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cells = [study.Cell("T", "dqn", "w", 8, seed, "c.yaml") for seed in (0, 1)]
    kw = dict(tracking_uri=uri, experiment="e", recipe=stub, log_dir=tmp_path / "logs",
              echo=lambda s: None, attempts=2)  # fmt: skip
    assert study.run_grid(cells, workers=2, **kw) == {"skipped": 0, "finished": 1, "failed": 1}
    assert study.finished_keys(uri, "e") == {cells[0].key}  # FAILED runs do not count
    # again: the finished cell is skipped, the failed one runs (twice: one retry)
    assert study.run_grid(cells, workers=2, **kw) == {"skipped": 1, "finished": 0, "failed": 1}
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("e").experiment_id]
    )
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 4 + ["FINISHED"]


@pytest.mark.slow
def test_grid_runs_in_two_workers_and_skips_finished(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"""
experiment: tiny
seeds: [0]
methods: [dqn, eaudeqn]
overrides: [env_steps=240, learning_starts=100, target_period=40, batch_size=16,
            eval_episodes=1, log_every=100, buffer_size=1000, num_members=2]
tasks:
  CartPole-v1:
    config: {ROOT / "configs/study/cartpole.yaml"}
    widths: {{narrow: 8}}
"""
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cells = study.expand_grid(study.load_grid(grid))
    kw = dict(tracking_uri=uri, experiment="tiny", checkpoint_dir=str(tmp_path / "ckpt"),
              log_dir=tmp_path / "logs", echo=lambda s: None,
              results_dir=tmp_path / "results")  # fmt: skip
    counts = study.run_grid(cells, workers=2, **kw)
    logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert counts == {"skipped": 0, "finished": 2, "failed": 0}, logs
    assert study.finished_keys(uri, "tiny") == {c.key for c in cells}
    assert study.run_grid(cells, workers=2, **kw) == {"skipped": 2, "finished": 0, "failed": 0}
    records = study.collect_runs(uri, "tiny")
    assert {r.method for r in records} == {"dqn", "eaudeqn"}
    eau = next(r for r in records if r.method == "eaudeqn")
    assert eau.env_steps == 240 and eau.updates and 0.0 < eau.final_sparsity < 1.0
    assert np.isfinite(eau.random_score)
    # Each finished cell left its result file, readable without the store.
    files = {r["key"]: r for r in study.load_results(tmp_path / "results")}
    assert set(files) == {c.key for c in cells}
    eau_file = next(r for r in files.values() if r["method"] == "eaudeqn")
    assert eau_file["config"]["env_steps"] == "240" and eau_file["wall_s"] > 0
    assert len(eau_file["target_updates"]) == len(eau.updates)
    assert eau_file["final_sparsity"] == pytest.approx(eau.final_sparsity)
    assert eau_file["final_score"] == pytest.approx(eau.final_score) and eau_file["training_return"]
    assert all(0 <= member < 2 for _, member, _ in eau_file["target_updates"])


# --------------------------------------------------------------------------- aggregation
def _fake_runs(uri: str, finals: dict[tuple[str, str], list[float]], task: str = "T") -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name("synthetic")
    exp = found.experiment_id if found else client.create_experiment("synthetic")
    for (method, wname), scores in finals.items():
        for seed, score in enumerate(scores):
            key = f"{task}/{method}/{wname}/seed{seed}"
            run = client.create_run(exp, tags={study.KEY_TAG: key, "study.width_name": wname,
                                               "final_sparsity": "0.5"})  # fmt: skip
            rid = run.info.run_id
            params = {"task": task, "method": method, "width": 64 if wname == "wide" else 8,
                      "seed": seed, "env_steps": 100}  # fmt: skip
            for k, v in params.items():
                client.log_param(rid, k, v)
            client.log_metric(rid, "eval/return_mean", score, step=100)
            client.log_metric(rid, "eval_random/return_mean", 0.0, step=0)
            for step in (10, 60):
                client.log_metric(rid, "episode_return", score, step=step)
            client.set_terminated(rid, "FINISHED")
    failed = client.create_run(exp, tags={study.KEY_TAG: "T/dqn/wide/seed9"})
    client.set_terminated(failed.info.run_id, "FAILED")


def test_aggregation_on_synthetic_runs_matches_closed_form(tmp_path):
    uri = f"sqlite:///{tmp_path / 'agg.db'}"
    dqn = [10.0, 10.0, 10.0, 10.0]  # reference (dense, widest): normalised 1.0
    eau = [0.0, 4.0, 6.0, 100.0]  # IQM trims one run each side: mean(4, 6) / 10 = 0.5
    _fake_runs(uri, {("dqn", "wide"): dqn, ("eaudeqn", "wide"): eau})
    records = study.collect_runs(uri, "synthetic")
    assert len(records) == 8  # the FAILED run is not collected
    bounds = study.task_bounds(records)
    assert bounds == {"T": (0.0, 10.0)}
    scores = study.normalised_scores(records, bounds)
    np.testing.assert_allclose(scores[("eaudeqn", "wide")].ravel(), [0.0, 0.4, 0.6, 10.0])
    est = study.interval_estimates(scores, reps=500)
    assert est[("eaudeqn", "wide")]["iqm"] == pytest.approx(0.5)
    assert est[("eaudeqn", "wide")]["iqm"] == pytest.approx(
        scipy.stats.trim_mean([0.0, 0.4, 0.6, 10.0], 0.25)
    )
    assert est[("eaudeqn", "wide")]["mean"] == pytest.approx(2.75)
    assert est[("dqn", "wide")]["iqm_low"] == pytest.approx(1.0)  # no spread, no interval
    e = est[("eaudeqn", "wide")]
    assert e["iqm_low"] <= e["iqm"] <= e["iqm_high"]
    # constant training curves: the area equals the final level
    r = next(r for r in records if r.key == "T/eaudeqn/wide/seed1")
    assert study.area_under_curve(r, 0.0, bins=10) == pytest.approx(4.0)
    auc = study.normalised_scores(
        records, bounds, value=lambda r: study.area_under_curve(r, 0.0, bins=10)
    )
    np.testing.assert_allclose(auc[("eaudeqn", "wide")].ravel(), [0.0, 0.4, 0.6, 10.0])


def _report(tmp_path, uri: str, grid_text: str) -> str:
    """Run `study.py report` on a grid over the runs in `uri`; return tables.md (4 figures)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(grid_text)
    rc = _load_recipe().main(
        ["report", "--grid", str(grid), "--tracking-uri", uri, "--reps", "200",
         "--figures", str(tmp_path / "figs"), "--results", str(tmp_path / "res")]
    )  # fmt: skip
    assert rc == 0
    assert len(list((tmp_path / "figs").glob("*.png"))) == 4
    return (tmp_path / "res/tables.md").read_text()


def test_report_writes_tables_and_figures(tmp_path):
    uri = f"sqlite:///{tmp_path / 'agg.db'}"
    _fake_runs(uri, {("dqn", "wide"): [10, 9, 11], ("eaudeqn", "wide"): [8, 9, 10],
                     ("polyprune", "wide"): [5, 6, 7]})  # fmt: skip
    tables = _report(
        tmp_path,
        uri,
        "experiment: synthetic\nseeds: [0, 1, 2]\nmethods: [dqn, eaudeqn, polyprune]\n"
        "tasks:\n  T:\n    config: c.yaml\n    widths: {wide: 64}\n",
    )
    assert "EauDeQN" in tables and "PolyPruneQN" in tables
    summary = json.loads((tmp_path / "res/summary.json").read_text())
    assert summary["groups"]["dqn/wide"]["iqm"] == pytest.approx(1.0)


def test_report_reads_a_mujoco_grid(tmp_path):
    """A MuJoCo grid (recipe: mujoco) as recipes/mujoco_sac.py logs it: env/hidden params,
    final return and actor/critic sparsity tags; dense SAC is the reference."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mj.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mj")
    finals = {"sac": ([1000, 900], 0.0), "eaudesac": ([800, 700], 0.9),
              "polyprune": ([500, 400], 0.95)}  # fmt: skip
    for method, (scores, sparsity) in finals.items():
        for seed, score in enumerate(scores):
            tags = {
                study.KEY_TAG: f"HalfCheetah-v5/{method}/narrow/seed{seed}",
                "study.width_name": "narrow",
                "final_eval_return": str(score),
                "final_sparsity": str(sparsity),
                "final_critic_sparsity": str(sparsity / 2),
            }
            run = client.create_run(exp, tags=tags)
            rid = run.info.run_id
            for k, v in {"env": "HalfCheetah-v5", "method": method, "hidden": 64, "depth": 2,
                         "seed": seed, "env_steps": 100}.items():  # fmt: skip
                client.log_param(rid, k, v)
            client.log_metric(rid, "eval_random/return_mean", -50.0, step=0)
            client.log_metric(rid, "episode_return", float(score), step=50)
            client.log_metric(rid, "sparsity/actor_selected", sparsity, step=50)
            client.set_terminated(rid, "FINISHED")
    tables = _report(
        tmp_path,
        uri,
        "experiment: mj\nrecipe: mujoco\nseeds: [0, 1]\nmethods: [sac, eaudesac, polyprune]\n"
        "tasks:\n  HalfCheetah-v5:\n    config: c.yaml\n    widths: {narrow: 64}\n",
    )
    assert (
        "| HalfCheetah-v5 | EauDeSAC | narrow (64) | 2 | 750.0 +- 50.0 | 0.900 | 0.450 |" in tables
    )
    assert "SAC (dense)" in tables and "PolyPruneSAC (95%)" in tables
    summary = json.loads((tmp_path / "res/summary.json").read_text())
    assert summary["bounds"]["HalfCheetah-v5"] == [-50.0, 950.0]
    assert summary["groups"]["eaudesac/narrow"]["iqm"] == pytest.approx(800 / 1000)


# --------------------------------------------------------------------------- regression
@pytest.mark.parametrize("collector", ["lean", "torchrl"])
def test_seeded_regression_reference(collector):
    """A seeded CPU run reproduces the stored losses, selections and sparsities, on both paths.

    Regenerate after an intended change with
    ``python recipes/study.py regression --write --collector <lean|torchrl>``.
    """
    recipe = _load_recipe()
    path, overrides = recipe.REGRESSION_RUNS[collector]
    ref = json.loads(path.read_text())
    assert ref["overrides"] == overrides
    trace = recipe.regression_run(collector)
    assert trace["env_steps"] == ref["env_steps"]
    assert len(trace["updates"]) == len(ref["updates"])
    for got, want in zip(trace["updates"], ref["updates"], strict=True):
        assert got["env_step"] == want["env_step"]
        assert got["selected"] == want["selected"], (got, want)
        assert got["sparsity"] == want["sparsity"]
        np.testing.assert_allclose(got["loss_sums"], want["loss_sums"], rtol=1e-4)
    assert trace["final_sparsity"] == ref["final_sparsity"]


def test_report_from_the_result_files_alone_equals_the_mlflow_report(tmp_path):
    """The files `run --cell-results` leaves rebuild the report with no MLflow store."""
    uri = f"sqlite:///{tmp_path / 'agg.db'}"
    _fake_runs(uri, {("dqn", "wide"): [10, 9, 11], ("eaudeqn", "wide"): [8, 9, 10]})
    grid_text = (
        "experiment: synthetic\nseeds: [0, 1, 2]\nmethods: [dqn, eaudeqn]\n"
        "tasks:\n  T:\n    config: c.yaml\n    widths: {wide: 64}\n"
    )
    (tmp_path / "a").mkdir()
    from_mlflow = _report(tmp_path / "a", uri, grid_text)
    cells = study.expand_grid(study.load_grid(tmp_path / "a" / "grid.yaml"))
    files = tmp_path / "cells"
    done = study.run_grid(cells, tracking_uri=uri, experiment="synthetic", results_dir=files,
                          recipe="/nonexistent", log_dir=tmp_path / "logs", echo=print)  # fmt: skip
    assert done == {"skipped": 6, "finished": 0, "failed": 0}
    (tmp_path / "agg.db").unlink()  # nothing of MLflow left

    out = tmp_path / "b"
    out.mkdir()
    (out / "grid.yaml").write_text(grid_text)
    main = _load_recipe().main
    args = ["report", "--grid", str(out / "grid.yaml"), "--from-results", str(files),
            "--reps", "200", "--figures", str(out / "figs"),
            "--results", str(out / "res")]  # fmt: skip
    rc = main(args)
    assert rc == 0
    assert len(list((out / "figs").glob("*.png"))) == 4
    assert (out / "res/tables.md").read_text() == from_mlflow
    assert not (tmp_path / "agg.db").exists()


def test_report_on_a_growing_grid_leaves_out_tasks_without_a_dense_run(tmp_path, capsys):
    """Task U has EauDeQN runs and no DQN run yet: its scores cannot be normalised."""
    uri = f"sqlite:///{tmp_path / 'agg.db'}"
    _fake_runs(uri, {("dqn", "wide"): [10, 9, 11], ("eaudeqn", "wide"): [8, 9, 10]})
    _fake_runs(uri, {("eaudeqn", "wide"): [3, 4]}, task="U")
    grid = (
        "experiment: synthetic\nseeds: [0, 1, 2]\nmethods: [dqn, eaudeqn]\ntasks:\n"
        "  T:\n    config: c.yaml\n    widths: {wide: 64}\n"
        "  U:\n    config: c.yaml\n    widths: {wide: 64}\n"
    )
    tables = _report(tmp_path, uri, grid)
    assert "Not in the normalised scores yet (no dense-baseline run finished): U." in tables
    assert "| U | EauDeQN | wide (64) | 2 | 3.5 +- 0.5 |" in tables  # raw scores still listed
    assert "| EauDeQN | wide | 3 x 1 |" in tables  # the aggregate reads task T alone
    # Without any dense run there is nothing to normalise against: a clear error.
    only = tmp_path / "only"
    only.mkdir()
    uri2 = f"sqlite:///{only / 'agg.db'}"
    _fake_runs(uri2, {("eaudeqn", "wide"): [3, 4]}, task="U")
    (only / "grid.yaml").write_text(grid)
    rc = _load_recipe().main(
        ["report", "--grid", str(only / "grid.yaml"), "--tracking-uri", uri2,
         "--figures", str(only / "figs"), "--results", str(only / "res")]
    )  # fmt: skip
    assert rc == 2
    assert "no finished dense-baseline run (dqn or sac)" in capsys.readouterr().err


def test_report_from_results_refuses_a_missing_or_broken_directory(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("experiment: e\nseeds: [0]\nmethods: [dqn]\ntasks:\n  T:\n    config: c.yaml\n"
                    "    widths: {wide: 64}\n")  # fmt: skip
    main = _load_recipe().main
    base = ["report", "--grid", str(grid), "--figures", str(tmp_path / "f"),
            "--results", str(tmp_path / "r")]  # fmt: skip
    assert main([*base, "--from-results", str(tmp_path / "nope")]) == 2
    assert "--from-results" in capsys.readouterr().err
    bad = tmp_path / "cells"
    bad.mkdir()
    (bad / "x.json").write_text("{broken")
    assert main([*base, "--from-results", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "x.json" in err and "not a readable JSON result file" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "f").exists()
