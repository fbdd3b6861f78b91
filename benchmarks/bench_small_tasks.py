"""Small tasks: the control recipe's loop against a plain PyTorch loop doing the same work.

For CartPole-v1 (the MLP of ``configs/study/cartpole.yaml``) and MinAtar
Breakout (the MinAtar CNN of ``configs/study/minatar_breakout.yaml``), dense
DQN (K = 1) and EauDeQN (K = 5), in one process, one after the other and
repeated in alternation (the machines are shared; the ratios are the claims):

* ``recipe``: env steps per second of ``ControlDQNModule`` in the learning
  phase, on its default lean path (``ControlCollector``, ``TransitionReplay``,
  ``td_losses``, ``steps_per_call``), under the recipe's own trainer
  (``make_trainer``: the NaN/Inf guard runs before every optimizer step;
  checkpoints and MLflow cost per checkpoint or log, not per step, and none
  falls inside the timed steps); ``bare``: the same module under a Trainer
  with the updater callback only;
* ``plain``: the same work written as a short loop (Gymnasium env, the same
  network from ``torchrl_eaudeqn.modules``, a preallocated tensor replay, one
  fused Adam over the K members, epsilon-greedy acting with the acting member,
  per-member TD losses against one target, masks re-applied after each step,
  and at each target update the member with the smallest summed loss copied
  into the target and into every member, members 1..K-1 pruned further).

Epsilon is held at 0.01 in both, so every step acts with the network. The
plain loop times its env steps, acting forwards and gradient steps; what is
left of a recipe env step after those (taken from the plain loop of the same
repeat) is the recipe's per-env-step overhead, reported in microseconds.

    python benchmarks/bench_small_tasks.py              # both tasks, K = 1 and 5, 2 repeats
    python benchmarks/bench_small_tasks.py --quick      # fewer steps, writes *_quick.json only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

import gymnasium as gym  # noqa: E402
import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import LearningClock, fit, loop_parts, machine_info, write_docs_section  # noqa: E402

from torchrl_eaudeqn.config import ControlConfig, load_config  # noqa: E402
from torchrl_eaudeqn.modules.dqn import minatar_cnn, mlp  # noqa: E402
from torchrl_eaudeqn.sparsity import magnitude_masks, prunable_parameter_names  # noqa: E402
from torchrl_eaudeqn.trainers import ControlDQNModule, TargetSelectionCallback  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASKS = {
    "cartpole": ROOT / "configs" / "study" / "cartpole.yaml",
    "minatar": ROOT / "configs" / "study" / "minatar_breakout.yaml",
}


def config(task: str, k: int, warm: int, steps: int, width: int) -> ControlConfig:
    return load_config(
        ControlConfig,
        TASKS[task],
        [
            f"method={'eaudeqn' if k > 1 else 'dqn'}", f"num_members={k}", f"width={width}",
            f"learning_starts={warm}", f"env_steps={warm + steps}", "eps_start=0.01",
            "eps_end=0.01", "eval_random_baseline=false", "progress_bar=false", "device=cpu",
        ],
    )  # fmt: skip


# --------------------------------------------------------------------------- the recipe
def recipe_rate(cfg: ControlConfig, trainer: str = "recipe") -> float:
    """Learning-phase env steps/s of the control recipe's module under Lightning.

    ``trainer="recipe"``: the recipe's own ``make_trainer`` (NaN/Inf guard before
    every optimizer step, env-step checkpoints, graceful stop; no progress bar,
    no MLflow), checkpoints in a temporary directory (none falls inside the
    timed steps: ``checkpoint_every`` is past the budget). ``"bare"``: a
    Trainer with the updater callback only.
    """
    L.seed_everything(cfg.seed, verbose=False)
    module = ControlDQNModule(cfg)
    clock = LearningClock()
    callbacks = [TargetSelectionCallback(module.updater), clock]
    fit(module, callbacks, trainer)
    return clock.rate()


# --------------------------------------------------------------------------- the plain loop
def _env(cfg: ControlConfig) -> gym.Env:
    if cfg.env.startswith("minatar:"):
        from minatar.gym import register_envs

        register_envs()
        return gym.make(f"MinAtar/{cfg.env[8:].title()}-v1", sticky_action_prob=0.1)
    cap = cfg.max_episode_steps  # 0: the env's own limit, as make_task_env reads it
    return gym.make(cfg.env, **({"max_episode_steps": cap} if cap > 0 else {}))


def _obs(cfg: ControlConfig, obs: np.ndarray) -> torch.Tensor:
    if cfg.env.startswith("minatar:"):  # bool [10, 10, C] -> float [C, 10, 10]
        obs = np.moveaxis(obs, -1, 0)
    return torch.as_tensor(np.ascontiguousarray(obs), dtype=torch.float32)


def plain_loop(cfg: ControlConfig, seed: int = 0) -> dict[str, float]:
    """The same work as a plain loop: learning-phase env steps/s and the time of its parts."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = _env(cfg)
    obs, _ = env.reset(seed=seed)
    x = _obs(cfg, obs)
    n_act = int(env.action_space.n)
    if x.ndim == 3:
        net = minatar_cnn(x.shape[0], n_act, cfg.width)
    else:
        net = mlp(x.shape[-1], n_act, hidden=(cfg.width, cfg.width))
    k_members = cfg.members
    members = [copy.deepcopy(net) for _ in range(k_members)]
    target = copy.deepcopy(net)
    names = prunable_parameter_names(net)
    masks = [{n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters()
              if n in names} for _ in members]  # fmt: skip
    params = [p for m in members for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    cap = cfg.buffer_size
    buf_obs = torch.zeros((cap, *x.shape))
    buf_next = torch.zeros((cap, *x.shape))
    buf_act = torch.zeros(cap, dtype=torch.long)
    buf_rew = torch.zeros(cap)
    buf_done = torch.zeros(cap)
    sums = torch.zeros(k_members)
    speeds = [cfg.max_speed * k / max(1, k_members - 1) for k in range(k_members)]
    acting, size = 0, 0
    t_env = t_act = t_grad = 0.0
    start = None
    for t in range(1, cfg.env_steps + 1):
        learning = t > cfg.learning_starts
        if learning and start is None:
            start, t_env, t_act, t_grad = time.perf_counter(), 0.0, 0.0, 0.0
        a0 = time.perf_counter()
        if not learning or rng.random() < cfg.eps_end:
            action = int(rng.integers(n_act))
        else:
            with torch.no_grad():
                action = int(members[acting](x.unsqueeze(0)).argmax())
        a1 = time.perf_counter()
        obs, reward, terminated, truncated, _ = env.step(action)
        a2 = time.perf_counter()
        t_act, t_env = t_act + a1 - a0, t_env + a2 - a1
        nxt = _obs(cfg, obs)
        i = size % cap
        buf_obs[i], buf_next[i], buf_act[i] = x, nxt, action
        buf_rew[i], buf_done[i] = float(reward), float(terminated)
        size += 1
        x = nxt
        if terminated or truncated:
            obs, _ = env.reset()
            x = _obs(cfg, obs)
        if learning and t % cfg.train_freq == 0:
            g0 = time.perf_counter()
            idx = torch.randint(min(size, cap), (cfg.batch_size,))
            with torch.no_grad():
                q_next = target(buf_next[idx]).max(-1).values
                y = buf_rew[idx] + cfg.gamma * (1.0 - buf_done[idx]) * q_next
            act = buf_act[idx].unsqueeze(-1)
            losses = torch.stack(
                [((m(buf_obs[idx]).gather(-1, act).squeeze(-1) - y) ** 2).mean() for m in members]
            )
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
            with torch.no_grad():
                for m, mk in zip(members, masks, strict=True):
                    for n, p in m.named_parameters():
                        if n in mk:
                            p.mul_(mk[n])
                sums += losses.detach()
            t_grad += time.perf_counter() - g0
        if learning and t % cfg.target_period == 0:
            g0 = time.perf_counter()
            win = int(sums.argmin()) if k_members > 1 else 0
            state = copy.deepcopy(members[win].state_dict())
            target.load_state_dict(state)
            if k_members > 1:
                win_masks = masks[win]
                kept = sum(int(v.sum()) for v in win_masks.values())
                total = sum(v.numel() for v in win_masks.values())
                base = 1.0 - kept / total
                for k, m in enumerate(members):
                    m.load_state_dict(state)
                    weights = {n: p.detach() for n, p in m.named_parameters() if n in win_masks}
                    s = base + (1.0 - base) * speeds[k]
                    masks[k] = magnitude_masks(weights, s, masks=win_masks)
                opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
                sums.zero_()
                acting = 0
            t_grad += time.perf_counter() - g0
    seconds = time.perf_counter() - start
    steps = cfg.env_steps - cfg.learning_starts
    env.close()
    return loop_parts(steps, seconds, t_env, t_act, t_grad)


# --------------------------------------------------------------------------- report
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps; writes *_quick.json only")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--members", nargs="+", type=int, default=[1, 5])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps, warm = (1500, 500) if args.quick else (6000, 1000)
    widths = {"cartpole": 256, "minatar": 256}
    rows = []
    for task in args.tasks:
        for k in args.members:
            cfg = config(task, k, warm, steps, widths[task])
            reps = []
            for _ in range(args.repeats):
                plain = plain_loop(cfg)
                recipe = recipe_rate(cfg)
                bare = recipe_rate(cfg, trainer="bare")
                parts = plain["env_us"] + plain["act_us"] + plain["grad_us"]
                reps.append({"recipe": recipe, "bare": bare,
                             **{f"plain_{n}": v for n, v in plain.items()},
                             "recipe_overhead_us": 1e6 / recipe - parts})  # fmt: skip
                print(task, k, {n: round(v, 1) for n, v in reps[-1].items()}, flush=True)
            med = {n: statistics.median(r[n] for r in reps) for n in reps[0]}
            ratio = statistics.median(r["recipe"] / r["plain_rate"] for r in reps)
            bare_ratio = statistics.median(r["bare"] / r["plain_rate"] for r in reps)
            rows.append({"task": task, "members": k, "width": widths[task], **med,
                         "ratio": ratio, "bare_ratio": bare_ratio,
                         "per_repeat": [round(r["recipe"] / r["plain_rate"], 3) for r in reps],
                         "repeats": reps})  # fmt: skip
    out = {"machine": machine_info(), "steps": steps, "warm": warm, "rows": rows}
    name = "small_tasks_cpu_quick.json" if args.quick else "small_tasks_cpu.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "## Small tasks: the control recipe against a plain PyTorch loop (CPU)",
        "",
        "`benchmarks/bench_small_tasks.py`: `ControlDQNModule` (lean path: `ControlCollector`,",
        "`TransitionReplay`, `EauDeQNLoss.td_losses`, `steps_per_call` 16) under the recipe's",
        "trainer (`make_trainer`: NaN/Inf guard before every optimizer step, env-step",
        "checkpoints, graceful stop; MLflow and the progress bar off) and under a bare",
        "Trainer with the updater callback only, against a plain loop doing the",
        "same work (Gymnasium env, the same network, tensor replay, fused Adam, K members",
        "against one target, masks re-applied, selection and pruning at each target",
        "update), one after the other in one process. Overhead: what is left of an env",
        "step after the env step, the acting forward and the gradient steps (those three",
        "timed in the plain loop). Target (issue: small tasks at hardware speed): recipe",
        ">= 0.8x the plain loop.",
        "",
        f"Learning phase of {steps} env steps after {warm} random ones, epsilon 0.01, "
        f"{args.threads} threads, {args.repeats} alternating repeats (medians); "
        f"`benchmarks/results/{name}`.",
        "",
        "| task | K | recipe env steps/s | plain loop env steps/s | recipe / plain (per repeat) "
        "| bare Trainer / plain | recipe overhead (us/env step) | plain overhead (us/env step) "
        "| env / act / grad (us/env step) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        each = ", ".join(f"{x:.2f}" for x in r["per_repeat"])
        lines.append(
            f"| {r['task']} | {r['members']} | {r['recipe']:.0f} | {r['plain_rate']:.0f} "
            f"| {r['ratio']:.2f}x ({each}) | {r['bare_ratio']:.2f}x "
            f"| {r['recipe_overhead_us']:.0f} | {r['plain_overhead_us']:.0f} "
            f"| {r['plain_env_us']:.0f} / {r['plain_act_us']:.0f} / {r['plain_grad_us']:.0f} |"
        )
    print("\n".join(lines))
    if not args.quick:
        write_docs_section("small_tasks:cpu", "\n".join(lines))


if __name__ == "__main__":
    main()
