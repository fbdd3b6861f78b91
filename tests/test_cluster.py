"""Scale-out of the study grid: Ray backend, shared MLflow server, retries that resume.

The default run checks the pure logic (tracking-URI and backend checks, argument
errors, resume detection) without Ray. ``-m cluster`` (``nox -s cluster``) runs a
real grid on in-process Ray against a real ``mlflow server`` on loopback, with one
run's Ray worker SIGKILLed after its first checkpoint.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import pytest
from mlflow_server import MlflowServer, free_port
from scripts import load_script

from torchrl_eaudeqn import study
from torchrl_eaudeqn.checkpointing import AtomicCheckpointIO
from torchrl_eaudeqn.study import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_recipe():
    return load_script("recipes/study.py", "study_recipe")


# --------------------------------------------------------------------------- pure logic
@pytest.mark.parametrize(
    ("uri", "address", "refused"),
    [
        ("sqlite:///study.db", None, False),
        ("sqlite:///study.db", "local", False),
        ("sqlite:///study.db", "auto", True),
        ("sqlite:////abs/study.db", "10.0.0.1:6379", True),
        ("sqlite:///study.db", "ray://head:10001", True),
        ("file:///tmp/mlruns", "auto", True),
        ("./mlruns", "auto", True),
        ("http://127.0.0.1:5000", "auto", False),
        ("https://mlflow.example.org", "ray://head:10001", False),
        ("postgresql://u:p@db:5432/mlflow", "auto", False),
    ],
)
def test_local_stores_are_refused_only_with_a_cluster_address(uri, address, refused):
    if refused:
        with pytest.raises(ValueError, match="--tracking-uri") as err:
            cluster.check_cluster_tracking(uri, address)
        assert "\n" not in str(err.value) and "MLflow server" in str(err.value)
    else:
        cluster.check_cluster_tracking(uri, address)


def test_backend_resolution(monkeypatch):
    monkeypatch.setattr(cluster, "ray_available", lambda: False)
    assert cluster.resolve_backend("auto", None) == "threads"
    assert cluster.resolve_backend("threads", None) == "threads"
    with pytest.raises(ValueError, match=r"--backend ray: Ray is not installed"):
        cluster.resolve_backend("ray", None)
    with pytest.raises(ValueError, match=r"--address needs Ray"):
        cluster.resolve_backend("auto", "auto")
    monkeypatch.setattr(cluster, "ray_available", lambda: True)
    assert cluster.resolve_backend("auto", None) == "ray"
    assert cluster.resolve_backend("auto", "head:6379") == "ray"
    with pytest.raises(ValueError, match="--address needs --backend ray"):
        cluster.resolve_backend("threads", "auto")


GRID = """
experiment: {experiment}
seeds: [0, 1]
methods: [dqn, eaudeqn]
overrides: [env_steps={steps}, checkpoint_every=200, learning_starts=100, target_period=40,
            batch_size=16, eval_episodes=1, eval_random_baseline=false, log_every=100,
            buffer_size=1000, num_members=2]
tasks:
  CartPole-v1:
    config: {config}
    widths: {{narrow: 8}}
