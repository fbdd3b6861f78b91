"""recipes/mujoco_sac.py on a real MuJoCo task: MLflow, checkpoints, resume, registry, evaluate.

Plus the SAC config and the bad inputs of both recipes (continuous task to the
DQN recipe, discrete to SAC, unknown id, bad tau, K < 1).
"""

import os
import pathlib
import subprocess
import sys

import pytest
from scripts import load_script, run_dir

from torchrl_eaudeqn.checkpointing import latest_checkpoint

pytest.importorskip("mujoco")

from torchrl_eaudeqn.config import ConfigError, SACConfig, config_diff, load_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "mujoco_sac.py"
CONFIGS = ROOT / "configs" / "mujoco"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False"}


def _run(args, cwd, script=RECIPE, timeout=600):
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tiny(tmp_path, steps):
    return [
        "--config", str(CONFIGS / "quick.yaml"), f"env_steps={steps}", "env=HalfCheetah-v5",
        "learning_starts=100", "selection_period=40", "buffer_size=2000", "batch_size=32",
        "hidden=32", "max_speed=0.3", "max_episode_steps=100", "eval_episodes=1",
        "eval_max_steps=50", "eval_every=0", "checkpoint_every=100", "log_every=50",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/ckpt",
        "progress_bar=false", "register_name=smoke-cheetah", "threads=2",
    ]  # fmt: skip


_load_script = load_script


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["eaudesac", "polyprune", "sac", "quick"])
def test_shipped_configs_load(name):
    cfg = load_config(SACConfig, CONFIGS / f"{name}.yaml")
    assert cfg.members == (cfg.num_members if cfg.method == "eaudesac" else 1)


def test_standard_sac_settings_are_the_eaudesac_config():
    cfg = load_config(SACConfig, CONFIGS / "eaudesac.yaml")
    assert (cfg.lr, cfg.batch_size, cfg.gamma, cfg.tau, cfg.buffer_size) == (
        3e-4, 256, 0.99, 0.005, 10**6,
    )  # fmt: skip
    assert cfg.hidden_sizes == (256, 256) and cfg.target_entropy_value == "auto"
    assert (cfg.train_freq, cfg.num_members, cfg.env) == (1, 5, "HalfCheetah-v5")
    poly = load_config(SACConfig, CONFIGS / "polyprune.yaml")
    assert config_diff(poly, cfg) == {"method": ("polyprune", "eaudesac")}
    assert poly.final_sparsity == 0.95
    assert load_config(SACConfig, CONFIGS / "sac.yaml").members == 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["tau=0"], r"tau: must be in \(0, 1\]"),
        (["tau=1.5"], r"tau: must be in \(0, 1\]"),
        (["num_members=0"], "num_members: must be >= 1"),
        (["method=eaudeqn"], "method: expected one of eaudesac"),
        (["hiden=64"], "did you mean 'hidden'"),
        (["target_entropy=high"], "target_entropy: expected auto or a number"),
        (["selection_period=3", "train_freq=2"], "target_period: must be a multiple"),
    ],
)
def test_bad_sac_config_values(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(SACConfig, CONFIGS / "eaudesac.yaml", overrides)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "recipe,override,message",
    [
        ("mujoco_sac", "env=CartPole-v1", "discrete actions; SAC needs continuous ones"),
        ("mujoco_sac", "env=ALE/Pong-v5", "Atari game with discrete actions; use the DQN recipe"),
        ("mujoco_sac", "env=HalfCheeta-v5", "did you mean 'HalfCheetah-v5'"),
        ("mujoco_sac", "tau=-0.1", "tau: must be in (0, 1]"),
        ("mujoco_sac", "num_members=0", "num_members: must be >= 1"),
        ("atari_dqn", "game=Hopper-v5", "continuous-control task: use the SAC recipe"),
    ],
)
def test_bad_input_stops_before_work(tmp_path, capsys, recipe, override, message):
    main = _load_script(ROOT / "recipes" / f"{recipe}.py", f"{recipe}_under_test").main
    store = [f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/ckpt"]
    with pytest.raises(SystemExit) as info:
        main([*store, override])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "mlflow.db").exists()


