"""MuJoCo SAC training throughput: env steps/s of the recipe's Lightning loop, K = 1 and 5.

Measures, in one process (the machines are shared: compare within a run):

* ``collect``: env steps/s of the loop before ``learning_starts`` (TorchRL
  ``Collector`` with uniformly random actions, replay writes, no learning):
  the collection ceiling;
* ``update``: the bare gradient step on a replay batch already in memory
  (``EauDeSACLoss`` forward, backward, fused Adam, updater step);
* ``pipeline``: env steps/s of the real Lightning loop
  (``SACLightningModule`` + ``Trainer`` + ``TargetSelectionCallback``) in the
  learning phase: acting with the selected actor member, replay writes and
  sampling, one gradient step per env step, logging, selections.

Learner bound = ``train_freq`` x update rate. Methods: ``sac`` (K = 1, dense)
and ``eaudesac`` (K = 5), HalfCheetah-v5, standard settings (256x256, batch 256).
``cpu_wait`` is the run-queue delay of this process's threads over the wall
time (``/proc/self/task/*/schedstat``): ~0 on a quiet machine; other jobs on
a shared machine raise it and slow every number down.

    python benchmarks/bench_sac_throughput.py
    python benchmarks/bench_sac_throughput.py --quick        # short, results not written to docs
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from _report import fit, machine_info, write_docs_section  # noqa: E402

from torchrl_eaudeqn.config import SACConfig, load_config  # noqa: E402
from torchrl_eaudeqn.envs import make_continuous_env  # noqa: E402
from torchrl_eaudeqn.lightning import SACLightningModule, TargetSelectionCallback  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_delay_s() -> float | None:
    """Seconds this process's threads spent ready to run but waiting for a core."""
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def make_module(method: str, members: int, steps: int, warm: int, env: str) -> SACLightningModule:
    cfg = load_config(
        SACConfig,
        ROOT / "configs" / "mujoco" / f"{method}.yaml",
        [
            f"env={env}", f"num_members={members}", f"env_steps={warm + steps}",
            f"learning_starts={warm}", "buffer_size=100000", "eval_every=0",
            "progress_bar=false", "log_every=1000",
        ],
    )  # fmt: skip

    def env_fn(seed: int, eval: bool):
        return make_continuous_env(cfg.env, seed=seed, max_episode_steps=cfg.max_episode_steps)

    return SACLightningModule(cfg, env_fn)


def time_update(module: SACLightningModule, reps: int) -> float:
    """Median seconds of one gradient step (replay sample excluded)."""
    opt = module.optimizer
    times = []
    for i in range(reps + 3):
        batch = module.replay.sample()
        t0 = time.perf_counter()
        out = module.loss_module(batch)
        opt.zero_grad()
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        opt.step()
        module.updater.step(out)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_pipeline(module: SACLightningModule) -> tuple[float, float]:
    """(env steps/s before learning_starts, env steps/s after) of the Lightning loop."""
    marks: dict[str, tuple[float, int]] = {}

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = (time.perf_counter(), pl_module.env_steps)
            if pl_module.env_steps == 100:
                marks["collect_start"] = now  # past the collector's start-up
            if not outputs:
                marks["collect_end"] = now
            else:
                marks.setdefault("learn_start", now)
                marks["learn_end"] = now

    fit(module, [TargetSelectionCallback(module.updater), Clock()])

    def rate(a: str, b: str) -> float:
        (t0, s0), (t1, s1) = marks[a], marks[b]
        return (s1 - s0) / (t1 - t0)

    return rate("collect_start", "collect_end"), rate("learn_start", "learn_end")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["sac:1", "eaudesac:5"], help="method:K")
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--steps", type=int, default=1500, help="learning-phase env steps timed")
    p.add_argument("--warm", type=int, default=1000, help="random env steps first")
    p.add_argument("--reps", type=int, default=50, help="timed bare updates")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="short run, results not written to docs")
    args = p.parse_args()
    if args.quick:
        args.steps, args.warm, args.reps = 300, 400, 10
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for run in args.runs:
        method, members = run.split(":")
        torch.manual_seed(0)
        module = make_module(method, int(members), args.steps, args.warm, args.env)
        t0, w0 = time.perf_counter(), run_delay_s()
        collect_sps, pipeline_sps = time_pipeline(module)
        update_s = time_update(module, args.reps)
        w1 = run_delay_s()
        wait = None if w0 is None or w1 is None else (w1 - w0) / (time.perf_counter() - t0)
        bound = module.cfg.train_freq / update_s
        rows.append(
            {
                "method": method,
                "members": module.cfg.members,
                "hidden": f"{module.cfg.width}x{module.cfg.depth}",
                "batch_size": module.cfg.batch_size,
                "collect_env_steps_per_s": collect_sps,
                "update_ms": update_s * 1e3,
                "learner_bound_env_steps_per_s": bound,
                "pipeline_env_steps_per_s": pipeline_sps,
                "pipeline_over_bound": pipeline_sps / bound,
                "cpu_wait": wait,
            }
        )
        print(json.dumps(rows[-1]))
    out = {
        **machine_info(),
        "env": args.env,
        "timed_env_steps": args.steps,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "sac_throughput_cpu" + ("_quick" if args.quick else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    table = [
        "| method | K | collect only steps/s | update ms | learner bound steps/s | "
        "pipeline steps/s | pipeline / bound | CPU wait |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['method']} | {r['members']} | {r['collect_env_steps_per_s']:.0f} | "
            f"{r['update_ms']:.1f} | {r['learner_bound_env_steps_per_s']:.0f} | "
            f"{r['pipeline_env_steps_per_s']:.1f} | {r['pipeline_over_bound']:.1%} | "
            + ("n/a |" if r["cpu_wait"] is None else f"{r['cpu_wait']:.2f} |")
        )
    print("\n".join(table))
    if not args.quick:
        write_docs_section(
            "sac_throughput:cpu",
            f"## MuJoCo SAC training throughput (CPU, {out['threads']} threads, {args.env}, "
            f"{rows[0]['hidden']}, batch {rows[0]['batch_size']})\n\n"
            f"From `benchmarks/results/{name}.json`; `python benchmarks/bench_sac_throughput.py`. "
            "One gradient step per env step. Collect only = the loop before `learning_starts` "
            "(TorchRL `Collector`, random actions, replay writes); learner bound = bare update "
            "rate of the same agent in the same run; pipeline = the Lightning loop while "
            "learning; CPU wait = cores' worth of time this process waited for a CPU "
            "(0 = quiet machine).\n\n" + "\n".join(table),
        )


if __name__ == "__main__":
    main()