"""


def _grid(tmp_path: pathlib.Path, experiment: str = "cluster-test", steps: int = 600) -> str:
    path = tmp_path / "grid.yaml"
    config = ROOT / "configs/study/cartpole.yaml"
    path.write_text(GRID.format(experiment=experiment, steps=steps, config=config))
    return str(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cpus-per-run", "0"], "error: --cpus-per-run: expected a number > 0, got 0"),
        (["--gpus-per-run", "-1"], "error: --gpus-per-run: expected a number >= 0, got -1"),
        (["--workers", "0"], "error: --workers: expected an int >= 1, got 0"),
        (["--max-retries", "-1"], "error: --max-retries: expected an int >= 0, got -1"),
        (["--backend", "threads", "--address", "auto"], "error: --address needs --backend ray"),
        (["--backend", "threads", "--gpus-per-run", "1"], "error: --gpus-per-run needs"),
    ],
)
def test_bad_run_arguments_are_one_line_errors(tmp_path, capsys, extra, message):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rc = _load_recipe().main(["run", "--grid", _grid(tmp_path), "--tracking-uri", uri,
                              "--log-dir", str(tmp_path / "logs"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "m.db").exists()


def test_sqlite_with_a_cluster_address_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "ray_available", lambda: True)  # Ray need not be installed
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rc = _load_recipe().main(["run", "--grid", _grid(tmp_path), "--tracking-uri", uri,
                              "--address", "10.1.2.3:6379", "--log-dir",
                              str(tmp_path / "logs")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --tracking-uri {uri!r} is a local SQLite store")
    assert not (tmp_path / "logs").exists() and not (tmp_path / "m.db").exists()


def test_unreachable_tracking_server_exits_2_before_any_run(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    rc = _load_recipe().main(["run", "--grid", _grid(tmp_path), "--tracking-uri", uri,
                              "--backend", "threads", "--log-dir",
                              str(tmp_path / "logs")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: MLflow tracking URI {uri!r} is not reachable")
    assert time.perf_counter() - t0 < 10  # not MLflow's minutes of retries
    assert not (tmp_path / "logs").exists()


STUB = """
import pathlib, sys
pathlib.Path(sys.argv[0]).with_suffix(".argv").write_text("\\n".join(sys.argv[1:]))
sys.exit(0)
"""


def test_run_cell_resumes_from_the_cells_newest_checkpoint(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    cell = study.Cell("T", "dqn", "w", 8, 0, "c.yaml", ("env_steps=10",))
    kw = dict(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="e",
              checkpoint_dir=tmp_path / "ckpt", log_dir=tmp_path / "logs", recipe=stub,
              close_stale=False)  # fmt: skip
    r = study.run_cell(cell, **kw)
    argv = (tmp_path / "stub.argv").read_text().splitlines()
    cell_dir = study.cell_checkpoint_dir(tmp_path / "ckpt", cell)
    assert r.ok and r.resumed_from is None and "--resume" not in argv
    assert f"checkpoint_dir={cell_dir}" in argv and "threads=1" in argv
    # a verified checkpoint below the cell's directory (the recipe adds its run key)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"s": 1}, cell_dir / "T-dqn-w8-seed0/step100.ckpt")
    io.save_checkpoint({"s": 2}, cell_dir / "T-dqn-w8-seed0/step200.ckpt")
    (cell_dir / "T-dqn-w8-seed0/step300.ckpt").write_bytes(b"torn")  # fails verification
    r = study.run_cell(cell, threads=3, extra_overrides=("device=cuda",), **kw)
    argv = (tmp_path / "stub.argv").read_text().splitlines()
    assert r.resumed_from.endswith("step200.ckpt") and argv[-2:] == ["--resume", "last"]
    assert "threads=3" in argv and "device=cuda" in argv
    # another cell (other budget, same recipe run key) does not see that checkpoint
    other = study.Cell("T", "dqn", "w", 8, 0, "c.yaml", ("env_steps=20",))
    assert study.run_cell(other, **kw).resumed_from is None
    log = (tmp_path / "logs" / "T_dqn_w_seed0_env_steps=10.log").read_text()
    assert log.count("=== attempt") == 2 and "resume from" in log


def test_mark_stale_runs_closes_only_running_runs_of_the_key(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    running = client.create_run(exp, tags={study.KEY_TAG: "a/b"})
    done = client.create_run(exp, tags={study.KEY_TAG: "a/b"})
    client.set_terminated(done.info.run_id, "FINISHED")
    other = client.create_run(exp, tags={study.KEY_TAG: "a/c"})
    assert study.mark_stale_runs(uri, "e", "a/b") == 1
    status = {r: client.get_run(r.info.run_id).info.status for r in (running, done, other)}
    assert list(status.values()) == ["KILLED", "FINISHED", "RUNNING"]


# --------------------------------------------------------------------------- real cluster
@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback: SQLite backend, served artifacts under tmp_path."""
    server = MlflowServer(tmp_path).start()
    try:
        yield server.uri, server.artifacts
    finally:
        server.stop()


