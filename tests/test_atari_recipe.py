"""Smoke test of recipes/atari_dqn.py on a real ALE game: MLflow, checkpoints, resume, registry."""

import os
import pathlib
import subprocess
import sys

import pytest
from scripts import run_dir

from torchrl_eaudeqn.checkpointing import latest_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = [sys.executable, str(ROOT / "recipes" / "atari_dqn.py")]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False"}


def _run(args, cwd, timeout=600):
    return subprocess.run(
        [*RECIPE, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _tiny(tmp_path, steps):
    return [
        "--config", str(ROOT / "configs" / "atari" / "quick.yaml"), "game=Breakout",
        f"env_steps={steps}", "learning_starts=100", "target_period=40", "buffer_size=2000",
        "eval_episodes=1", "eval_max_steps=100", "checkpoint_every=80", "log_every=50",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/ckpt",
        "progress_bar=false", "register_name=smoke-breakout", "threads=2",
    ]  # fmt: skip


def test_recipe_trains_logs_checkpoints_resumes_and_registers(tmp_path):
    from mlflow import MlflowClient

    first = _run(_tiny(tmp_path, 300), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("eaudeqn-atari").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["env"] == "Breakout" and run.data.params["num_members"] == "3"
    for key in (
        "td_loss/member_0",
        "sparsity/member_2",
        "selected_member",
        "steps_per_sec",
        "eval/score_mean",
        "epsilon",
        "sparsity/target",
    ):
        assert key in run.data.metrics, key
    assert "score_sparsity.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    # The paper's measure of learning (training-episode scores), first vs last tenth.
    assert "\ntraining          episode score first/last tenth of the steps" in first.stdout
    # One summary block ends the run (tests/test_console.py checks its fields), and
    # the known-harmless lines of Lightning's Trainer and checkpoints are not printed.
    assert first.stdout.splitlines()[-12] == "== EauDeQN on Breakout: done =="
    for noise in ("💡 Tip", "IterableDataset", "LeafSpec", "weights_only` was not set"):
        assert noise not in first.stdout + first.stderr, noise
    hist = client.get_metric_history(run.info.run_id, "episode_score")
    last = [m.value for m in hist if m.step > 270]
    if last:  # random Breakout episodes last ~180 steps: one may not end in the last 30
        got = run.data.metrics["train/episode_score_last_tenth"]
        assert got == pytest.approx(sum(last) / len(last))
    ckpt_dir = run_dir(tmp_path / "ckpt", "Breakout-eaudeqn-small-seed0")
    # every 80 env steps and at the end, the newest 3 kept, each with its checksum
    assert sorted(p.name for p in ckpt_dir.glob("step*.ckpt")) == [
        "step000000000160.ckpt", "step000000000240.ckpt", "step000000000300.ckpt",
    ]  # fmt: skip
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "step000000000300.ckpt"
    # ... and no other checkpoint anywhere (Lightning's default one went to ./checkpoints)
    assert not (tmp_path / "checkpoints").exists()

    version = client.get_model_version_by_alias("smoke-breakout", "final")
    tags = version.tags
    assert tags["method"] == "eaudeqn" and tags["env"] == "Breakout" and tags["seed"] == "0"
    assert 0.0 < float(tags["sparsity_prunable"]) < 1.0 and int(tags["env_steps"]) == 300
    assert tags["torchrl_eaudeqn.format"] == "compact"  # register_format default
    assert int(tags["artifact_bytes"]) > 0 and float(tags["latency_ms_b1"]) > 0
    assert float(tags["speedup_b32"]) > 0  # compact vs the same weights kept dense

    # Resume from the last checkpoint with a larger budget: same MLflow run, more steps.
    second = _run([*_tiny(tmp_path, 400), "--resume", "last"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "\nenv steps         400 (100 after resuming at 300) in " in second.stdout
    assert "resuming from a checkpoint that ended before" not in second.stderr
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "sparsity/member_0")]
    assert max(steps) >= 350 and len(steps) == len(set(steps))
    v2 = client.get_model_version_by_alias("smoke-breakout", "final")
    assert int(v2.version) == int(version.version) + 1 and v2.tags["env_steps"] == "400"

    # The registered agent loads and plays without the training code.
    play = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--model",
         "models:/smoke-breakout@final", "--game", "Breakout", "--episodes", "1",
         "--max-steps", "100", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert play.returncode == 0, play.stderr[-3000:]
    assert "score" in play.stdout.lower()


@pytest.mark.parametrize(
    "override,message",
    [
        ("game=Pongg", "Pongg"),
        ("width=huge", "width: expected small"),
        ("env_steps=-1", "env_steps: must be >= 1"),
        ("tracking_uri=http://127.0.0.1:1", "127.0.0.1:1"),
    ],
)
def test_bad_input_stops_before_work(tmp_path, override, message):
    out = _run([*_tiny(tmp_path, 100), override], tmp_path, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # 50-55 s on 2 cores: a second Atari training run only to be refused
def test_resume_rejects_checkpoint_of_another_config(tmp_path):
    first = _run(_tiny(tmp_path, 120), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = latest_checkpoint(run_dir(tmp_path / "ckpt", "Breakout-eaudeqn-small-seed0"))
    before = ckpt.read_bytes()
    out = _run([*_tiny(tmp_path, 200), "lr=0.001", "--resume", str(ckpt)], tmp_path, timeout=120)
    assert out.returncode == 2 and "another config (lr" in out.stderr
    missing = _run([*_tiny(tmp_path, 200), "--resume", str(tmp_path / "nope.ckpt")], tmp_path)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    assert ckpt.read_bytes() == before
