"""Train EauDeQN (or PolyPruneQN / DQN) on an Atari game with Lightning and MLflow.

    python recipes/atari_dqn.py --config configs/atari/eaudeqn.yaml game=Breakout width=small
    python recipes/atari_dqn.py --config configs/atari/quick.yaml          # ~15 min on 2 cores
    python recipes/atari_dqn.py --config configs/atari/quick.yaml --resume last

Reads top to bottom: config -> checks -> MLflow run -> Lightning fit (collector
-> frame replay -> EauDeQNLoss -> TargetSelectionCallback -> checkpoints) ->
final evaluation -> plot -> registered sparse agent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar  # noqa: E402

from torchrl_eaudeqn.config import AtariConfig, ConfigError, config_diff, load_config  # noqa: E402
from torchrl_eaudeqn.envs import make_atari_env, resolve_atari_game  # noqa: E402
from torchrl_eaudeqn.lightning import (  # noqa: E402
    DQNLightningModule,
    MLflowMetrics,
    TargetSelectionCallback,
)
from torchrl_eaudeqn.registry import (  # noqa: E402
    check_tracking_uri,
    network_sparsity_tags,
    register_network,
)

# Fields that may change between a checkpoint and its resume.
RESUMABLE = (
    "env_steps", "progress_bar", "threads", "eval_every", "eval_episodes", "log_every",
    "checkpoint_every", "register_name", "register_alias", "tracking_uri", "run_name",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, AtariConfig]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/atari/eaudeqn.yaml", help="YAML config")
    p.add_argument("--resume", default=None, help="'last' or a checkpoint path")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    try:
        cfg = load_config(AtariConfig, args.config, args.overrides)
        resolve_atari_game(cfg.game)
        check_tracking_uri(cfg.tracking_uri)
    except (ConfigError, ValueError) as err:
        p.exit(2, f"error: {err}\n")
    return args, cfg


def run_key(cfg: AtariConfig) -> str:
    game = cfg.game.split("/")[-1].split("-")[0]
    return f"{game}-{cfg.method}-{cfg.width}-seed{cfg.seed}"


def find_checkpoint(cfg: AtariConfig, resume: str) -> pathlib.Path:
    path = pathlib.Path(cfg.checkpoint_dir) / run_key(cfg) / "last.ckpt"
    if resume != "last":
        path = pathlib.Path(resume)
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path}")
    return path


def read_checkpoint_header(path: pathlib.Path, cfg: AtariConfig) -> str | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["eaudeqn"]
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"--resume: {path} is not a readable checkpoint ({err})") from None
    saved = AtariConfig(**state["config"])
    diff = config_diff(saved, cfg, ignore=RESUMABLE)
    if diff:
        name, (old, new) = next(iter(diff.items()))
        raise ValueError(
            f"--resume: {path} was written with another config ({name}: {old!r} != {new!r})"
        )
    return state.get("mlflow_run_id")


def start_mlflow_run(cfg: AtariConfig, run_id: str | None):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(cfg.tracking_uri)
    if run_id is None:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
        run = client.create_run(
            exp_id,
            run_name=cfg.run_name or run_key(cfg),
            tags={"method": cfg.method, "game": cfg.game, "width": str(cfg.width)},
        )
        run_id = run.info.run_id
        for key, value in dataclasses.asdict(cfg).items():
            client.log_param(run_id, key, value)
    else:
        client.update_run(run_id, status="RUNNING")
    return client, run_id


def plot_run(client, run_id: str, out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, ax, label in (
        ("episode_score", ax1, "episode score"),
        ("eval/score_mean", ax1, "evaluation score"),
        ("sparsity/member_0", ax2, "acting network"),
        ("sparsity/target", ax2, "target network"),
    ):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if hist:
            ax.plot([m.step for m in hist], [m.value for m in hist], label=label)
    ax1.set_ylabel("game score")
    ax2.set_ylabel("sparsity (prunable weights)")
    ax2.set_xlabel("env steps")
    for ax in (ax1, ax2):
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    run_id = None
    ckpt = None
    if args.resume:
        try:
            ckpt = find_checkpoint(cfg, args.resume)
            run_id = read_checkpoint_header(ckpt, cfg)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    client, run_id = start_mlflow_run(cfg, run_id)
    metrics = MLflowMetrics(client, run_id)

    def env_fn(seed: int, num_envs: int, eval: bool):
        return make_atari_env(
            cfg.game,
            seed=seed,
            frame_skip=cfg.frame_skip,
            sticky_actions=cfg.sticky_actions,
            max_episode_steps=cfg.eval_max_steps if eval else cfg.max_episode_steps,
            num_envs=num_envs,
        )

    module = DQNLightningModule(cfg, env_fn, metrics)

    def on_update(entry: dict) -> None:
        step = module.env_steps
        metrics.add("target_update/selected", entry.get("selected", 0), step)
        metrics.add("target_update/selected_sparsity", entry["sparsity"][0], step)

    ckpt_dir = pathlib.Path(cfg.checkpoint_dir) / run_key(cfg)
    callbacks = [
        TargetSelectionCallback(module.updater, on_update=on_update),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step{step}",
            every_n_train_steps=max(1, cfg.checkpoint_every // cfg.train_freq),
            save_last=True,
            save_top_k=-1,
            auto_insert_metric_name=False,
        ),
    ]
    if cfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=50))
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[cfg.device]
    trainer = L.Trainer(
        max_epochs=-1,  # the module stops on its env-step budget
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    status = "FAILED"
    try:
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
        trainer.save_checkpoint(ckpt_dir / "last.ckpt")
        result = module.evaluate(cfg.eval_episodes)
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_run(client, run_id, pathlib.Path(tmp) / "score_sparsity.png")
            client.log_artifact(run_id, str(png))
        net = module.actor.member_network(0).cpu()
        tags = {
            "method": cfg.method,
            "game": cfg.game,
            "width": str(cfg.width),
            "seed": cfg.seed,
            "env_steps": module.env_steps,
            "eval_score_mean": result["eval/score_mean"],
            **network_sparsity_tags(net),
        }
        version = register_network(
            net,
            name=cfg.model_name,
            example_input=torch.zeros(1, 4, 84, 84, dtype=torch.uint8),
            tags=tags,
            alias=cfg.register_alias,
            tracking_uri=cfg.tracking_uri,
            run_id=run_id,
        )
        status = "FINISHED"
        print(
            f"done: {module.env_steps} env steps, eval score {result['eval/score_mean']:.2f}, "
            f"sparsity {tags['sparsity_prunable']:.4f}, "
            f"registered models:/{cfg.model_name}@{cfg.register_alias} (v{version.version}), "
            f"run {run_id}"
        )
        return 0
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        metrics.flush()
        client.set_terminated(run_id, status)


if __name__ == "__main__":
    sys.exit(main())