def test_resume_rejects_a_checkpoint_of_the_other_recipe(tmp_path, capsys):
    from torchrl_eaudeqn.checkpointing import AtomicCheckpointIO

    ckpt = tmp_path / "step1.ckpt"  # a valid (checksummed) checkpoint of an Atari config
    AtomicCheckpointIO().save_checkpoint(
        {"eaudeqn": {"config": {"game": "Pong", "width": "small"}}}, ckpt
    )
    main = _load_script(RECIPE, "mujoco_sac_resume").main
    code = main([f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", "--resume", str(ckpt)])
    assert code == 2 and "written by another recipe" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


# -------------------------------------------------------------------- smoke
def test_recipe_trains_logs_checkpoints_resumes_registers_and_plays(tmp_path, capsys):
    from mlflow import MlflowClient

    first = _run(_tiny(tmp_path, 300), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # MuJoCo's deprecation (printed per env built), TorchRL's storage line, Lightning's tip.
    for noise in ("settotalmass", "Initialized LazyTensorStorage", "💡 Tip", "IterableDataset"):
        assert noise not in first.stdout + first.stderr, noise
    block = first.stdout[first.stdout.index("== EauDeSAC on HalfCheetah-v5: done ==") :]
    assert "\nsparsity          actor " in block and "\n                  critic " in block
    assert "\nactor selections  5, won by a pruned member " in block
    assert "\ncritic selections 5, won by a pruned member " in block
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("eaudeqn-mujoco").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["env"] == "HalfCheetah-v5" and run.data.params["num_members"] == "3"
    for key in (
        "episode_return",
        "loss_actor/member_2",
        "loss_qvalue/member_0",
        "loss_alpha",
        "alpha",
        "sparsity/actor/member_1",
        "sparsity/critic/member_2",
        "sparsity/actor_selected",
        "selected/actor",
        "selected/critic",
        "selection/actor_sparsity",
        "steps_per_sec",
        "eval/return_mean",
    ):
        assert key in run.data.metrics, key
    assert "return_sparsity.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    ckpt_dir = run_dir(tmp_path / "ckpt", "HalfCheetah-v5-eaudesac-32x2-seed0")
    assert latest_checkpoint(ckpt_dir) is not None

    version = client.get_model_version_by_alias("smoke-cheetah", "final")
    tags = version.tags
    assert tags["method"] == "eaudesac" and tags["env"] == "HalfCheetah-v5"
    assert tags["torchrl_eaudeqn.kind"] == "sac_actor" and int(tags["env_steps"]) == 300
    assert tags["torchrl_eaudeqn.format"] == "compact"  # register_format default
    # 200 learning steps = 5 selections at speeds up to 0.3: the fast members
    # of both ensembles are pruned (the selected critic may well be the steady one).
    assert 0.0 < float(tags["sparsity_prunable"]) < 1.0
    assert 0.0 <= float(tags["critic_sparsity_prunable"]) < 1.0
    assert run.data.metrics["sparsity/critic/member_2"] > 0.0
    assert "sparsity.net.0.weight" in tags and "critic_sparsity.q1.0.weight" in tags

    # Resume with a larger budget: same MLflow run, more steps, a new model version.
    # register_format=both: the dense actor as the next version, the compact one beside it.
    second = _run([*_tiny(tmp_path, 400), "register_format=both", "--resume", "last"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "sparsity/actor_selected")]
    assert max(steps) >= 350 and len(steps) == len(set(steps))
    v2 = client.get_model_version_by_alias("smoke-cheetah", "final")
    assert int(v2.version) == int(version.version) + 1 and v2.tags["env_steps"] == "400"
    assert v2.tags["torchrl_eaudeqn.format"] == "dense"
    v2c = client.get_model_version_by_alias("smoke-cheetah-compact", "final")
    assert v2c.tags["torchrl_eaudeqn.format"] == "compact" and v2c.tags["env_steps"] == "400"

    # A fresh process without this package loads the actor: obs [B, 17] -> action [B, 6].
    load = subprocess.run(
        [sys.executable, "-c", (
            "import sys, mlflow, torch\n"
            f"mlflow.set_tracking_uri('sqlite:///{tmp_path}/mlflow.db')\n"
            "actor = mlflow.pytorch.load_model('models:/smoke-cheetah@final')\n"
            "small = mlflow.pytorch.load_model('models:/smoke-cheetah-compact@final')\n"
            "x = torch.randn(3, 17)\n"
            "a = actor(x)\n"
            "assert 'torchrl_eaudeqn' not in sys.modules\n"
            "same = torch.allclose(small(x), a, atol=1e-5)\n"
            "print(tuple(a.shape), float(a.abs().max()) <= 1.0, same)\n"
        )],
        cwd=tmp_path, env={**ENV, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert load.returncode == 0, load.stderr[-3000:]
    assert "(3, 6) True True" in load.stdout

    # recipes/evaluate.py plays the compact form; the task comes from the version's tags.
    play = _run(
        ["--model", "models:/smoke-cheetah-compact@final", "--episodes", "1", "--max-steps", "50",
         "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        tmp_path, script=ROOT / "recipes" / "evaluate.py", timeout=300,
    )  # fmt: skip
    assert play.returncode == 0, play.stderr[-3000:]
    assert "HalfCheetah-v5" in play.stdout and "return: mean" in play.stdout

    # ... and refuses a task with other observations, or an Atari game, on one line.
    evaluate = _load_script(ROOT / "recipes" / "evaluate.py", "evaluate_sac").main
    store = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    for extra, message in (
        (["--env", "Hopper-v5"], "does not take Hopper-v5's observations (11 values)"),
        (["--game", "Pong"], "is a SAC actor: give its task with --env"),
    ):
        assert evaluate(["--model", "models:/smoke-cheetah@final", *store, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err, err
