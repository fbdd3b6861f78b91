"""Train EauDeQN (or PolyPruneQN / DQN) on an Atari game with Lightning and MLflow.

    python recipes/atari_dqn.py --config configs/atari/eaudeqn.yaml env=Breakout width=small
    python recipes/atari_dqn.py --config configs/atari/quick.yaml          # ~15 min on 2 cores
    python recipes/atari_dqn.py --config configs/atari/quick.yaml --resume last

Reads top to bottom: config -> checks -> MLflow run -> Lightning fit (collector
-> frame replay -> EauDeQNLoss -> TargetSelectionCallback -> checkpoints) ->
final evaluation -> plot -> registered sparse agent. The shared plumbing
(arguments, resume, MLflow, Trainer, final steps) is torchrl_eaudeqn.trainers.recipe.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

from torchrl_eaudeqn.config import AtariConfig  # noqa: E402
from torchrl_eaudeqn.validation import check_atari, parse_args  # noqa: E402

METHODS = {"eaudeqn": "EauDeQN", "polyprune": "PolyPruneQN", "dqn": "DQN"}


def main(argv: list[str] | None = None) -> int:
    # Every check first (one line, exit 2): torch, TorchRL and Lightning load after it.
    args, cfg = parse_args(
        AtariConfig,
        argv,
        default_config="configs/atari/eaudeqn.yaml",
        description=__doc__.splitlines()[0],
        check=check_atari,
    )
    import torch

    from torchrl_eaudeqn.console import Registered, network_sparsity
    from torchrl_eaudeqn.envs import make_atari_env
    from torchrl_eaudeqn.tracking import MLflowMetrics
    from torchrl_eaudeqn.tracking.registry import network_sparsity_tags, register_network
    from torchrl_eaudeqn.trainers import DQNLightningModule, TargetSelectionCallback, recipe
    from torchrl_eaudeqn.updaters import UpdateEvent

    plot = [
        recipe.PlotPanel(
            "game score",
            (("episode_score", "episode score"), ("eval/score_mean", "evaluation score")),
        ),
        recipe.PlotPanel(
            "sparsity (prunable weights)",
            (("sparsity/member_0", "acting network"), ("sparsity/target", "target network")),
        ),
    ]

    def env_fn(seed: int, num_envs: int, eval: bool):
        return make_atari_env(
            cfg.env,
            seed=seed,
            frame_skip=cfg.frame_skip,
            sticky_actions=cfg.sticky_actions,
            max_episode_steps=cfg.eval_max_steps if eval else cfg.max_episode_steps,
            num_envs=num_envs,
            end_of_life=cfg.terminal_on_life_loss and not eval,
        )

    def build_module(metrics: MLflowMetrics) -> DQNLightningModule:
        return DQNLightningModule(cfg, env_fn, metrics)

    def build_callbacks(module: DQNLightningModule) -> list:
        def on_update(entry: UpdateEvent) -> None:
            if not entry.updates_target:
                return  # polyprune mask updates: the sparsity curve shows them
            step = module.env_steps
            module.metrics.add("target_update/selected", entry.get("selected", 0), step)
            module.metrics.add("target_update/selected_sparsity", entry["sparsity"][0], step)

        return [TargetSelectionCallback(module.updater, on_update=on_update)]

    def register(module: DQNLightningModule, result: dict, run_id: str) -> Registered:
        # The acting member: the copy of the last selected network that kept training.
        net = module.actor.member_network(0).cpu()
        tags = {
            "method": cfg.method,
            "env": cfg.env,
            "width": str(cfg.width),
            "seed": cfg.seed,
            "env_steps": module.env_steps,
            "eval_score_mean": result["eval/score_mean"],
            **network_sparsity_tags(net),
        }
        common = dict(
            example_input=torch.zeros(1, 4, 84, 84, dtype=torch.uint8),
            tags=tags,
            alias=cfg.register_alias,
            tracking_uri=cfg.tracking_uri,
            run_id=run_id,
        )
        # The study grid (recipes/study.py) reads these from the run's tags.
        client = module.metrics.client
        client.set_tag(run_id, "final_sparsity", f"{tags['sparsity_prunable']:.6f}")
        client.set_tag(run_id, "final_eval_return", f"{result['eval/score_mean']:.6f}")
        # register_format: the compact CSR form (docs/export.md) is the default
        # deployable agent; "both" also keeps the masked dense network.
        if cfg.register_format in ("dense", "both"):
            version = register_network(net, name=cfg.model_name, **common)
        if cfg.register_format in ("compact", "both"):
            suffix = "-compact" if cfg.register_format == "both" else ""
            version = register_network(net, name=cfg.model_name + suffix, compact=True, **common)
        # The summary's evaluate command plays it as the recipe evaluated it.
        play = ("--game", cfg.env, "--episodes", str(cfg.eval_episodes), "--epsilon",
                f"{cfg.eval_epsilon:g}", "--max-steps", str(cfg.eval_max_steps))  # fmt: skip
        return Registered(
            f"models:/{version.name}/{version.version}",
            (network_sparsity(net),),
            play,
            alias=cfg.register_alias,
        )

    return recipe.run_recipe(
        cfg,
        args.resume,
        build_module=build_module,
        build_callbacks=build_callbacks,
        register=register,
        plot_panels=plot,
        run_tags=cfg.tags,
        plot_name="score_sparsity.png",
        title=f"{METHODS[cfg.method]} on {cfg.env}",
    )


if __name__ == "__main__":
    sys.exit(main())
