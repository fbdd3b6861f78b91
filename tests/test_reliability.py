"""Fault injection with real processes (``nox -s reliability``; not in the default run).

SIGKILL at random points then ``--resume last`` (compared with an uninterrupted
run of the same seed), SIGTERM, a corrupted checkpoint, a NaN injected into a
batch, and a table of bad configs.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from scripts import run_dir

from torchrl_eaudeqn.checkpointing import latest_checkpoint
from torchrl_eaudeqn.config import AtariConfig, ConfigError, load_config

pytestmark = pytest.mark.reliability

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = [sys.executable, str(ROOT / "recipes" / "atari_dqn.py")]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False"}
RUN_KEY = "Breakout-eaudeqn-small-seed0"


def _args(tmp, steps=480):
    return [
        "--config", str(ROOT / "configs" / "atari" / "quick.yaml"), "game=Breakout",
        f"env_steps={steps}", "learning_starts=100", "target_period=40", "buffer_size=2000",
        "eval_episodes=1", "eval_max_steps=50", "checkpoint_every=40", "log_every=40",
        "keep_checkpoints=2", "checkpoint_replay=true", "eval_random_baseline=false",
        f"tracking_uri=sqlite:///{tmp}/mlflow.db", f"checkpoint_dir={tmp}/ckpt",
        "progress_bar=false", "register_name=rel-breakout", "register_format=dense",
        "threads=1",
    ]  # fmt: skip


def _ckpt_dir(tmp) -> pathlib.Path:
    """The run's checkpoint directory (a path that does not exist before the run made it)."""
    root = pathlib.Path(tmp) / "ckpt"
    return run_dir(root, RUN_KEY) if root.is_dir() and run_dir(root, RUN_KEY) else root / "none"


