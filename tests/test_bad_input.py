"""Bad input at every entry point: one line naming the field, exit status 2, nothing written.

Each case of :data:`CASES` calls the real script's ``main(argv)``
(``recipes/atari_dqn.py``, ``mujoco_sac.py``, ``control_dqn.py``,
``evaluate.py``, ``study.py``) with the working directory an empty
``tmp_path`` that also holds the SQLite store and the checkpoints. It must
exit 2 with exactly one stderr line (file descriptor 2, native output
included) that matches the case's pattern (the field, what was expected), and
leave ``tmp_path`` as it was: no MLflow database, no checkpoint folder, no
log. Every other case of each script (:data:`SUBPROCESS`) also runs as a
user runs it, in a process of its own with no traceback. The checks run
before torch is imported (``torchrl_eaudeqn/validation.py``): a process
costs about half a second, a call in this process milliseconds.
"""
# ruff: noqa: E501  (the table keeps one case per line)

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
from scripts import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
ATARI = ["--config", str(ROOT / "configs/atari/quick.yaml")]
SAC = ["--config", str(ROOT / "configs/mujoco/quick.yaml")]
CONTROL = ["--config", str(ROOT / "configs/study/cartpole.yaml")]
STORE = ["tracking_uri=sqlite:///{tmp}/mlflow.db", "checkpoint_dir={tmp}/ckpt"]
EVAL = ["--model", "models:/m@final", "--tracking-uri", "sqlite:///{tmp}/mlflow.db"]
STUDY = ["--tracking-uri", "sqlite:///{tmp}/study.db", "--backend", "threads",
         "--log-dir", "{tmp}/logs", "--checkpoint-dir", "{tmp}/ckpt"]  # fmt: skip
CARTPOLE = str(ROOT / "configs/study/cartpole.yaml")
ATARI_CFG = str(ROOT / "configs/atari/quick.yaml")


def grid(body: str = "", *, tasks: str | None = None, head: str | None = None) -> str:
    """A grid file: the default head and one CartPole task, with ``body`` appended."""
    head = "experiment: e\nseeds: [0, 1]\nmethods: [dqn, eaudeqn]\n" if head is None else head
    if tasks is None:
        tasks = f"tasks:\n  CartPole-v1: {{config: {CARTPOLE}, widths: {{narrow: 8}}}}\n"
    return head + tasks + body


