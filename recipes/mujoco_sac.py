"""Train EauDeSAC (or PolyPruneSAC / SAC) on a MuJoCo task with Lightning and MLflow.

    python recipes/mujoco_sac.py                          # EauDeSAC, HalfCheetah-v5, 1M steps
    python recipes/mujoco_sac.py --config configs/mujoco/eaudesac.yaml env=Hopper-v5
    python recipes/mujoco_sac.py --config configs/mujoco/quick.yaml        # < 15 min on 2 cores
    python recipes/mujoco_sac.py --config configs/mujoco/quick.yaml --resume last

Reads top to bottom: config -> checks -> MLflow run -> Lightning fit (TorchRL
collector -> replay -> EauDeSACLoss -> TargetSelectionCallback -> checkpoints)
-> final evaluation (deterministic selected actor) -> plot -> registered sparse
actor. The shared plumbing (arguments, resume, MLflow, Trainer, final steps)
is torchrl_eaudeqn.trainers.recipe.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

from torchrl_eaudeqn.config import SACConfig  # noqa: E402
from torchrl_eaudeqn.validation import check_sac, parse_args  # noqa: E402

#: Registry kind of a deterministic SAC actor (obs float32 [B, obs_dim] -> action [B, act_dim]).
KIND = "sac_actor"

METHODS = {"eaudesac": "EauDeSAC", "polyprune": "PolyPruneSAC", "sac": "SAC"}


def main(argv: list[str] | None = None) -> int:
    # Every check first (one line, exit 2): torch, TorchRL and Lightning load after it.
    args, cfg = parse_args(
        SACConfig,
        argv,
        default_config="configs/mujoco/eaudesac.yaml",
        description=__doc__.splitlines()[0],
        check=check_sac,
    )
    import torch

    from torchrl_eaudeqn.console import (
        Registered,
        SparsityReport,
        layer_labels,
        network_sparsity,
    )
    from torchrl_eaudeqn.envs import make_continuous_env
    from torchrl_eaudeqn.tracking import MLflowMetrics
    from torchrl_eaudeqn.tracking.registry import network_sparsity_tags, register_network
    from torchrl_eaudeqn.trainers import SACLightningModule, TargetSelectionCallback, recipe
    from torchrl_eaudeqn.updaters import UpdateEvent

    plot = [
        recipe.PlotPanel(
            "return",
            (
                ("episode_return", "training episodes"),
                ("eval/return_mean", "evaluation (deterministic)"),
            ),
        ),
        recipe.PlotPanel(
            "sparsity (prunable weights)",
            (
                ("sparsity/actor_selected", "selected actor"),
                ("sparsity/critic_selected", "selected critic"),
            ),
        ),
    ]

    def env_fn(seed: int, eval: bool):
        steps = cfg.eval_max_steps if eval else cfg.max_episode_steps
        return make_continuous_env(cfg.env, seed=seed, max_episode_steps=steps)

    def build_module(metrics: MLflowMetrics) -> SACLightningModule:
        return SACLightningModule(cfg, env_fn, metrics)

    def build_callbacks(module: SACLightningModule) -> list:
        def on_update(entry: UpdateEvent) -> None:
            m, step = module.metrics, module.env_steps
            if entry.roles:  # a selection (polyprune logs prune events instead)
                m.add("selection/actor_selected", entry["actor_selected"], step)
                m.add("selection/critic_selected", entry["critic_selected"], step)
                m.add("selection/actor_sparsity", entry["actor_selected_sparsity"], step)
                m.add("selection/critic_sparsity", entry["critic_selected_sparsity"], step)

        return [TargetSelectionCallback(module.updater, on_update=on_update)]

    def register(module: SACLightningModule, result: dict, run_id: str) -> Registered:
        # The selected actor member (member 0 after a selection: the winner's
        # copy that kept training), deterministic: obs -> scaled tanh(mean).
        policy = module.acting_policy().cpu()
        critic = module.critic.sparsity_stats()
        k = module.critic.selected
        tags = {
            "method": cfg.method,
            "env": cfg.env,
            "seed": cfg.seed,
            "env_steps": module.env_steps,
            "width": cfg.width,
            "depth": cfg.depth,
            "num_members": cfg.members,
            "eval_return_mean": result["eval/return_mean"],
            "eval_return_std": result["eval/return_std"],
            "critic_sparsity_prunable": float(critic["prunable"][k]),
            "critic_sparsity_overall": float(critic["overall"][k]),
            **{f"critic_sparsity.{n}": float(s[k]) for n, s in critic["per_layer"].items()},
        }
        # The study grid (recipes/study.py) reads these from the run's tags: the
        # final deterministic evaluation and the registered (selected) actor's
        # sparsity over its prunable weights, as the version tag computes it.
        client = module.metrics.client
        actor_sparsity = network_sparsity_tags(policy)["sparsity_prunable"]
        client.set_tag(run_id, "final_eval_return", f"{result['eval/return_mean']:.6f}")
        client.set_tag(run_id, "final_sparsity", f"{actor_sparsity:.6f}")
        client.set_tag(run_id, "final_critic_sparsity", f"{tags['critic_sparsity_prunable']:.6f}")
        common = dict(
            example_input=torch.zeros(1, module.observation_dim),
            tags=tags,
            alias=cfg.register_alias,
            tracking_uri=cfg.tracking_uri,
            run_id=run_id,
            kind=KIND,
        )
        # As in the Atari recipe: the compact CSR actor (docs/export.md) by
        # default, "both" also keeps the masked dense actor.
        if cfg.register_format in ("dense", "both"):
            version = register_network(policy, name=cfg.model_name, **common)
        if cfg.register_format in ("compact", "both"):
            suffix = "-compact" if cfg.register_format == "both" else ""
            version = register_network(policy, name=cfg.model_name + suffix, compact=True, **common)
        names = list(critic["per_layer"])
        critic_report = SparsityReport(
            "critic",
            tags["critic_sparsity_prunable"],
            tags["critic_sparsity_overall"],
            tuple(
                (label, float(critic["per_layer"][n][k]))
                for label, n in zip(layer_labels(names), names, strict=True)
            ),
        )
        play = ("--env", cfg.env, "--episodes", str(cfg.eval_episodes),
                "--max-steps", str(cfg.eval_max_steps))  # fmt: skip
        return Registered(
            f"models:/{version.name}/{version.version}",
            (network_sparsity(policy, "actor"), critic_report),
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
        plot_name="return_sparsity.png",
        title=f"{METHODS[cfg.method]} on {cfg.env}",
    )


if __name__ == "__main__":
    sys.exit(main())