@pytest.fixture
def ray_cleanup():
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():  # the runner shuts down its own Ray; this covers a failed test
        ray.shutdown()


@pytest.mark.cluster
def test_ray_grid_with_mlflow_server_retries_a_killed_worker_and_resumes(
    tmp_path, monkeypatch, mlflow_server, ray_cleanup
):
    """2 methods x 2 seeds on in-process Ray against a real MLflow server.

    The first attempt of one run is SIGKILLed (recipe and Ray worker) right after
    its first checkpoint; Ray retries the task, the retry resumes the same MLflow
    run from the checkpoint. Then every cell has exactly one run, FINISHED, with its
    plot stored through the server, and a second invocation skips them all.
    """
    from mlflow import MlflowClient

    uri, artifacts = mlflow_server
    grid = _grid(tmp_path)
    cells = study.expand_grid(study.load_grid(grid))
    victim = next(c for c in cells if c.method == "eaudeqn" and c.seed == 0)
    monkeypatch.setenv(study.FAULT_ENV, victim.key)
    logs, ckpt = tmp_path / "logs", tmp_path / "ckpt"
    args = ["run", "--grid", grid, "--backend", "ray", "--tracking-uri", uri,
            "--workers", "2", "--cpus-per-run", "1", "--max-retries", "2",
            "--log-dir", str(logs), "--checkpoint-dir", str(ckpt)]  # fmt: skip
    t0 = time.perf_counter()
    rc = _load_recipe().main(args)
    wall = time.perf_counter() - t0
    runner_log = (logs / "runner.log").read_text()
    run_logs = {p.name: p.read_text() for p in logs.glob("*.log") if p.name != "runner.log"}
    detail = runner_log + "\n".join(f"--- {k}\n{v[-3000:]}" for k, v in run_logs.items())
    assert rc == 0, detail
    assert not ray_cleanup.is_initialized()  # the runner shut down the Ray it started
    print(f"grid of {len(cells)} runs on Ray: {wall:.0f} s wall")

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cluster-test")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    by_key: dict[str, list] = {}
    for r in runs:
        by_key.setdefault(r.data.tags[study.KEY_TAG], []).append(r)
    assert sorted(by_key) == sorted(c.key for c in cells), detail
    for key, rs in by_key.items():
        assert len(rs) == 1, (key, [r.info.status for r in rs])
        assert rs[0].info.status == "FINISHED", (key, rs[0].info.status)
        assert rs[0].data.params["env_steps"] == "600"
        # the plot went through the server into its artifact root
        assert [a.path for a in client.list_artifacts(rs[0].info.run_id)] == ["return_sparsity.png"]
    assert len(list(artifacts.rglob("return_sparsity.png"))) == len(cells)

    # The victim: killed once after its first checkpoint, retried by Ray in a new
    # worker process, resumed from that checkpoint into the same run.
    vlog = run_logs[f"{study._slug(victim.key)}.log"]
    attempts = [line for line in vlog.splitlines() if line.startswith("=== attempt")]
    assert len(attempts) == 2, vlog[-3000:]
    assert "fresh start" in attempts[0] and "resume from" in attempts[1]
    assert "step" in attempts[1] and ".ckpt" in attempts[1]
    pids = [a.split("(pid ")[1].split(")")[0] for a in attempts]
    assert pids[0] != pids[1]  # the first Ray worker died with its run
    assert "SIGKILL after the first checkpoint" in vlog
    assert (study.cell_checkpoint_dir(ckpt, victim) / ".fault-injected").exists()
    assert f"{victim.key}: ok (resumed from a checkpoint)" in runner_log
    vrun = by_key[victim.key][0]
    # metrics before and after the kill, each env step once (the resume skips flushed ones)
    hist = client.get_metric_history(vrun.info.run_id, "sparsity/member_0")
    steps = [m.step for m in hist]
    assert len(steps) == len(set(steps)) and max(steps) >= 500 and min(steps) <= 200
    assert vrun.data.tags.get("final_eval_return") is not None
    others = [n for n in run_logs if n != f"{study._slug(victim.key)}.log"]
    assert all(run_logs[n].count("=== attempt") == 1 for n in others)

    # again: everything is found FINISHED in MLflow and skipped, Ray is not even started
    rc = _load_recipe().main(args)
    assert rc == 0
    assert '{"skipped": 4, "finished": 0, "failed": 0}' in (logs / "runner.log").read_text()
    assert len(client.search_runs([exp.experiment_id], max_results=100)) == len(cells)