# (id, script, argv, pattern of the one stderr line, {file name: text} written first)
CASES: list[tuple[str, str, list[str], str, dict[str, str]]] = [
    # ------------------------------------------------------------- atari_dqn.py
    ("gamma-nan", "atari_dqn", [*ATARI, *STORE, "gamma=.nan"], r"^error: gamma: expected a finite number, got nan$", {}),
    ("lr-inf", "atari_dqn", [*ATARI, *STORE, "lr=.inf"], r"^error: lr: expected a finite", {}),
    ("eps-start-nan", "atari_dqn", [*ATARI, *STORE, "eps_start=nan"], r"^error: eps_start: expected a finite", {}),
    ("max-speed-minus-inf", "atari_dqn", [*ATARI, *STORE, "max_speed=-.inf"], r"^error: max_speed: expected a finite", {}),
    ("sticky-nan", "atari_dqn", [*ATARI, *STORE, "sticky_actions=.NaN"], r"^error: sticky_actions: expected a finite", {}),
    ("adam-eps-inf", "atari_dqn", [*ATARI, *STORE, "adam_eps=inf"], r"^error: adam_eps: expected a finite", {}),
    ("seed-2-32", "atari_dqn", [*ATARI, *STORE, "seed=4294967296"], r"^error: seed: must be <= 4294967295, got 4294967296$", {}),
    ("seed-plus-offsets", "atari_dqn", [*ATARI, *STORE, "seed=4294967000"], r"^error: seed: must be <= 4294\d{6} .*env step", {}),
    ("seed-negative", "atari_dqn", [*ATARI, *STORE, "seed=-1"], r"^error: seed: must be >= 0", {}),
    ("experiment-empty", "atari_dqn", [*ATARI, *STORE, "experiment="], r"^error: experiment: expected a non-empty string, got ''$", {}),
    ("atari-env-empty", "atari_dqn", [*ATARI, *STORE, "env="], r"^error: env: expected a non-empty string", {}),
    ("game-typo", "atari_dqn", [*ATARI, *STORE, "game=Pongg"], r"^error: env: unknown Atari game 'Pongg'; did you mean 'Pong'", {}),
    ("atari-env-continuous", "atari_dqn", [*ATARI, *STORE, "env=Hopper-v5"], r"^error: env: 'Hopper-v5' is a continuous-control task: use the SAC recipe", {}),
    ("alias-version", "atari_dqn", [*ATARI, *STORE, "register_alias=v1"], r"^error: register_alias: aliases v<number> are reserved", {}),
    ("alias-dot", "atari_dqn", [*ATARI, *STORE, "register_alias=a.b"], r"^error: register_alias: expected letters, digits", {}),
    ("name-slash", "atari_dqn", [*ATARI, *STORE, "register_name=a/b"], r"^error: register_name: .*cannot contain '/'", {}),
    ("name-colon", "atari_dqn", [*ATARI, *STORE, "register_name=a:b"], r"^error: register_name: .*cannot contain ':'", {}),
    ("batch-over-buffer", "atari_dqn", [*ATARI, *STORE, "batch_size=64", "buffer_size=32"], r"^error: batch_size: must be <= buffer_size \(32\)", {}),
    ("frames-per-env", "atari_dqn", [*ATARI, *STORE, "buffer_size=8", "num_envs=2"], r"^error: buffer_size: must hold at least 5 frames per env", {}),
    ("learning-never-starts", "atari_dqn", [*ATARI, *STORE, "env_steps=50000", "learning_starts=50001"], r"^error: learning_starts: must be <= env_steps \(50000\): learning would never start, got 50001$", {}),
    ("batch-over-budget", "atari_dqn", [*ATARI, *STORE, "env_steps=50000", "batch_size=60000", "buffer_size=100000"], r"^error: batch_size: the first gradient step needs 60000 transitions", {}),
    ("episode-cap-0", "atari_dqn", [*ATARI, *STORE, "max_episode_steps=0"], r"^error: max_episode_steps: must be >= 1, got 0$", {}),
    ("eval-cap-0", "atari_dqn", [*ATARI, *STORE, "eval_max_steps=0"], r"^error: eval_max_steps: must be >= 1, got 0$", {}),
    ("replay-over-memory", "atari_dqn", [*ATARI, *STORE, "buffer_size=1000000000"], r"^error: buffer_size: the replay would hold 7,068\.00 GB .* more than the .* GB of memory available", {}),
    ("sqlite-dir-missing", "atari_dqn", [*ATARI, *STORE, "tracking_uri=sqlite:///{tmp}/no/such/dir/m.db"], r"^error: tracking_uri: MLflow tracking URI .* does not exist$", {}),
    ("yaml-int-key", "atari_dqn", [*STORE, "--config", "{tmp}/bad.yaml"], r"^error: config file .*bad\.yaml: key 1: expected a config field name", {"bad.yaml": f"extends: {ATARI_CFG}\n1: 2\n"}),
    ("yaml-nan", "atari_dqn", [*STORE, "--config", "{tmp}/bad.yaml"], r"^error: lr: expected a finite number, got nan$", {"bad.yaml": f"extends: {ATARI_CFG}\nlr: .nan\n"}),
    ("num-envs-0", "atari_dqn", [*ATARI, *STORE, "num_envs=0"], r"^error: num_envs: must be >= 1", {}),
    ("width-word", "atari_dqn", [*ATARI, *STORE, "width=huge"], r"^error: width: expected small \| medium \| large", {}),
    ("run-tags-no-value", "atari_dqn", [*ATARI, *STORE, "run_tags=solo"], r"^error: run_tags: expected key=value", {}),
    ("run-tags-path", "atari_dqn", [*ATARI, *STORE, "run_tags=../up=1"], r"^error: run_tags: tag key '\.\./up'", {}),
    ("unknown-key", "atari_dqn", [*ATARI, *STORE, "gama=0.9"], r"^error: gama: unknown config key .*did you mean 'gamma'", {}),
    ("resume-empty", "atari_dqn", [*ATARI, *STORE, "--resume", ""], r"^error: --resume: expected 'last' or a checkpoint path", {}),
    ("frame-skip-float", "atari_dqn", [*ATARI, *STORE, "frame_skip=1.5"], r"^error: frame_skip: expected an integer, got 1\.5$", {}),
    ("unknown-flag", "atari_dqn", [*ATARI, *STORE, "--bogus"], r"^error: unrecognized arguments: --bogus$", {}),
    # ------------------------------------------------------------- mujoco_sac.py
    ("target-entropy-nan", "mujoco_sac", [*SAC, *STORE, "target_entropy=nan"], r"^error: target_entropy: expected auto or a number \(a finite one\), got 'nan'$", {}),
    ("target-entropy-inf", "mujoco_sac", [*SAC, *STORE, "target_entropy=-inf"], r"^error: target_entropy: expected auto or a number", {}),
    ("alpha-init-inf", "mujoco_sac", [*SAC, *STORE, "alpha_init=.inf"], r"^error: alpha_init: expected a finite number, got inf$", {}),
    ("tau-nan", "mujoco_sac", [*SAC, *STORE, "tau=.nan"], r"^error: tau: expected a finite number", {}),
    ("final-sparsity-nan", "mujoco_sac", [*SAC, *STORE, "final_sparsity=.nan"], r"^error: final_sparsity: expected a finite", {}),
    ("sac-seed-2-32", "mujoco_sac", [*SAC, *STORE, "seed=4294967296"], r"^error: seed: must be <= 4294967295", {}),
    ("env-empty", "mujoco_sac", [*SAC, *STORE, "env="], r"^error: env: expected a non-empty string, got ''$", {}),
    ("env-discrete", "mujoco_sac", [*SAC, *STORE, "env=CartPole-v1"], r"^error: env: env id 'CartPole-v1' has discrete actions", {}),
    ("env-unknown", "mujoco_sac", [*SAC, *STORE, "env=Hoper-v5"], r"^error: env: unknown Gymnasium env id 'Hoper-v5'; did you mean 'Hopper-v5'", {}),
    ("sac-alias-version", "mujoco_sac", [*SAC, *STORE, "register_alias=V12"], r"^error: register_alias: aliases v<number> are reserved", {}),
    ("sac-alias-empty", "mujoco_sac", [*SAC, *STORE, "register_alias="], r"^error: register_alias: expected a non-empty string", {}),
    ("sac-name-blank", "mujoco_sac", [*SAC, *STORE, "register_name= "], r"^error: register_name: expected a non-empty registered-model name", {}),
    ("sac-name-at-both", "mujoco_sac", [*SAC, *STORE, "register_format=both", "register_name=x@y"], r"^error: register_name: .*cannot contain '@'", {}),
    ("sac-env-atari", "mujoco_sac", [*SAC, *STORE, "env=ALE/Pong-v5"], r"^error: env: env id 'ALE/Pong-v5' is an Atari game with discrete actions; use the DQN recipe", {}),
    ("sac-batch-over-buffer", "mujoco_sac", [*SAC, *STORE, "batch_size=512", "buffer_size=256"], r"^error: batch_size: must be <= buffer_size \(256\)", {}),
    ("sac-learning-never-starts", "mujoco_sac", [*SAC, *STORE, "learning_starts=40000"], r"^error: learning_starts: must be <= env_steps \(30000\)", {}),
    ("sac-episode-cap-0", "mujoco_sac", [*SAC, *STORE, "max_episode_steps=0"], r"^error: max_episode_steps: must be >= 1", {}),
    ("sac-eval-cap-negative", "mujoco_sac", [*SAC, *STORE, "eval_max_steps=-1"], r"^error: eval_max_steps: must be >= 1", {}),
    ("sac-replay-over-memory", "mujoco_sac", [*SAC, *STORE, "buffer_size=100000000000"], r"^error: buffer_size: the replay would hold .* \(100000000000 transitions x 167 bytes\), more than", {}),
    ("sac-experiment-blank", "mujoco_sac", [*SAC, *STORE, "experiment=  "], r"^error: experiment: expected a non-empty string", {}),
    ("sac-width-0", "mujoco_sac", [*SAC, *STORE, "width=0"], r"^error: width: must be >= 1", {}),
    ("sac-gamma-over-1", "mujoco_sac", [*SAC, *STORE, "gamma=1.5"], r"^error: gamma: must be <= 1\.0", {}),
    ("sac-yaml-int-key", "mujoco_sac", [*STORE, "--config", "{tmp}/bad.yaml"], r"^error: config file .*bad\.yaml: key 1: expected a config field name", {"bad.yaml": "1: 2\nenv: Hopper-v5\n"}),
    ("sac-yaml-list", "mujoco_sac", [*STORE, "--config", "{tmp}/bad.yaml"], r"^error: config file .*bad\.yaml: expected a mapping", {"bad.yaml": "- env\n- Hopper-v5\n"}),
    ("sac-env-uri-unset", "mujoco_sac", [*SAC, *STORE, "tracking_uri=env:EAUDEQN_NO_SUCH_VARIABLE"], r"^error: tracking_uri: 'env:EAUDEQN_NO_SUCH_VARIABLE' names environment variable", {}),
    ("sac-checkpoint-dir-empty", "mujoco_sac", [*SAC, *STORE, "checkpoint_dir="], r"^error: checkpoint_dir: expected a non-empty string", {}),
    ("sac-config-missing", "mujoco_sac", [*STORE, "--config", "{tmp}/none.yaml"], r"^error: config file .*none\.yaml: not found$", {}),
    # ------------------------------------------------------------- control_dqn.py
    ("control-gamma-nan", "control_dqn", [*CONTROL, *STORE, "gamma=.nan"], r"^error: gamma: expected a finite", {}),
    ("control-eps-end-inf", "control_dqn", [*CONTROL, *STORE, "eps_end=.inf"], r"^error: eps_end: expected a finite", {}),
    # lr=5e-4 is a number (YAML 1.1 read it as a string): the error is the next field's.
    ("control-sci-lr-accepted", "control_dqn", [*CONTROL, *STORE, "lr=5e-4", "gamma=2"], r"^error: gamma: must be <= 1\.0, got 2\.0$", {}),
    ("control-seed-2-32", "control_dqn", [*CONTROL, *STORE, "seed=4294967296"], r"^error: seed: must be <= 4294967295", {}),
    ("control-seed-offsets", "control_dqn", [*CONTROL, *STORE, "seed=4294960000"], r"^error: seed: must be <= 4294947\d+ ", {}),
    ("control-env-empty", "control_dqn", [*CONTROL, *STORE, "env="], r"^error: env: expected a non-empty string", {}),
    ("control-env-continuous", "control_dqn", [*CONTROL, *STORE, "env=Pendulum-v1"], r"^error: env: 'Pendulum-v1' has a Box action space", {}),
    ("control-minatar-older-name", "control_dqn", [*CONTROL, *STORE, "task=minatar:pong"], r"^error: env: unknown MinAtar game 'pong'", {}),
    ("control-env-unknown", "control_dqn", [*CONTROL, *STORE, "env=CartPol-v1"], r"^error: env: unknown Gymnasium env_id 'CartPol-v1'; did you mean", {}),
    ("control-alias-version", "control_dqn", [*CONTROL, *STORE, "register=true", "register_alias=v3"], r"^error: register_alias: aliases v<number> are reserved", {}),
    ("control-name-slash", "control_dqn", [*CONTROL, *STORE, "register=true", "register_name=a/b"], r"^error: register_name: .*cannot contain '/'", {}),
    ("control-batch-over-buffer", "control_dqn", [*CONTROL, *STORE, "batch_size=30000"], r"^error: batch_size: must be <= buffer_size \(20000\)", {}),
    ("control-learning-never-starts", "control_dqn", [*CONTROL, *STORE, "learning_starts=20001"], r"^error: learning_starts: must be <= env_steps \(20000\)", {}),
    ("control-batch-over-budget", "control_dqn", [*CONTROL, *STORE, "env_steps=50", "learning_starts=10", "target_period=10", "batch_size=64", "prune_start=0", "prune_end=40", "eps_decay_steps=20"], r"^error: batch_size: the first gradient step needs 64 transitions, more than env_steps \(50\)", {}),
    ("control-eval-cap-0", "control_dqn", [*CONTROL, *STORE, "eval_max_steps=0"], r"^error: eval_max_steps: must be >= 1", {}),
    ("control-episode-cap-negative", "control_dqn", [*CONTROL, *STORE, "max_episode_steps=-1"], r"^error: max_episode_steps: must be >= 0", {}),
    ("control-replay-over-memory", "control_dqn", [*CONTROL, *STORE, "buffer_size=100000000000"], r"^error: buffer_size: the replay would hold .* \(100000000000 transitions x 45 bytes\), more than", {}),
    ("control-experiment-blank", "control_dqn", [*CONTROL, *STORE, "experiment= "], r"^error: experiment: expected a non-empty string", {}),
    ("control-width-0", "control_dqn", [*CONTROL, *STORE, "width=0"], r"^error: width: must be >= 1", {}),
    ("control-yaml-int-key", "control_dqn", [*STORE, "--config", "{tmp}/bad.yaml"], r"^error: config file .*bad\.yaml: key 1: expected a config field name", {"bad.yaml": f"extends: {CARTPOLE}\n1: 2\n"}),
    ("control-yaml-extends-list", "control_dqn", [*STORE, "--config", "{tmp}/bad.yaml"], r"^error: config file .*bad\.yaml: extends: expected a file name", {"bad.yaml": "extends: [a, b]\n"}),
    ("control-yaml-inf", "control_dqn", [*STORE, "--config", "{tmp}/bad.yaml"], r"^error: lr: expected a finite number, got inf$", {"bad.yaml": f"extends: {CARTPOLE}\nlr: .inf\n"}),
    ("control-lr-word", "control_dqn", [*CONTROL, *STORE, "lr=fast"], r"^error: lr: expected a number, got 'fast'$", {}),
    ("control-method", "control_dqn", [*CONTROL, *STORE, "method=sac"], r"^error: method: expected one of eaudeqn \| polyprune \| dqn", {}),
    ("control-optimizer", "control_dqn", [*CONTROL, *STORE, "optimizer=sgd"], r"^error: optimizer: expected one of adam \| rmsprop", {}),
    ("control-action-set", "control_dqn", [*CONTROL, *STORE, "action_set=full"], r"^error: action_set: full applies to MinAtar games", {}),
    ("control-train-freq-0", "control_dqn", [*CONTROL, *STORE, "train_freq=0"], r"^error: train_freq: must be >= 1", {}),
    # ------------------------------------------------------------- evaluate.py
    ("eval-episodes-0", "evaluate", [*EVAL, "--episodes", "0"], r"^evaluate\.py: error: --episodes: must be >= 1, got 0$", {}),
    ("eval-epsilon-nan", "evaluate", [*EVAL, "--epsilon", "nan"], r"^evaluate\.py: error: --epsilon: must be a number in \[0, 1\], got nan$", {}),
    ("eval-epsilon-inf", "evaluate", [*EVAL, "--epsilon", "inf"], r"^evaluate\.py: error: --epsilon: must be a number in \[0, 1\]", {}),
    ("eval-epsilon-over-1", "evaluate", [*EVAL, "--epsilon", "1.5"], r"^evaluate\.py: error: --epsilon: must be a number in \[0, 1\]", {}),
    ("eval-seed-negative", "evaluate", [*EVAL, "--seed", "-1"], r"^evaluate\.py: error: --seed: must be in 0\.\.4294967295", {}),
    ("eval-seed-2-32", "evaluate", [*EVAL, "--seed", "4294967296"], r"^evaluate\.py: error: --seed: must be in 0\.\.4294967295", {}),
    ("eval-max-steps-0", "evaluate", [*EVAL, "--max-steps", "0"], r"^evaluate\.py: error: --max-steps: must be >= 1", {}),
    ("eval-video-frames-0", "evaluate", [*EVAL, "--video-frames", "0"], r"^evaluate\.py: error: --video-frames: must be >= 1", {}),
    ("eval-fps-0", "evaluate", [*EVAL, "--fps", "0"], r"^evaluate\.py: error: --fps: must be >= 1", {}),
    ("eval-video-suffix", "evaluate", [*EVAL, "--video", "{tmp}/out.avi"], r"^evaluate\.py: error: --video: must end with \.gif or \.mp4", {}),
    ("eval-video-dir", "evaluate", [*EVAL, "--video", "{tmp}/no/dir/out.gif"], r"^evaluate\.py: error: --video: directory .* does not exist", {}),
    ("eval-model-not-uri", "evaluate", [*EVAL, "--model", "pong"], r"^evaluate\.py: error: --model: expected a registry URI models:/NAME@ALIAS", {}),
    ("eval-model-alias-version", "evaluate", [*EVAL, "--model", "models:/a@v1"], r"^evaluate\.py: error: --model: aliases v<number> are reserved .*models:/a/1", {}),
    ("eval-model-name-colon", "evaluate", [*EVAL, "--model", "models:/a:b@final"], r"^evaluate\.py: error: --model: .*cannot contain ':'", {}),
    ("eval-model-alias-dot", "evaluate", [*EVAL, "--model", "models:/a@b.c"], r"^evaluate\.py: error: --model: expected letters, digits", {}),
    ("eval-game-empty", "evaluate", [*EVAL, "--game", ""], r"^evaluate\.py: error: --game: expected a task name", {}),
    ("eval-game-typo", "evaluate", [*EVAL, "--game", "Pongg"], r"^evaluate\.py: error: --game: unknown Atari game 'Pongg'; did you mean 'Pong'", {}),
    ("eval-env-unknown", "evaluate", [*EVAL, "--env", "Nope-v1"], r"^evaluate\.py: error: --env: unknown Gymnasium env id 'Nope-v1'", {}),
    ("eval-env-discrete", "evaluate", [*EVAL, "--env", "CartPole-v1"], r"^evaluate\.py: error: --env: env id 'CartPole-v1' has discrete actions", {}),
    ("eval-game-and-env", "evaluate", [*EVAL, "--game", "Pong", "--env", "Hopper-v5"], r"^evaluate\.py: error: --game, --env: give --game .* not both$", {}),
    ("eval-uri-empty", "evaluate", [*EVAL, "--tracking-uri", ""], r"^evaluate\.py: error: --tracking-uri: expected an MLflow tracking URI, got ''$", {}),
    ("eval-store-missing", "evaluate", [*EVAL, "--game", "Pong"], r"^evaluate\.py: error: --tracking-uri: .*no MLflow database at", {}),
    ("eval-episodes-word", "evaluate", [*EVAL, "--episodes", "x"], r"^evaluate\.py: error: argument --episodes: invalid int value: 'x'$", {}),
    ("eval-backend", "evaluate", [*EVAL, "--backend", "ale"], r"^evaluate\.py: error: argument --backend: invalid choice", {}),
    # ------------------------------------------------------------- study.py
    ("grid-tasks-list", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: tasks: expected a mapping, got a list$", {"g.yaml": grid(tasks="tasks: [CartPole-v1]\n")}),
    ("grid-overrides-string", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: overrides: expected a list of key=value strings, got a string", {"g.yaml": grid("overrides: lr=0.1\n")}),
    ("grid-task-overrides-map", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: tasks: 'CartPole-v1': overrides: expected a list of key=value strings, got a mapping", {"g.yaml": grid(tasks=f"tasks:\n  CartPole-v1: {{config: {CARTPOLE}, widths: {{w: 8}}, overrides: {{lr: 0.1}}}}\n")}),
    ("grid-int-key", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: top level: key 1: expected a string$", {"g.yaml": grid("1: 2\n")}),
    ("grid-top-list", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: expected a mapping with experiment, seeds, methods and tasks, got a list$", {"g.yaml": "- experiment\n- seeds\n"}),
    ("grid-seed-negative", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: seeds: expected ints in 0\.\.4294967295, got -1$", {"g.yaml": grid(head="experiment: e\nseeds: [-1]\nmethods: [dqn]\n")}),
    ("grid-seed-2-32", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: seeds: expected ints in 0\.\.4294967295, got 4294967296$", {"g.yaml": grid(head="experiment: e\nseeds: [4294967296]\nmethods: [dqn]\n")}),
    ("grid-seed-twice", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: seeds: a seed is listed twice", {"g.yaml": grid(head="experiment: e\nseeds: [0, 0]\nmethods: [dqn]\n")}),
    ("grid-methods-string", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: methods: expected a non-empty list, got 'dqn'$", {"g.yaml": grid(head="experiment: e\nseeds: [0]\nmethods: dqn\n")}),
    ("grid-width-0", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: tasks: 'CartPole-v1': widths: 'w': expected an int >= 1, got 0$", {"g.yaml": grid(tasks=f"tasks:\n  CartPole-v1: {{config: {CARTPOLE}, widths: {{w: 0}}}}\n")}),
    ("grid-widths-list", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: tasks: 'CartPole-v1': widths: expected a mapping, got a list$", {"g.yaml": grid(tasks=f"tasks:\n  CartPole-v1: {{config: {CARTPOLE}, widths: [8, 16]}}\n")}),
    ("grid-missing-tasks", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: missing 'tasks'$", {"g.yaml": grid(tasks="")}),
    ("grid-experiment-empty", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: experiment: expected a non-empty string, got ''$", {"g.yaml": grid(head="experiment: ''\nseeds: [0]\nmethods: [dqn]\n")}),
    ("grid-key-typo", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: .*g\.yaml: top level: unknown key 'overides' \(did you mean 'overrides'\?\)$", {"g.yaml": grid("overides: [lr=0.1]\n")}),
    ("grid-cell-nan", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: cell CartPole-v1/dqn/narrow/seed0/lr=\.nan: lr: expected a finite number, got nan$", {"g.yaml": grid("overrides: [lr=.nan]\n")}),
    ("grid-cell-batch", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: cell .*: batch_size: must be <= buffer_size \(20000\)", {"g.yaml": grid("overrides: [batch_size=30000]\n")}),
    ("grid-cell-game", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: cell Pongg/dqn/small/seed0: env: unknown Atari game 'Pongg'", {"g.yaml": grid(head="experiment: e\nseeds: [0]\nmethods: [dqn]\nrecipe: atari\n", tasks=f"tasks:\n  Pongg: {{config: {ATARI_CFG}, widths: {{small: 32}}}}\n")}),
    ("grid-cell-config-missing", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY], r"^error: cell .*: config file .*none\.yaml: not found$", {"g.yaml": grid(tasks="tasks:\n  CartPole-v1: {config: none.yaml, widths: {w: 8}}\n")}),
    ("study-workers-0", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--workers", "0"], r"^error: --workers: expected an int >= 1, got 0$", {"g.yaml": grid()}),
    ("study-cpus-nan", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--cpus-per-run", "nan"], r"^error: --cpus-per-run: expected a finite number, got nan$", {"g.yaml": grid()}),
    ("study-gpus-inf", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--gpus-per-run", "inf"], r"^error: --gpus-per-run: expected a finite number, got inf$", {"g.yaml": grid()}),
    ("study-memory-negative", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--memory-per-run", "-1"], r"^error: --memory-per-run: expected GB >= 0", {"g.yaml": grid()}),
    ("study-seed-not-in-grid", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--seeds", "7"], r"^error: seeds: \[7\] are not seeds of the grid \[0, 1\]$", {"g.yaml": grid()}),
    ("study-seed-2-32", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--seeds", "4294967296"], r"^error: --seeds: expected ints in 0\.\.4294967295", {"g.yaml": grid()}),
    ("study-width-unknown", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--widths", "huge"], r"^error: widths: \['huge'\] are not width names of the grid", {"g.yaml": grid()}),
    ("study-method-unknown", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--methods", "polyprune"], r"^error: methods: \['polyprune'\] are not methods of the grid", {"g.yaml": grid()}),
    ("study-experiment-empty", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--experiment", ""], r"^error: --experiment: expected a non-empty MLflow experiment name", {"g.yaml": grid()}),
    ("study-grid-missing", "study", ["run", "--grid", "{tmp}/none.yaml", *STUDY], r"^error: --grid: cannot read .*none\.yaml", {}),
    ("study-store-dir-missing", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--tracking-uri", "sqlite:///{tmp}/no/dir/s.db"], r"^error: MLflow tracking URI .* does not exist$", {"g.yaml": grid()}),
    ("study-workers-word", "study", ["run", "--grid", "{tmp}/g.yaml", *STUDY, "--workers", "x"], r"^error: argument --workers: invalid int value: 'x'$", {"g.yaml": grid()}),
    ("study-report-reps-0", "study", ["report", "--grid", "{tmp}/g.yaml", "--tracking-uri", "sqlite:///{tmp}/study.db", "--reps", "0", "--figures", "{tmp}/figs", "--results", "{tmp}/res"], r"^error: --reps: expected an int >= 1, got 0$", {"g.yaml": grid()}),
    ("study-report-no-store", "study", ["report", "--grid", "{tmp}/g.yaml", "--tracking-uri", "sqlite:///{tmp}/study.db", "--figures", "{tmp}/figs", "--results", "{tmp}/res"], r"^error: MLflow tracking URI .*no MLflow database at", {"g.yaml": grid()}),
]  # fmt: skip


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


# device=cuda without a CUDA device: only where there is none (imports torch: ~4 s).
if not _has_cuda():
    CASES.append(
        ("cuda-missing", "control_dqn", [*CONTROL, *STORE, "device=cuda"], r"^error: device: cuda requested, but torch finds no CUDA device", {})
    )  # fmt: skip


def _files(root: pathlib.Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _prepare(tmp_path: pathlib.Path, argv: list[str], files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [a.replace("{tmp}", str(tmp_path)) for a in argv]


def _check(tmp_path: pathlib.Path, before: set[str], code: object, stderr: str, pattern: str):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    # Nothing was created: no MLflow store, no checkpoint folder, no log, nothing else.
    assert _files(tmp_path) == before
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ckpt").exists()


#: Every other case of each script also runs in a process of its own (see the module doc).
SUBPROCESS = [c for c in CASES if [d for d in CASES if d[1] == c[1]].index(c) % 2 == 0]


def run_script(script: str, argv: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store must be the one in cwd
    return subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{script}.py"), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a case that slipped through would train: fail instead
    )


@pytest.fixture(scope="module")
def scripts():
    """The five entry points, imported once (their top level imports nothing heavy)."""
    names = {c[1] for c in CASES}
    return {name: load_script(f"recipes/{name}.py", f"bad_input_{name}") for name in names}


@pytest.mark.parametrize(("script", "argv", "pattern", "files"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_in_process(tmp_path, monkeypatch, capfd, scripts, script, argv, pattern, files):
    """``main(argv)`` of the script, in this process: the same checks as its command line."""
    argv = _prepare(tmp_path, argv, files)
    before = _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capfd.readouterr()
    try:
        code = scripts[script].main(argv)
    except SystemExit as stop:
        code = stop.code
    _check(tmp_path, before, code, capfd.readouterr().err, pattern)


@pytest.mark.parametrize(("script", "argv", "pattern", "files"),
                         [c[1:] for c in SUBPROCESS], ids=[c[0] for c in SUBPROCESS])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, script, argv, pattern, files):
    """The script as a user runs it: its own process, exit status 2, no traceback."""
    argv = _prepare(tmp_path, argv, files)
    before = _files(tmp_path)
    out = run_script(script, argv, tmp_path)
    _check(tmp_path, before, out.returncode, out.stderr, pattern)
    assert "Traceback" not in out.stderr


def test_the_table_covers_every_entry_point():
    def count(cases):
        per_script: dict[str, int] = {}
        for _, script, *_ in cases:
            per_script[script] = per_script.get(script, 0) + 1
        return per_script

    assert set(count(CASES)) == {"atari_dqn", "mujoco_sac", "control_dqn", "evaluate", "study"}
    assert len(CASES) >= 100 and min(count(CASES).values()) >= 20, count(CASES)
    assert len(SUBPROCESS) >= 60 and min(count(SUBPROCESS).values()) >= 10, count(SUBPROCESS)
    assert len({c[0] for c in CASES}) == len(CASES)


def test_checks_run_before_torch_is_imported(tmp_path):
    """The table is fast because a refused config never imports torch, TorchRL or MLflow."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['control_dqn.py', '--config', {CARTPOLE!r}, 'gamma=.nan']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'recipes/control_dqn.py')!r}, run_name='__main__')\n"
        "except SystemExit as err:\n"
        "    print(err.code, sorted(m for m in ('torch', 'torchrl', 'mlflow', 'lightning')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr[-2000:]


# --------------------------------------------------------------------------- in-process
def test_scientific_notation_is_a_number_in_files_and_overrides(tmp_path):
    from torchrl_eaudeqn.config import AtariConfig, load_config

    path = tmp_path / "c.yaml"
    path.write_text("lr: 5e-4\nadam_eps: 1E-8\nbuffer_size: 1e5\nenv_steps: 2e6\n")
    cfg = load_config(AtariConfig, path, ["max_speed=2e-2", "run_name=1e3"])
    assert (cfg.lr, cfg.adam_eps, cfg.max_speed) == (5e-4, 1e-8, 0.02)
    assert (cfg.buffer_size, cfg.env_steps) == (100_000, 2_000_000)
    assert type(cfg.buffer_size) is int and cfg.run_name == "1e3"  # a string field keeps its text


def test_replay_memory_warning_names_the_numbers(capsys):
    from torchrl_eaudeqn.config import AtariConfig, ConfigError
    from torchrl_eaudeqn.validation import check_replay_memory, replay_bytes

    cfg = AtariConfig(buffer_size=1_000_000)
    need = replay_bytes(cfg)
    assert need == 1_000_001 * 84 * 84 + 1_000_000 * 12  # 7.07 GB, as docs/atari.md says
    check_replay_memory(cfg, need, available=int(need / 0.8))  # 80%: a warning
    err = capsys.readouterr().err.strip()
    assert err == (
        "warning: buffer_size: the replay will hold 7.07 GB when full (1000000 transitions "
        "x 7068 bytes), 80% of the 8.84 GB of memory available now"
    )
    check_replay_memory(cfg, need, available=2 * need)  # 50%: silent
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"^buffer_size: the replay would hold 7\.07 GB"):
        check_replay_memory(cfg, need, available=need - 1)


def test_a_task_id_with_a_slash_needs_register_name(tmp_path):
    """The default registered-model name is built from the env id: '/' would break it."""
    import gymnasium as gym

    from torchrl_eaudeqn.config import ConfigError, SACConfig
    from torchrl_eaudeqn.validation import load_run_config

    env_id = "eaudeqn_test/Pendulum-v1"  # a namespaced id, as dm_control's or shimmy's
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv")
    overrides = [f"env={env_id}", f"tracking_uri=sqlite:///{tmp_path}/m.db"]
    with pytest.raises(
        ConfigError,
        match=r"^register_name: the default name 'eaudesac-eaudeqn_test/Pendulum-v1-eaudesac-256x2' \(from env='eaudeqn_test/Pendulum-v1'\) is not a valid registered-model name .*; set register_name$",
    ):
        load_run_config(SACConfig, None, overrides, mlflow_names=False)
    cfg = load_run_config(SACConfig, None, [*overrides, "register_name=pendulum-sac"])
    assert cfg.model_name == "pendulum-sac" and not list(tmp_path.iterdir())


def test_available_memory_is_a_plausible_number():
    from torchrl_eaudeqn.validation import available_memory

    free = available_memory()
    assert free is not None and 10**7 < free < 2**50


def test_replay_size_estimates_match_the_real_storage():
    """The memory check sizes the replay the way each recipe's module really stores it."""
    from torchrl_eaudeqn.config import AtariConfig, ControlConfig, SACConfig
    from torchrl_eaudeqn.control import ControlDQNModule
    from torchrl_eaudeqn.data import TransitionReplay
    from torchrl_eaudeqn.envs import make_continuous_env
    from torchrl_eaudeqn.lightning import SACLightningModule
    from torchrl_eaudeqn.replay import FrameReplayBuffer
    from torchrl_eaudeqn.validation import replay_bytes, task_spaces

    cfg = AtariConfig(buffer_size=1002, num_envs=4)
    rb = FrameReplayBuffer(1002, frame_shape=(84, 84), stack=4, num_streams=4)
    assert replay_bytes(cfg) == rb.nbytes

    def stored(module) -> int:
        module._start_collection()
        try:
            module._credit = 1
            module.collect_and_learn()
        finally:
            module._stop_collection()
        if isinstance(module.replay, TransitionReplay):
            return module.replay.nbytes
        storage = module.replay.storage._storage
        return sum(t.numel() * t.element_size() for t in storage.values(True, True))

    small = dict(buffer_size=100, batch_size=8, num_members=1, learning_starts=50, env_steps=100)
    for env in ("CartPole-v1", "minatar:breakout"):
        for collector in ("lean", "torchrl"):
            control = ControlConfig(
                task=env, width=8, target_period=10, collector=collector, **small
            )
            want = replay_bytes(control, task_spaces(control))
            assert stored(ControlDQNModule(control)) == want, (env, collector)
    sac = SACConfig(env="Hopper-v5", hidden=8, **small)
    module = SACLightningModule(
        sac, lambda seed, eval: make_continuous_env(sac.env, seed=seed, max_episode_steps=50)
    )
    assert stored(module) == replay_bytes(sac, task_spaces(sac))


@pytest.mark.parametrize(
    "name",
    ["eaudeqn-Pong-dqn-small", "a b", "x.y", "a/b", "a:b", "", "  ", "../a", "a/../b", "a@b"],
)
def test_model_name_rules_agree_with_mlflow(name):
    mlflow_validation = pytest.importorskip("mlflow.utils.validation")
    from mlflow.exceptions import MlflowException

    from torchrl_eaudeqn.config import ConfigError
    from torchrl_eaudeqn.validation import check_model_name

    try:
        mlflow_validation._validate_model_name(name)
        mlflow_ok = True
    except MlflowException:
        mlflow_ok = False
    try:
        check_model_name(name)
        ours = True
    except ConfigError:
        ours = False
    # '@' is MLflow's to accept, not ours: models:/NAME@ALIAS could not name the model.
    assert ours == (mlflow_ok and "@" not in name), name


@pytest.mark.parametrize(
    "alias", ["final", "champion_2", "a-b", "v1", "V12", "v1a", "a.b", "a b", "", "x" * 256]
)
def test_alias_rules_agree_with_mlflow(alias):
    pytest.importorskip("mlflow.utils.validation")
    from mlflow.exceptions import MlflowException

    from torchrl_eaudeqn.config import ConfigError
    from torchrl_eaudeqn.tracking.checks import mlflow_alias_rules
    from torchrl_eaudeqn.validation import check_alias

    alias_rule, reserved_rule = mlflow_alias_rules()
    try:
        alias_rule(alias)
        reserved_rule(alias)
        mlflow_ok = True
    except MlflowException:
        mlflow_ok = False
    try:
        check_alias(alias)
        ours = True
    except ConfigError:
        ours = False
    assert ours == mlflow_ok, alias
