"""Result files per grid cell: written from MLflow, skipped by the runner, read back alone.

A real SQLite MLflow store with a run made through ``MlflowClient`` (what a
recipe logs, reduced to the keys the record reads); no recipe process starts
(``recipe="/nonexistent"`` would fail if one did).
"""

from __future__ import annotations

import json

import pytest
from scripts import load_script

from torchrl_eaudeqn import study

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CELL = study.Cell("minatar:breakout", "eaudeqn", "paper", 128, 2, "c.yaml")


def _finished_run(uri: str, cell: study.Cell, episodes: int = 250) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e") or client.create_experiment("e")
    exp_id = exp if isinstance(exp, str) else exp.experiment_id
    run = client.create_run(exp_id, tags={study.KEY_TAG: cell.key})
    rid = run.info.run_id
    params = {"env": cell.task, "method": cell.method, "width": "128", "seed": str(cell.seed),
              "env_steps": "3000"}  # fmt: skip
    for name, value in params.items():
        client.log_param(rid, name, value)
    metrics = [Metric("episode_return", float(i), 0, 10 * i) for i in range(episodes)]
    for u, (member, sparsity) in enumerate([(1, 0.1), (0, 0.1), (3, float("nan"))]):
        metrics += [
            Metric("target_update/selected", member, 0, 1000 * (u + 1)),
            Metric("target_update/selected_sparsity", sparsity, 0, 1000 * (u + 1)),
        ]
    metrics += [
        Metric("eval/return_mean", 7.5, 0, 3000),
        Metric("eval_random/return_mean", 0.5, 0, 0),
        Metric("sparsity/member_0", 0.4, 0, 3000),
    ]
    client.log_batch(rid, metrics=metrics)
    client.set_terminated(rid, "FINISHED")
    return rid


def test_a_finished_cell_gets_its_file_and_a_new_store_skips_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    rid = _finished_run(uri, CELL)
    out = tmp_path / "results"
    kw = dict(experiment="e", recipe="/nonexistent", log_dir=tmp_path / "logs", echo=print)
    assert study.run_grid([CELL], tracking_uri=uri, results_dir=out, **kw) == {
        "skipped": 1, "finished": 0, "failed": 0,
    }  # fmt: skip
    path = study.result_path(out, CELL)
    assert path.name == "minatar_breakout_eaudeqn_paper_seed2.json"
    record = json.loads(path.read_text())
    assert (record["key"], record["seed"], record["width"], record["mlflow_run_id"]) == (
        CELL.key, 2, 128, rid,
    )  # fmt: skip
    assert record["config"] == {"env": CELL.task, "method": "eaudeqn", "width": "128",
                                "seed": "2", "env_steps": "3000"}  # fmt: skip
    assert (record["final_score"], record["random_score"], record["final_sparsity"]) == (
        7.5, 0.5, 0.4,
    )  # fmt: skip
    assert (record["recipe"], record["env_steps"], record["critic_sparsity"]) == (
        "control", 3000, None,
    )  # NaN (no critic) is written as null, as JSON has no NaN  # fmt: skip
    assert record["target_updates"] == [[1000, 1, 0.1], [2000, 0, 0.1], [3000, 3, None]]
    curve = record["training_return"]
    assert curve[0] == [0, 0.0] and curve[-1] == [2490, sum(range(150, 250)) / 100]
    assert len(curve) == 126 and curve[1] == [20, 1.0]  # every 2nd of 250; mean of 0, 1, 2
    assert record["wall_s"] is not None and record["wall_s"] >= 0
    assert study.load_results(out) == [record]

    # Another machine: an empty store, the committed file. Nothing runs.
    fresh = f"sqlite:///{tmp_path / 'b.db'}"
    assert study.run_grid([CELL], tracking_uri=fresh, results_dir=out, **kw) == {
        "skipped": 1, "finished": 0, "failed": 0,
    }  # fmt: skip
    assert json.loads(path.read_text()) == record  # untouched


def test_a_file_that_names_another_cell_or_is_broken_is_refused(tmp_path):
    other = study.Cell("minatar:breakout", "dqn", "paper", 128, 2, "c.yaml")
    path = study.result_path(tmp_path, other)
    path.write_text(json.dumps({"version": study.RESULT_VERSION, "key": CELL.key}))
    with pytest.raises(ValueError, match="expected the result of cell"):
        study.has_result(tmp_path, other)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON result file"):
        study.load_results(tmp_path)
    path.write_text(json.dumps({"version": 99, "key": other.key}))
    with pytest.raises(ValueError, match="expected a result record of version 1"):
        study.load_results(tmp_path)


def test_the_cli_refuses_a_bad_cell_results_directory_before_any_work(tmp_path, capsys):
    main = load_script("recipes/study.py", "study_recipe_results").main
    not_dir = tmp_path / "file"
    not_dir.write_text("")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.json").write_text("[]")
    store = tmp_path / "s.db"
    for target, message in ((not_dir, "expected a directory"), (broken, "x.json: expected")):
        code = main(
            ["run", "--grid", str(ROOT / "configs/study/minatar_reference_grid.yaml"),
             "--tracking-uri", f"sqlite:///{store}", "--backend", "threads",
             "--cell-results", str(target), "--log-dir", str(tmp_path / "logs")]
        )  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not store.exists() and not (tmp_path / "logs").exists()