# --------------------------------------------------------------------------- Atari grid
def test_paper_atari_grid_is_450_runs_of_the_atari_recipe():
    from torchrl_eaudeqn import recipe
    from torchrl_eaudeqn.config import AtariConfig
    from torchrl_eaudeqn.envs import resolve_atari_game

    cells = study.expand_grid(study.load_grid(ROOT / "configs/study/atari.yaml"))
    assert len(cells) == 10 * 5 * 3 * 3 and len({c.key for c in cells}) == len(cells)
    assert {c.recipe for c in cells} == {"atari"} and {c.width for c in cells} == {32, 512, 2048}
    assert study.default_recipe("atari").is_file()
    assert {resolve_atari_game(g) for g in {c.task for c in cells}} == {c.task for c in cells}
    for c in cells[:: len(cells) // 20]:  # the recipe's own argument parser accepts the argv
        _, cfg = recipe.parse_args(AtariConfig, c.argv("sqlite:///x.db", "e", "ckpt"),
                                   default_config=None)  # fmt: skip
        assert (cfg.game, cfg.method, cfg.width, cfg.seed) == (c.task, c.method, str(c.width),
                                                               c.seed)  # fmt: skip
        assert cfg.env_steps == 10_000_000 and cfg.target_period == 8000
        assert cfg.tags[study.KEY_TAG] == c.key and cfg.checkpoint_every == 250_000


def test_bad_recipe_kind_in_a_grid_names_the_task(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("experiment: e\nseeds: [0]\nmethods: [dqn]\nrecipe: brax\n"
                    "tasks:\n  T: {config: c.yaml, widths: {w: 8}}\n")  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"task 'T': recipe 'brax' is not one of \['control', 'atari', 'mujoco'\]",
    ):
        study.load_grid(grid)


# --------------------------------------------------------------------------- MuJoCo grid
def test_mujoco_cell_argv_is_the_sac_recipes_command_line():
    from torchrl_eaudeqn import recipe
    from torchrl_eaudeqn.config import SACConfig

    cell = study.Cell("HalfCheetah-v5", "eaudesac", "narrow", 64, 0, "h.yaml", recipe="mujoco")
    argv = cell.argv("sqlite:///x.db", "e", "ckpt", threads=2, extra=["device=cpu"])
    assert argv == [
        "--config", "h.yaml", "env=HalfCheetah-v5", "method=eaudesac", "width=64", "seed=0",
        "tracking_uri=sqlite:///x.db", "experiment=e", "checkpoint_dir=ckpt",
        "progress_bar=false", "threads=2",
        "run_tags=study.key=HalfCheetah-v5/eaudesac/narrow/seed0,study.width_name=narrow",
        "device=cpu",
    ]  # fmt: skip
    assert study.default_recipe("mujoco").name == "mujoco_sac.py"
    # the grid's cells parse with the recipe's own parser, and tag their runs with the key
    cells = study.expand_grid(study.load_grid(ROOT / "configs/study/mujoco.yaml"))
    assert {(c.method, c.width) for c in cells} == {
        (m, w) for m in ("sac", "eaudesac", "polyprune") for w in (64, 256)
    }
    for c in cells:
        _, cfg = recipe.parse_args(SACConfig, c.argv("sqlite:///x.db", "e", "ckpt"),
                                   default_config=None)  # fmt: skip
        assert (cfg.env, cfg.method, cfg.width, cfg.seed) == (c.task, c.method, c.width, 0)
        assert cfg.tags[study.KEY_TAG] == c.key
        assert (cfg.tags["width"], cfg.tags["depth"]) == (str(c.width), "2")
        assert (cfg.env_steps, cfg.learning_starts, cfg.target_period) == (10000, 2000, 500)
        assert cfg.prune_end <= cfg.env_steps  # PolyPruneSAC reaches 95% inside the budget


def test_grid_methods_must_be_methods_of_the_tasks_recipe(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("experiment: e\nseeds: [0]\nmethods: [dqn, polyprune]\nrecipe: mujoco\n"
                    "tasks:\n  Hopper-v5: {config: c.yaml, widths: {w: 8}}\n")  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"task 'Hopper-v5': methods \['dqn'\] are not methods "
        r"of recipe 'mujoco' \(expected \['sac', 'eaudesac', 'polyprune'\]\)",
    ):
        study.load_grid(grid)  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"methods: \['eaudeqn'\] are not methods of task "
        r"'HalfCheetah-v5'",
    ):
        study.expand_grid(study.load_grid(ROOT / "configs/study/mujoco.yaml"),
                          methods=["eaudeqn"])  # fmt: skip