def _wait_for_checkpoint(tmp, proc, timeout=300.0):
    """Block until the run wrote its first checkpoint (training is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if latest_checkpoint(_ckpt_dir(tmp)) is not None:
            return
        time.sleep(0.2)
    raise AssertionError("the run wrote no checkpoint")


def _history(tmp):
    """Updater history and sparsities from the newest checkpoint."""
    path = latest_checkpoint(_ckpt_dir(tmp))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cb = next(v for k, v in ckpt["callbacks"].items() if "TargetSelection" in k)
    hist = [
        (h["step"], h.get("selected"), [round(x, 6) for x in h["loss_sums"]], h["sparsity"])
        for h in cb["history"]
    ]
    return ckpt["eaudeqn"]["env_steps"], hist


def _metric_steps(tmp, key="td_loss/member_0"):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("eaudeqn-atari")
    # A kill before the first checkpoint leaves nothing to resume: the rerun
    # is a new run, and the killed one stays behind (not FINISHED).
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.status != "RUNNING"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
    return run, steps


def _flushed_step(tmp) -> int:
    from mlflow import MlflowClient

    from torchrl_eaudeqn.lightning import FLUSHED_TAG

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("eaudeqn-atari")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return max((int(r.data.tags.get(FLUSHED_TAG, -1)) for r in runs), default=-1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    out = subprocess.run([*RECIPE, *_args(tmp)], cwd=tmp, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    run, steps = _metric_steps(tmp)
    return _history(tmp), sorted(steps)


def test_sigkill_at_random_points_then_resume_matches_uninterrupted_run(tmp_path, reference):
    (ref_steps, ref_hist), ref_metric_steps = reference
    rng = random.Random(0)
    report = []
    for trial in range(10):
        tmp = tmp_path / f"t{trial}"
        tmp.mkdir()
        proc = subprocess.Popen([*RECIPE, *_args(tmp)], cwd=tmp, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        # Kill at a random moment after training started (a kill during start-up
        # leaves nothing to resume, see _metric_steps).
        _wait_for_checkpoint(tmp, proc)
        time.sleep(rng.uniform(0.0, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = latest_checkpoint(_ckpt_dir(tmp))
        killed_at = torch.load(latest, weights_only=True)["eaudeqn"]["env_steps"] if latest else 0
        # Work lost to the kill: env steps the run had logged past its checkpoint.
        flushed = _flushed_step(tmp)
        args = [*_args(tmp)] + (["--resume", "last"] if latest else [])
        out = subprocess.run([*RECIPE, *args], cwd=tmp, env=ENV, capture_output=True, text=True)
        assert out.returncode == 0, (trial, out.stderr[-2000:])
        steps, hist = _history(tmp)
        assert steps == ref_steps
        # selections, loss sums (6 decimals) and sparsities per target update
        assert hist == ref_hist, trial
        run, metric_steps = _metric_steps(tmp)
        assert sorted(metric_steps) == ref_metric_steps  # no duplicate, no missing step
        report.append({"trial": trial, "checkpoint_env_steps": killed_at,
                       "steps_lost_at_least": max(0, flushed - killed_at)})  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    print("SIGKILL trials:", report)


def test_sigterm_stops_gracefully_and_resume_finishes(tmp_path):
    proc = subprocess.Popen([*RECIPE, *_args(tmp_path, steps=4000)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_checkpoint(tmp_path, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM at env step") and "--resume last" in last
    run, _ = _metric_steps(tmp_path)
    assert run.info.status == "KILLED"
    assert latest_checkpoint(_ckpt_dir(tmp_path)) is not None
    out = subprocess.run([*RECIPE, *_args(tmp_path, steps=600), "--resume", "last"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def _wait_for_new_checkpoints(tmp, proc, count, timeout=600.0):
    """Block until the run wrote ``count`` checkpoints newer than its newest now."""
    ckpt_dir = _ckpt_dir(tmp)
    start = latest_checkpoint(ckpt_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        newer = [p for p in ckpt_dir.glob("step*.ckpt") if start is None or p.name > start.name]
        if len(newer) >= count:
            return
        time.sleep(0.2)


def test_mlflow_server_outage_loses_no_metric(tmp_path, reference):
    """Kill the tracking server mid-run and bring it back; then let it be down at the end.

    Every env step is logged exactly once in both cases: the first run rides
    out the outage; the second stops with one line after training, and
    ``--resume last`` finishes the job once the server is back.
    """
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer

    _, ref_metric_steps = reference
    assert ref_metric_steps == list(range(120, 481, 40))  # learning from 100, a log every 40
    server = MlflowServer(tmp_path).start()
    # MLflow's HTTP client retries a failed call for minutes by default; with no
    # retries every flush during the outage fails fast and is kept for later.
    env = {**ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def args(steps):
        return [a if not a.startswith("tracking_uri=") else f"tracking_uri={server.uri}"
                for a in _args(tmp_path, steps=steps)]  # fmt: skip

    def logged_steps():
        client = MlflowClient(server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("eaudeqn-atari").experiment_id])
        history = client.get_metric_history(run.info.run_id, "td_loss/member_0")
        return run, sorted(m.step for m in history)

    try:
        # 1. Down for two checkpoints in the middle of a 960-step run.
        proc = subprocess.Popen([*RECIPE, *args(960)], cwd=tmp_path, env=env, **pipes)
        _wait_for_checkpoint(tmp_path, proc)
        server.stop(signal.SIGKILL)
        _wait_for_new_checkpoints(tmp_path, proc, 2)
        assert proc.poll() is None, "the run ended before the server came back"
        server.start()
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
        assert "warning: MLflow store unreachable" in err and "MLflow store back" in err
        run, steps = logged_steps()
        assert run.info.status == "FINISHED"
        assert steps == list(range(120, 961, 40))  # no duplicate, no missing step

        # 2. Down at the end of a continuation: one line, nothing lost, resume finishes.
        proc = subprocess.Popen([*RECIPE, *args(1200), "--resume", "last"], cwd=tmp_path,
                                env=env, **pipes)  # fmt: skip
        _wait_for_new_checkpoints(tmp_path, proc, 1)
        server.stop(signal.SIGKILL)
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 1, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert (
            last.startswith("error: MLflow store failed after training") and "--resume last" in last
        )
        server.start()
        out = subprocess.run([*RECIPE, *args(1200), "--resume", "last"], cwd=tmp_path, env=env,
                             **pipes)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        run, steps = logged_steps()
        assert run.info.status == "FINISHED"
        assert steps == list(range(120, 1201, 40))
        version = MlflowClient(server.uri).get_model_version_by_alias("rel-breakout", "final")
        assert version.tags["env_steps"] == "1200"
    finally:
        server.stop()


def test_corrupted_checkpoint_is_refused_and_older_one_used(tmp_path):
    out = subprocess.run([*RECIPE, *_args(tmp_path, steps=200)], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    ckpt_dir = _ckpt_dir(tmp_path)
    newest = latest_checkpoint(ckpt_dir)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    bad = subprocess.run([*RECIPE, *_args(tmp_path, steps=240), "--resume", str(newest)],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "is corrupt" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert latest_checkpoint(ckpt_dir) != newest  # --resume last falls back to the older one
    good = subprocess.run([*RECIPE, *_args(tmp_path, steps=240), "--resume", "last"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert good.returncode == 0, good.stderr[-2000:]


def test_nan_in_a_batch_stops_before_the_step_with_last_good_checkpoint(tmp_path):
    import lightning as L

    from torchrl_eaudeqn.envs import make_atari_env
    from torchrl_eaudeqn.lightning import DQNLightningModule, TargetSelectionCallback
    from torchrl_eaudeqn.recipe import make_trainer
    from torchrl_eaudeqn.reliability import NonFiniteError

    cfg = load_config(AtariConfig, ROOT / "configs" / "atari" / "quick.yaml",
                      [a for a in _args(tmp_path, steps=400)[2:] if "=" in a])  # fmt: skip
    module = DQNLightningModule(cfg, lambda seed, num_envs, eval: make_atari_env("Breakout"))
    sample = module.replay.sample
    calls = {"n": 0}

    def poisoned(n):
        batch = sample(n)
        calls["n"] += 1
        if calls["n"] == 30:
            batch["next", "reward"][0] = float("nan")
            poisoned.before = {k: v.clone() for k, v in module.actor.flat_params().items()}
        return batch

    module.replay.sample = poisoned
    L.seed_everything(0)
    trainer = make_trainer(cfg, [TargetSelectionCallback(module.updater)], tmp_path / "c")
    with pytest.raises(NonFiniteError, match=r"member .* at env step \d+"):
        trainer.fit(module)
    for k, v in module.actor.flat_params().items():
        assert torch.equal(v, poisoned.before[k]), k  # the bad step was not taken
    saved = torch.load(latest_checkpoint(tmp_path / "c"), weights_only=True)
    assert saved["eaudeqn"]["env_steps"] == module.env_steps


BAD_CONFIGS = [
    ("widht=small", "widht: unknown config key"),
    ("width=huge", "width: expected"),
    ("width=-3", "width: expected"),
    ("method=sac", "method: expected one of"),
    ("env_steps=-5", "env_steps: must be >= 1"),
    ("env_steps=ten", "env_steps: expected an integer"),
    ("num_members=0", "num_members: must be >= 1"),
    ("max_speed=1.5", "max_speed: must be <= 1"),
    ("lr=-1", "lr: must be >= 0"),
    ("batch_size=0", "batch_size: must be >= 1"),
    ("buffer_size=0", "buffer_size: must be >= 1"),
    ("gamma=1.2", "gamma: must be <= 1"),
    ("eps_start=2", "eps_start: must be <= 1"),
    ("sticky_actions=-0.1", "sticky_actions: must be >= 0"),
    ("frame_skip=0", "frame_skip: must be >= 1"),
    ("train_freq=0", "train_freq: must be >= 1"),
    ("target_period=0", "target_period: must be >= 1"),
    ("collector=fast", "collector: expected one of lean | torchrl"),
    ("overlap=maybe", "overlap: expected one of auto | true | false"),
    ("keep_checkpoints=0", "keep_checkpoints: must be >= 1"),
    ("checkpoint_replay=perhaps", "checkpoint_replay: expected true or false"),
    ("register_format=onnx", "register_format: expected one of dense | compact | both"),
    ("use_vmap=sometimes", "use_vmap: expected one of"),
    ("device=tpu", "device: expected one of"),
    ("loss_function=l3", "loss_function: expected one of"),
    ("prune_start=9000000", "prune_end: must be greater than prune_start"),
]


@pytest.mark.parametrize("override, message", BAD_CONFIGS)
def test_bad_config_table(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(AtariConfig, ROOT / "configs" / "atari" / "eaudeqn.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)
