"""Train EauDeQN (or PolyPruneQN / DQN) on a small discrete task with Lightning and MLflow.

    python recipes/control_dqn.py --config configs/study/cartpole.yaml method=eaudeqn width=512
    python recipes/control_dqn.py --config configs/study/minatar_breakout.yaml method=dqn
    python recipes/control_dqn.py --config configs/study/cartpole.yaml --resume last

The CPU testbed of the reproduction study (recipes/study.py runs a grid of
these). Reads top to bottom: config -> MLflow run -> Lightning fit (TorchRL
collector -> replay -> EauDeQNLoss -> TargetSelectionCallback -> checkpoints)
-> final evaluation -> plot -> (optionally) registered sparse agent. The shared
plumbing is torchrl_eaudeqn.trainers.recipe; the module is torchrl_eaudeqn.trainers.control.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

from torchrl_eaudeqn.config import ControlConfig  # noqa: E402
from torchrl_eaudeqn.validation import check_control, parse_args  # noqa: E402

METHODS = {"eaudeqn": "EauDeQN", "polyprune": "PolyPruneQN", "dqn": "DQN"}


def main(argv: list[str] | None = None) -> int:
    # Every check first (one line, exit 2): torch, TorchRL and Lightning load after it.
    args, cfg = parse_args(
        ControlConfig,
        argv,
        default_config=None,
        description=__doc__.splitlines()[0],
        check=check_control,
    )
    import torch

    from torchrl_eaudeqn.console import Registered, network_sparsity
    from torchrl_eaudeqn.tracking import MLflowMetrics
    from torchrl_eaudeqn.tracking.registry import network_sparsity_tags, register_network
    from torchrl_eaudeqn.trainers import ControlDQNModule, TargetSelectionCallback, recipe
    from torchrl_eaudeqn.updaters import UpdateEvent

    plot = [
        recipe.PlotPanel(
            "return",
            (("episode_return", "training episodes"), ("eval/return_mean", "evaluation")),
        ),
        recipe.PlotPanel(
            "sparsity (prunable weights)",
            (("sparsity/member_0", "acting network"), ("sparsity/target", "target network")),
        ),
    ]

    def build_module(metrics: MLflowMetrics) -> ControlDQNModule:
        return ControlDQNModule(cfg, metrics=metrics)

    def build_callbacks(module: ControlDQNModule) -> list:
        def on_update(entry: UpdateEvent) -> None:
            if not entry.updates_target:
                return  # polyprune mask updates: the sparsity curve shows them
            m, step = module.metrics, module.env_steps
            m.add("target_update/selected", entry.get("selected", 0), step)
            m.add("target_update/selected_sparsity", entry["sparsity"][0], step)

        return [TargetSelectionCallback(module.updater, on_update=on_update)]

    def register(module: ControlDQNModule, result: dict, run_id: str) -> Registered:
        net = module.actor.member_network(0).cpu()
        tags = network_sparsity_tags(net)
        sparsity = (network_sparsity(net),)
        # The study reads these from the run's tags; the registry is optional (it costs
        # seconds). Tags, not only metrics: a metric at an already-flushed step can be
        # dropped by the resume-safe metric buffer.
        client = module.metrics.client
        client.set_tag(run_id, "final_sparsity", f"{tags['sparsity_prunable']:.6f}")
        client.set_tag(run_id, "final_eval_return", f"{result['eval/return_mean']:.6f}")
        if not cfg.register:
            return Registered(None, sparsity, note="not registered (register=false)")
        obs = module.env_fn(seed=0, eval=True).observation_spec["observation"].shape
        version = register_network(
            net,
            name=cfg.model_name,
            example_input=torch.zeros(1, *obs),
            tags={
                "method": cfg.method,
                "env": cfg.env,
                "width": cfg.width,
                "seed": cfg.seed,
                "eval_return_mean": result["eval/return_mean"],
                **tags,
            },  # fmt: skip
            alias=cfg.register_alias,
            tracking_uri=cfg.tracking_uri,
            run_id=run_id,
        )
        # evaluate.py plays Atari Q-networks and SAC actors, not these small tasks.
        return Registered(
            f"models:/{version.name}/{version.version}",
            sparsity,
            None,
            alias=cfg.register_alias,
            evaluate_note="load it with torchrl_eaudeqn.tracking.registry.load_registered",
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