def test_collect_runs_reads_mujoco_runs(tmp_path):
    """Params, tags and metric keys as recipes/mujoco_sac.py logs them (SACConfig fields)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mujoco")
    for method, score, actor, critic in (("sac", 900.0, 0.0, 0.0),
                                         ("eaudesac", 700.0, 0.8, 0.6)):  # fmt: skip
        key = f"HalfCheetah-v5/{method}/narrow/seed0"
        run = client.create_run(exp, tags={study.KEY_TAG: key, "study.width_name": "narrow",
                                           "final_eval_return": f"{score:.6f}",
                                           "final_sparsity": f"{actor:.6f}",
                                           "final_critic_sparsity": f"{critic:.6f}"})  # fmt: skip
        rid = run.info.run_id
        for k, v in {"env": "HalfCheetah-v5", "method": method, "hidden": 64, "depth": 2,
                     "seed": 0, "env_steps": 10000}.items():  # fmt: skip
            client.log_param(rid, k, v)
        client.log_metric(rid, "eval_random/return_mean", -300.0, step=0)
        client.log_metric(rid, "episode_return", -100.0, step=1000)
        client.log_metric(rid, "sparsity/actor_selected", actor / 2, step=5000)
        client.log_metric(rid, "sparsity/critic_selected", critic / 2, step=5000)
        client.log_metric(rid, "selection/actor_sparsity", actor / 2, step=5000)
        client.set_terminated(rid, "FINISHED")
    sac, eau = sorted(study.collect_runs(uri, "mujoco"), key=lambda r: r.method != "sac")
    assert (eau.task, eau.method, eau.width_name, eau.width, eau.env_steps, eau.recipe) == (
        "HalfCheetah-v5", "eaudesac", "narrow", 64, 10000, "mujoco")  # fmt: skip
    assert (eau.final_score, eau.random_score) == (700.0, -300.0)
    assert (eau.final_sparsity, eau.critic_sparsity) == (0.8, 0.6)  # the tags, not the curves
    assert eau.returns == [(1000, -100.0)]
    assert eau.sparsity == [(5000, 0.4)] and eau.updates == [(5000, 0.4)]
    # dense SAC is the normalisation reference of a MuJoCo task
    assert study.task_bounds([sac, eau]) == {"HalfCheetah-v5": (-300.0, 900.0)}
    assert study.method_label("polyprune", [dataclasses.replace(eau, method="polyprune")]) == (
        "PolyPruneSAC (95%)")  # fmt: skip


def test_collect_runs_reads_atari_runs(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("atari")
    run = client.create_run(exp, tags={study.KEY_TAG: "Pong/eaudeqn/small/seed0",
                                       "study.width_name": "small", "final_sparsity": "0.8",
                                       "final_eval_return": "12.5"})  # fmt: skip
    rid = run.info.run_id
    for k, v in {"game": "Pong", "method": "eaudeqn", "width": 32, "seed": 0,
                 "env_steps": 1000}.items():  # fmt: skip
        client.log_param(rid, k, v)
    client.log_metric(rid, "eval_random/score_mean", -20.5, step=0)
    client.log_metric(rid, "episode_score", -3.0, step=500)
    client.set_terminated(rid, "FINISHED")
    (r,) = study.collect_runs(uri, "atari")
    assert (r.task, r.width, r.final_score, r.random_score) == ("Pong", 32, 12.5, -20.5)
    assert r.final_sparsity == 0.8 and r.returns == [(500, -3.0)]


@pytest.mark.slow
def test_grid_runner_drives_the_atari_recipe_and_resumes_a_killed_run(tmp_path, monkeypatch):
    """One tiny Atari cell through the thread backend: killed after its first checkpoint,
    resumed by the retry into the same run; collect_runs reads it back."""
    from mlflow import MlflowClient

    grid = tmp_path / "atari.yaml"
    grid.write_text(f"""
