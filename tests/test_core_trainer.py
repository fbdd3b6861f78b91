"""A short EauDeQN run inside torchrl.trainers.Trainer (the recipes/cartpole_trainer.py example)."""

import json
import pathlib
import subprocess
import sys

import pytest
from scripts import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _recipe():
    return load_script("recipes/cartpole_trainer.py", "cartpole_trainer")


def test_trainer_run_with_collector_replay_and_updater_hook():
    recipe = _recipe()
    args = recipe.parse_args(
        [
            "--frames",
            "640",
            "--period",
            "10",
            "--members",
            "3",
            "--width",
            "32",
            "--max-speed",
            "0.2",
            "--random-frames",
            "0",
        ]
    )
    trainer, updater = recipe.build_trainer(args)
    trainer.train()
    actor = updater.actor
    grad_steps = (640 // args.frames_per_batch) * args.updates_per_batch
    assert updater.num_steps == grad_steps
    assert len(updater.history) == grad_steps // 10
    assert all(0 <= h["selected"] < 3 for h in updater.history)
    assert all(s > 0 for s in actor.sparsity().tolist())  # pruning happened
    for name, m in actor.flat_masks().items():
        assert (actor.flat_params()[name][~m] == 0).all()
    assert trainer._modules["optimizer"].loss_components == ["loss"]
    assert trainer._modules["target_net_updater"] is updater


def test_register_refuses_joint_gradient_clipping():
    recipe = _recipe()
    trainer, updater = recipe.build_trainer(recipe.parse_args(["--frames", "32", "--members", "2"]))
    trainer.clip_grad_norm, trainer.clip_norm = True, 1.0
    with pytest.raises(ValueError, match="clip_norm"):
        updater.register(trainer)


def test_recipe_cli_prints_summary_and_rejects_bad_args():
    cmd = [sys.executable, str(ROOT / "recipes" / "cartpole_trainer.py")]
    out = subprocess.run(
        [
            *cmd,
            "--frames",
            "320",
            "--period",
            "8",
            "--members",
            "2",
            "--width",
            "16",
            "--random-frames",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["target_updates"] == (320 // 16) * 4 // 8
    bad = subprocess.run([*cmd, "--members", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--members must be >= 1" in bad.stderr
