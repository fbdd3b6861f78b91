"""Atari training throughput: the recipe's loop against the learner-bound rate.

Measures, in one process and one run (ratios, not absolute numbers, are the
claims; the machines are shared):

* ``update``: the bare gradient step of the config's agent on a replay
  batch already in memory (loss, backward, Adam, updater step);
* ``sample``: ``FrameReplayBuffer.sample(32)`` including stack rebuilding;
* ``pipeline``: env steps per second of the real Lightning loop
  (``DQNLightningModule`` + ``Trainer``) in the learning phase, with the
  collector, epsilon-greedy acting, replay writes, logging and the updater
  callback; for each collector: ``lean`` (the default
  :class:`~torchrl_eaudeqn.AtariCollector`, sequential), ``lean+overlap``
  (the same in a worker thread beside the learner) and ``torchrl``
  (TorchRL's ``Collector`` on the transformed env).
  Epsilon is held at 0.01 (the steady state of a run, every step acts with
  the network), the worst case for acting cost.

Learner-bound rate = ``train_freq * update rate``. Target (dense DQN, CPU):
pipeline >= 90% of it, and sample <= 10% of an update. The two are measured
in alternation inside one training run (a block of bare updates after every
``--segment`` learning env steps, their time taken out of the pipeline's
clock), so a drift in the shared machine's speed hits both; the reported
ratio is the median over segments of the segment's rate over the bound from
the blocks on both sides of it. The replay has the paper's 1M capacity
(``--buffer-size``): what costs O(capacity) per step shows.

With ``--vs-plain`` it instead compares the dense DQN recipe (default lean
collector, Lightning, updater callback; no bare-update blocks) with
:func:`plain_loop`, the same work written as a short loop (the Gymnasium env
under the recipe's, NumPy frame stacks, a 1M-capacity replay of single frames
with stacks rebuilt at sampling, the Nature CNN, fused Adam, TD loss with the
config's loss function, a hard target copy), one after the other and repeated
in alternation; target (issue: small tasks at hardware speed, item 2): recipe
>= the plain loop.

    python benchmarks/bench_atari_throughput.py                 # dqn, eaudeqn; width medium
    python benchmarks/bench_atari_throughput.py --methods dqn --collectors lean --quick
    python benchmarks/bench_atari_throughput.py --vs-plain      # dense DQN recipe vs plain loop
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

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _report import LearningClock, fit, loop_parts, machine_info, write_docs_section  # noqa: E402

from torchrl_eaudeqn.config import AtariConfig, load_config  # noqa: E402
from torchrl_eaudeqn.envs import make_atari_env, make_atari_gym_env  # noqa: E402
from torchrl_eaudeqn.lightning import DQNLightningModule, TargetSelectionCallback  # noqa: E402
from torchrl_eaudeqn.modules import NATURE_CNN_WIDTHS, nature_cnn  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def make_module(
    method: str,
    width: str,
    steps: int,
    warm: int,
    game: str,
    collector: str,
    buffer_size: int,
    overrides: tuple[str, ...] = (),
) -> DQNLightningModule:
    cfg = load_config(
        AtariConfig,
        ROOT / "configs" / "atari" / f"{method}.yaml",
        [
            f"env={game}", f"width={width}", f"env_steps={warm + steps}",
            f"learning_starts={warm}", f"buffer_size={buffer_size}", "eval_every=0",
            "progress_bar=false", "log_every=1000", f"collector={collector.split('+')[0]}",
            f"overlap={'true' if collector.endswith('+overlap') else 'false'}",
            "eps_start=0.01", "eps_end=0.01", *overrides,
        ],
    )  # fmt: skip

    def env_fn(seed: int, num_envs: int, eval: bool):
        return make_atari_env(cfg.env, seed=seed, num_envs=num_envs)

    return DQNLightningModule(cfg, env_fn)


def bare_updates(module: DQNLightningModule, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of ``reps`` bare gradient steps and of their replay samples."""
    cfg = module.cfg
    opt = module.optimizer
    upd, smp = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        batch = module.replay.sample(cfg.batch_size)
        t1 = time.perf_counter()
        out = module.loss_module(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        module.updater.step(out)
        t2 = time.perf_counter()
        smp.append(t1 - t0)
        upd.append(t2 - t1)
    return upd, smp


class Interleaved(L.Callback):
    """Times the Lightning loop in segments with blocks of bare updates between them.

    The machines are shared and their speed drifts over minutes, so the
    pipeline and the bound it is compared with are measured in alternation:
    after every ``segment`` learning env steps, ``reps`` bare updates run
    (their time is taken out of the pipeline's clock). Each segment's rate is
    compared with the median update of the blocks on both sides of it.
    """

    def __init__(self, segment: int, reps: int) -> None:
        self.segment, self.reps = segment, reps
        self.mark: tuple[float, int] | None = None
        self.segments: list[tuple[float, int]] = []  # (seconds, env steps)
        self.blocks: list[list[float]] = []
        self.samples: list[float] = []

    def _block(self, module: DQNLightningModule) -> None:
        upd, smp = bare_updates(module, self.reps)
        self.blocks.append(upd)
        self.samples += smp

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not outputs:  # still in the random steps
            return
        now = time.perf_counter()
        if self.mark is None:
            self._block(pl_module)
            self.mark = (time.perf_counter(), pl_module.env_steps)
            return
        t0, s0 = self.mark
        if pl_module.env_steps - s0 >= self.segment:
            self.segments.append((now - t0, pl_module.env_steps - s0))
            self._block(pl_module)
            self.mark = (time.perf_counter(), pl_module.env_steps)

    def summary(self, train_freq: int) -> dict:
        med = [statistics.median(b) for b in self.blocks]
        ratios = []
        for i, (sec, steps) in enumerate(self.segments):
            bound = train_freq / statistics.median([med[i], med[i + 1]])
            ratios.append(steps / sec / bound)
        all_upd = [u for b in self.blocks for u in b]
        update_s = statistics.median(all_upd)
        pipeline = sum(n for _, n in self.segments) / sum(s for s, _ in self.segments)
        return {
            "update_ms": update_s * 1e3,
            "updates_per_s": 1 / update_s,
            "update_block_medians_ms": [m * 1e3 for m in med],
            "sample_ms": statistics.median(self.samples) * 1e3,
            "sample_over_update": statistics.median(self.samples) / update_s,
            "learner_bound_env_steps_per_s": train_freq / update_s,
            "pipeline_env_steps_per_s": pipeline,
            "segment_ratios": ratios,
            "pipeline_over_bound": statistics.median(ratios),
        }


def run(module: DQNLightningModule, segment: int, reps: int) -> dict:
    clock = Interleaved(segment, reps)
    fit(module, [TargetSelectionCallback(module.updater), clock])
    if len(clock.segments) < 1:
        raise SystemExit("no complete segment: raise --steps or lower --segment")
    return clock.summary(module.cfg.train_freq)


# --------------------------------------------------------------------------- the plain loop
def plain_loop(cfg: AtariConfig, seed: int = 0) -> dict[str, float]:
    """Dense DQN on Atari as a short loop: learning-phase env steps/s and its parts' times."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = make_atari_gym_env(
        cfg.env,
        frame_skip=cfg.frame_skip,
        sticky_actions=cfg.sticky_actions,
        max_episode_steps=cfg.max_episode_steps,
    )
    n_act = int(env.action_space.n)
    width = NATURE_CNN_WIDTHS.get(cfg.width) or int(cfg.width)
    net = nature_cnn(n_act, width)
    target = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    loss_fn = {"l2": F.mse_loss, "smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss}
    loss_fn = loss_fn[cfg.loss_function]
    # One frame per transition (newest of s and of s'), stacks rebuilt at sampling;
    # torch.empty maps the 1M capacity without touching it, as the recipe's replay does.
    cap = cfg.buffer_size
    frames = torch.empty((cap, 84, 84), dtype=torch.uint8)
    next_frames = torch.empty((cap, 84, 84), dtype=torch.uint8)
    ep_start = torch.zeros(cap, dtype=torch.long)
    acts = torch.zeros(cap, dtype=torch.long)
    rews = torch.zeros(cap)
    dones = torch.zeros(cap)
    offsets = torch.arange(-3, 1)
    stack = np.zeros((4, 84, 84), np.uint8)
    frame, _ = env.reset(seed=seed)
    stack[-1], start, size = frame, 0, 0
    t_env = t_act = t_grad = 0.0
    clock = None
    for t in range(1, cfg.env_steps + 1):
        learning = t > cfg.learning_starts
        if learning and clock is None:
            clock, t_env, t_act, t_grad = time.perf_counter(), 0.0, 0.0, 0.0
        a0 = time.perf_counter()
        if not learning or rng.random() < cfg.eps_end:
            action = int(rng.integers(n_act))
        else:
            with torch.no_grad():
                action = int(net(torch.from_numpy(stack).unsqueeze(0)).argmax())
        a1 = time.perf_counter()
        frame, reward, terminated, truncated, _ = env.step(action)
        a2 = time.perf_counter()
        t_act, t_env = t_act + a1 - a0, t_env + a2 - a1
        i = size % cap  # the benchmark never wraps; a real run would mask across the seam
        frames[i], next_frames[i] = torch.from_numpy(stack[-1]), torch.from_numpy(frame)
        ep_start[i], acts[i], rews[i], dones[i] = start, action, np.sign(reward), terminated
        size += 1
        stack = np.roll(stack, -1, axis=0)
        stack[-1] = frame
        if terminated or truncated:
            frame, _ = env.reset()
            stack[:] = 0
            stack[-1], start = frame, size
        if learning and t % cfg.train_freq == 0:
            g0 = time.perf_counter()
            idx = torch.randint(min(size, cap), (cfg.batch_size,))
            pos = idx.unsqueeze(1) + offsets  # [B, 4] frame indices of s
            valid = (pos >= ep_start[idx].unsqueeze(1)).view(-1, 4, 1, 1)
            obs = frames[pos.clamp(min=0)] * valid
            nxt = torch.cat([obs[:, 1:], next_frames[idx].unsqueeze(1)], dim=1)
            with torch.no_grad():
                y = rews[idx] + cfg.gamma * (1.0 - dones[idx]) * target(nxt).max(-1).values
            q = net(obs).gather(-1, acts[idx].unsqueeze(-1)).squeeze(-1)
            loss = loss_fn(q, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t_grad += time.perf_counter() - g0
        if learning and t % cfg.target_period == 0:
            g0 = time.perf_counter()
            target.load_state_dict(net.state_dict())
            t_grad += time.perf_counter() - g0
    seconds = time.perf_counter() - clock
    steps = cfg.env_steps - cfg.learning_starts
    env.close()
    return loop_parts(steps, seconds, t_env, t_act, t_grad)


def recipe_rate(module: DQNLightningModule, trainer: str = "recipe") -> float:
    """Learning-phase env steps/s of the Atari recipe's module.

    ``trainer="recipe"``: under the recipe's ``make_trainer`` (the NaN/Inf guard
    before every optimizer step; no checkpoint falls inside the budget);
    ``"bare"``: a Trainer with the updater callback only.
    """
    clock = LearningClock()
    fit(module, [TargetSelectionCallback(module.updater), clock], trainer)
    return clock.rate()


def vs_plain(args: argparse.Namespace) -> None:
    """The dense DQN recipe against :func:`plain_loop`, alternating, in this process."""
    reps = []
    shape = (args.width, args.steps, args.warm, args.game, "lean", args.buffer_size)
    for _ in range(args.repeats):
        torch.manual_seed(0)
        module = make_module("dqn", *shape, tuple(args.set))
        plain = plain_loop(module.cfg)
        recipe = recipe_rate(module)
        torch.manual_seed(0)
        bare = recipe_rate(make_module("dqn", *shape, tuple(args.set)), "bare")
        del module
        parts = plain["env_us"] + plain["act_us"] + plain["grad_us"]
        reps.append({"recipe": recipe, "bare": bare,
                     **{f"plain_{n}": v for n, v in plain.items()},
                     "recipe_overhead_us": 1e6 / recipe - parts})  # fmt: skip
        print({n: round(v, 1) for n, v in reps[-1].items()}, flush=True)
    med = {n: statistics.median(r[n] for r in reps) for n in reps[0]}
    ratio = statistics.median(r["recipe"] / r["plain_rate"] for r in reps)
    bare_ratio = statistics.median(r["bare"] / r["plain_rate"] for r in reps)
    out = {**machine_info(), "game": args.game, "width": args.width, "steps": args.steps,
           "warm": args.warm, "buffer_size": args.buffer_size, **med, "ratio": ratio,
           "bare_ratio": bare_ratio, "overrides": args.set,
           "repeats": reps}  # fmt: skip
    # Runs with --set are experiments: their JSON is kept apart and the docs keep the defaults'.
    name = "atari_vs_plain_cpu" + ("_quick" if args.quick else "") + ("_set" if args.set else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"## Atari: the dense DQN recipe against a plain loop (CPU, {out['threads']} threads)",
        "",
        "`python benchmarks/bench_atari_throughput.py --vs-plain`: the dense DQN recipe",
        "(`configs/atari/dqn.yaml`, lean collector, loss on plain tensors, under the",
        "recipe's `make_trainer` with its NaN/Inf guard; a bare Trainer in brackets) against",
        "`plain_loop` in the same file (the same Gymnasium env, NumPy frame stacks, a replay",
        "of single frames with stacks rebuilt at sampling, the Nature CNN, fused Adam, TD",
        "loss, hard target copy), one after the other in one process. "
        f"{args.game}, width {args.width}, replay capacity {args.buffer_size:,} (both), "
        f"{args.steps} learning env steps after {args.warm} random ones, epsilon 0.01, "
        f"{args.repeats} alternating repeats (medians); `benchmarks/results/{name}.json`. "
        "Target (issue: small tasks at hardware speed, item 2): recipe >= the plain loop.",
        "",
        "| recipe (bare) env steps/s | plain loop env steps/s | recipe / plain (per repeat) "
        "| recipe overhead (us/env step) | plain overhead (us/env step) "
        "| env / act / grad (us/env step) |",
        "|---|---|---|---|---|---|",
        f"| {med['recipe']:.1f} ({med['bare']:.1f}) | {med['plain_rate']:.1f} | {ratio:.2f}x ("
        + ", ".join(f"{r['recipe'] / r['plain_rate']:.2f}" for r in reps)
        + f"; bare {bare_ratio:.2f}x) | {med['recipe_overhead_us']:.0f} "
        f"| {med['plain_overhead_us']:.0f} "
        f"| {med['plain_env_us']:.0f} / {med['plain_act_us']:.0f} / {med['plain_grad_us']:.0f} |",
    ]
    print("\n".join(lines))
    if not args.quick and not args.set:
        write_docs_section("atari_vs_plain:cpu", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["dqn", "eaudeqn"])
    p.add_argument("--collectors", nargs="+", default=["lean", "lean+overlap", "torchrl"])
    p.add_argument("--width", default="medium")
    p.add_argument("--game", default="Breakout")
    p.add_argument("--steps", type=int, default=4000, help="learning-phase env steps timed")
    p.add_argument("--warm", type=int, default=1000, help="random env steps first")
    p.add_argument("--segment", type=int, default=400, help="env steps between update blocks")
    p.add_argument("--reps", type=int, default=12, help="bare updates per block")
    p.add_argument(
        "--buffer-size", type=int, default=1_000_000,
        help="replay capacity (the paper's 1M; frames are allocated as they are written)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="short run, results not written to docs")
    p.add_argument("--vs-plain", action="store_true", help="dense DQN recipe vs a plain loop")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats (--vs-plain)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override of the recipe's module (--vs-plain; repeatable)",
    )  # fmt: skip
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vs_plain:
        vs_plain(args)
        return
    rows = []
    for method in args.methods:
        for collector in args.collectors:
            torch.manual_seed(0)
            module = make_module(
                method, args.width, args.steps, args.warm, args.game, collector, args.buffer_size
            )
            row = {
                "method": method,
                "collector": collector,
                "members": module.cfg.members,
                "width": args.width,
                **run(module, args.segment, args.reps),
            }
            rows.append(row)
            print(json.dumps(rows[-1]))
    out = {
        **machine_info(),
        "game": args.game,
        "timed_env_steps": args.steps,
        "buffer_size": args.buffer_size,
        "segment_env_steps": args.segment,
        "bare_updates_per_block": args.reps,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "atari_throughput_cpu" + ("_quick" if args.quick else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    table = [
        "| method | K | collector | update ms | sample ms (ratio) | learner bound steps/s | "
        "pipeline steps/s | pipeline / bound (segments: min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['method']} | {r['members']} | {r['collector']} | {r['update_ms']:.1f} | "
            f"{r['sample_ms']:.2f} "
            f"({r['sample_over_update']:.1%}) | {r['learner_bound_env_steps_per_s']:.0f} | "
            f"{r['pipeline_env_steps_per_s']:.0f} | {r['pipeline_over_bound']:.1%} "
            f"({min(r['segment_ratios']):.0%}-{max(r['segment_ratios']):.0%}) |"
        )
    print("\n".join(table))
    if not args.quick:
        write_docs_section(
            "atari_throughput:cpu",
            f"## Atari training throughput (CPU, {out['threads']} threads, {args.game}, "
            f"width {args.width})\n\nFrom `benchmarks/results/{name}.json`; "
            "`python benchmarks/bench_atari_throughput.py`. Learner bound = "
            "train_freq x bare update rate of the same agent, measured in the same run, "
            f"in blocks of {args.reps} bare updates after every {args.segment} learning "
            f"env steps; ratio = median over segments. Replay capacity {args.buffer_size:,}; "
            f"{args.steps} learning env steps per row.\n\n" + "\n".join(table),
        )


if __name__ == "__main__":
    main()