experiment: atari-tiny
recipe: atari
seeds: [0]
methods: [eaudeqn]
overrides: [env_steps=300, learning_starts=100, target_period=40, buffer_size=2000,
            eval_episodes=1, eval_max_steps=100, checkpoint_every=80, log_every=50,
            register_name=grid-breakout, eval_random_baseline=true]
tasks:
  Breakout:
    config: {ROOT / "configs/atari/quick.yaml"}
    widths: {{small: 32}}
""")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    (cell,) = study.expand_grid(study.load_grid(grid))
    monkeypatch.setenv(study.FAULT_ENV, cell.key)
    counts = study.run_grid([cell], tracking_uri=uri, experiment="atari-tiny", attempts=2,
                            threads=2, checkpoint_dir=str(tmp_path / "ckpt"),
                            log_dir=tmp_path / "logs", echo=print)  # fmt: skip
    log = (tmp_path / "logs" / f"{study._slug(cell.key)}.log").read_text()
    assert counts == {"skipped": 0, "finished": 1, "failed": 0}, log[-3000:]
    assert "SIGKILL after the first checkpoint" in log and "resume from" in log
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("atari-tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["env"] == "Breakout"
    (r,) = study.collect_runs(uri, "atari-tiny")
    assert (r.key, r.task, r.width, r.env_steps) == (cell.key, "Breakout", 32, 300)
    assert 0.0 < r.final_sparsity < 1.0 and r.random_score == r.random_score  # not NaN


RAY_STUB = """
import pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
runs = pathlib.Path(args["checkpoint_dir"]).parent / "attempts"
runs.mkdir(parents=True, exist_ok=True)
mine = runs / f"seed{args['seed']}"
n = len(mine.read_text()) if mine.exists() else 0
mine.write_text("x" * (n + 1))
if args["seed"] == "1":
    sys.exit(2)  # a rejected input: retrying cannot help
sys.exit(1 if n == 0 else 0)  # seed 0 fails once, then succeeds
"""


@pytest.mark.cluster
def test_ray_retries_failed_runs_but_not_rejected_ones(tmp_path, ray_cleanup):
    stub = tmp_path / "stub.py"
    stub.write_text(RAY_STUB)
    cells = [study.Cell("T", "dqn", "w", 8, seed, "c.yaml") for seed in (0, 1)]
    lines: list[str] = []
    counts = cluster.run_grid_ray(
        cells, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="e", workers=2,
        max_retries=2, recipe=stub, checkpoint_dir=tmp_path / "ckpt", log_dir=tmp_path / "logs",
        echo=lines.append,
    )  # fmt: skip
    assert counts == {"skipped": 0, "finished": 1, "failed": 1}, lines
    attempts = tmp_path / "ckpt" / "attempts"
    assert (attempts / "seed0").read_text() == "xx"  # failed once, retried by Ray
    assert (attempts / "seed1").read_text() == "x"  # exit 2: not retried
    assert any("T/dqn/w/seed1: FAILED, not retried" in line for line in lines), lines
    assert any("T/dqn/w/seed0: ok" in line for line in lines), lines
    assert not ray_cleanup.is_initialized()
