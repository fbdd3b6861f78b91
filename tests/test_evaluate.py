"""recipes/evaluate.py: play a registered agent, report scores and sparsity, fail cleanly."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts import load_script

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("ale_py")

from torchrl_eaudeqn.modules import nature_cnn  # noqa: E402
from torchrl_eaudeqn.registry import network_sparsity_tags, register_network  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "evaluate.py"
MODEL = "models:/pong-eval@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A random small Q-network for Pong (6 actions) with a few weights zeroed."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("eval", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(exp)
    torch.manual_seed(0)
    net = nature_cnn(6, "small")
    with torch.no_grad():
        net[8].weight[:8].zero_()
    register_network(
        net,
        name="pong-eval",
        example_input=torch.zeros(1, 4, 84, 84, dtype=torch.uint8),
        tags={"game": "Pong", "method": "random"},
        alias="champion",
        tracking_uri=uri,
        run_id=run.info.run_id,
    )
    return {"root": root, "uri": uri, "tags": network_sparsity_tags(net)}


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_line(stderr: str) -> str:
    # The ALE prints a banner on stderr; the script's error is the last line.
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    return lines[-1]


@pytest.fixture(scope="module")
def evaluate_module():
    return load_script(SCRIPT, "evaluate_recipe")


def test_one_short_episode_with_video(store, tmp_path):
    video = tmp_path / "episode.gif"
    proc = run_script(
        "--model", MODEL, "--game", "Pong", "--episodes", "1", "--max-steps", "200",
        "--tracking-uri", store["uri"], "--video", str(video), "--seed", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    episode = re.search(r"episode 1/1: score (-?\d+(?:\.\d+)?) in (\d+) steps", out)
    assert episode is not None, out
    assert int(episode.group(2)) <= 200
    score = float(episode.group(1))
    assert -21 <= score <= 21
    mean = re.search(r"score: mean (-?\d+\.\d\d) std (\d+\.\d\d) over 1 episodes", out)
    assert mean is not None, out
    assert float(mean.group(1)) == pytest.approx(score) and float(mean.group(2)) == 0.0
    tags = store["tags"]
    assert f"sparsity: overall {tags['sparsity_overall']:.4f}, prunable " in out
    assert f"params: {tags['nonzero_params']} nonzero / {tags['total_params']} total" in out
    assert "8.weight 0.2500" in out  # 8 of 32 rows of the hidden layer zeroed
    assert "game=Pong" in out and "method=random" in out
    assert "version 1" in out
    import imageio.v3 as iio

    # The reset frame, then one per step (the GIF writer merges identical neighbours).
    n_frames = int(episode.group(2)) + 1
    assert f"({n_frames} frames of episode 1 from the emulator's RGB screen)" in out
    frames = iio.imread(video, index=None)
    assert 1 < frames.shape[0] <= n_frames
    assert frames.shape[1:] == (210, 160, 3)
    assert not (tmp_path / "mlflow.db").exists()  # the default store was never touched


def test_missing_model_exits_2(store, tmp_path):
    proc = run_script(
        "--model", "models:/no-such-model@champion", "--game", "Pong", "--episodes", "1",
        "--tracking-uri", store["uri"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert line.startswith("evaluate.py: error:") and "no-such-model" in line
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2(evaluate_module, store, capsys):
    main = evaluate_module.main
    base = ["--model", MODEL, "--tracking-uri", store["uri"]]
    for argv, words in [
        ([*base, "--game", "Pong", "--episodes", "0"], "--episodes: must be >= 1"),
        ([*base, "--game", "Pong", "--video", "x.avi"], "--video: must end with"),
        (["--model", "pong", "--game", "Pong"], "models:/NAME@ALIAS"),
        (
            [*base, "--game", "Pnog", "--episodes", "1"],
            "unknown Atari game 'Pnog'; did you mean 'Pong'",
        ),
        ([*base, "--game", "Pong", "--tracking-uri", "http://127.0.0.1:1"], "not reachable"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err
    assert main(["--model", "models:/pong-eval@nope", "--game", "Pong", *base[2:]]) == 2
    assert "alias 'nope'" in capsys.readouterr().err


def test_gymnasium_backend_matches_torchrl():
    """Same seed, same actions: the plain-Gymnasium backend sees the training env's frames."""
    from torchrl_eaudeqn.envs.evaluation import GymnasiumGame, TorchRLGame

    games = [
        TorchRLGame("Pong", seed=7, max_steps=150, record=True),
        GymnasiumGame("Pong", seed=7, max_steps=150, record=True),
    ]
    g = torch.Generator().manual_seed(0)
    try:
        for episode in range(2):  # the second episode checks the unseeded reset too
            obs = [game.reset() for game in games]
            assert obs[0].dtype == obs[1].dtype == torch.uint8
            assert obs[0].shape == (4, 84, 84) and torch.equal(obs[0], obs[1])
            done, steps, score = False, 0, 0.0
            while not done:
                action = int(torch.randint(6, (), generator=g))
                results = [game.step(action) for game in games]
                assert torch.equal(results[0][0], results[1][0]), (episode, steps)
                assert results[0][1:] == results[1][1:], (episode, steps)
                assert (games[0].frame(None) == games[1].frame(None)).all()
                done = results[0][2] or results[0][3]
                steps += 1
                score += results[0][1]
            assert steps == 150
    finally:
        for game in games:
            game.close()


def test_gymnasium_backend_runs(evaluate_module, store, capsys):
    argv = [
        "--model", MODEL, "--game", "pong", "--episodes", "2", "--max-steps", "30",
        "--tracking-uri", store["uri"], "--backend", "gymnasium",
    ]  # fmt: skip
    assert evaluate_module.main(argv) == 0
    out = capsys.readouterr().out
    assert "via gymnasium" in out and "over 2 episodes" in out
