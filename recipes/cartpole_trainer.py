"""EauDeQN on CartPole inside TorchRL's own `Trainer` (no Lightning).

Shows how the three components drop into a plain TorchRL training loop:
a collector with epsilon-greedy acting by the selected member, a replay
buffer, `EauDeQNLoss`, and `TargetSelectionUpdater` registered as a hook.

    python recipes/cartpole_trainer.py --frames 20000
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from tensordict.nn import TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import GymEnv, RewardSum, StepCounter, TransformedEnv
from torchrl.modules import EGreedyModule
from torchrl.trainers import ReplayBufferTrainer, Trainer

from torchrl_eaudeqn import (
    EauDeQNLoss,
    LinearSpeedGrid,
    MaskedEnsembleQValueActor,
    TargetSelectionUpdater,
    mlp,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="CartPole-v1", help="discrete-action Gymnasium id")
    p.add_argument("--frames", type=int, default=20_000, help="env steps in total")
    p.add_argument("--members", type=int, default=5, help="K online networks")
    p.add_argument("--width", type=int, default=128, help="hidden width of the 2-layer MLP")
    p.add_argument("--period", type=int, default=250, help="gradient steps per target update")
    p.add_argument("--max-speed", type=float, default=0.1, help="fastest pruning speed")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=64, help="replay batch size")
    p.add_argument("--frames-per-batch", type=int, default=16, help="collector batch")
    p.add_argument("--updates-per-batch", type=int, default=4, help="gradient steps per batch")
    p.add_argument("--random-frames", type=int, default=1000, help="random steps before learning")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--progress", action="store_true", help="show the progress bar")
    args = p.parse_args(argv)
    for name in ("frames", "members", "width", "period", "batch_size", "frames_per_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def build_trainer(args: argparse.Namespace) -> tuple[Trainer, TargetSelectionUpdater]:
    torch.manual_seed(args.seed)
    env = TransformedEnv(GymEnv(args.env), StepCounter())
    env.append_transform(RewardSum())
    env.set_seed(args.seed)
    n_obs = env.observation_spec["observation"].shape[-1]
    n_actions = env.action_spec.space.n
    actor = MaskedEnsembleQValueActor(
        mlp(n_obs, n_actions, hidden=(args.width, args.width)),
        args.members,
        action_spec=env.action_spec,
    )
    explore = EGreedyModule(
        env.action_spec, eps_init=1.0, eps_end=0.05, annealing_num_steps=args.frames // 4
    )
    collector = Collector(
        env,
        TensorDictSequential(actor.policy, explore),
        frames_per_batch=args.frames_per_batch,
        total_frames=args.frames,
        init_random_frames=args.random_frames,
    )
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=0.99)
    optimizer = torch.optim.Adam(loss.parameters(), lr=args.lr)
    trainer = Trainer(
        collector=collector,
        total_frames=args.frames,
        frame_skip=1,
        optim_steps_per_batch=args.updates_per_batch,
        loss_module=loss,
        optimizer=optimizer,
        clip_norm=None,  # a joint norm clip would couple the members
        progress_bar=args.progress,
        save_trainer_file=None,
    )
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(50_000), batch_size=args.batch_size)
    ReplayBufferTrainer(buffer, batch_size=args.batch_size).register(trainer)
    trainer.register_op("post_steps", explore.step, frames=args.frames_per_batch)
    updater = TargetSelectionUpdater(
        loss, optimizer, period=args.period, speed_policy=LinearSpeedGrid(args.max_speed)
    )
    updater.register(trainer)
    return trainer, updater


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    trainer, updater = build_trainer(args)
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    actor = updater.actor
    env = TransformedEnv(GymEnv(args.env), StepCounter(max_steps=500))
    env.set_seed(args.seed + 1)
    with torch.no_grad():
        returns = [float(env.rollout(500, actor.policy)["next", "reward"].sum()) for _ in range(5)]
    summary = {
        "env_steps": args.frames,
        "seconds": round(elapsed, 1),
        "target_updates": updater.history_total,
        "selected": [h["selected"] for h in updater.history],  # the newest history_len
        "final_sparsity_per_member": [round(float(s), 4) for s in actor.sparsity()],
        "greedy_return_mean": sum(returns) / len(returns),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
