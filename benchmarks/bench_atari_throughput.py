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
pipeline >= 90% of it, and sample <= 10% of an update.

    python benchmarks/bench_atari_throughput.py                 # dqn, eaudeqn; width medium
    python benchmarks/bench_atari_throughput.py --methods dqn --collectors lean --quick
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
from _report import machine_info, write_docs_section  # noqa: E402

from torchrl_eaudeqn.config import AtariConfig, load_config  # noqa: E402
from torchrl_eaudeqn.envs import make_atari_env  # noqa: E402
from torchrl_eaudeqn.lightning import DQNLightningModule, TargetSelectionCallback  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def make_module(
    method: str, width: str, steps: int, warm: int, game: str, collector: str
) -> DQNLightningModule:
    cfg = load_config(
        AtariConfig,
        ROOT / "configs" / "atari" / f"{method}.yaml",
        [
            f"game={game}", f"width={width}", f"env_steps={warm + steps}",
            f"learning_starts={warm}", "buffer_size=100000", "eval_every=0",
            "progress_bar=false", "log_every=1000", f"collector={collector.split('+')[0]}",
            f"overlap={'true' if collector.endswith('+overlap') else 'false'}",
            "eps_start=0.01", "eps_end=0.01",
        ],
    )  # fmt: skip

    def env_fn(seed: int, num_envs: int, eval: bool):
        return make_atari_env(cfg.game, seed=seed, num_envs=num_envs)

    return DQNLightningModule(cfg, env_fn)


def time_update(module: DQNLightningModule, reps: int) -> tuple[float, float]:
    """Median seconds of one gradient step and of one replay sample."""
    cfg = module.cfg
    opt = module.optimizer
    upd, smp = [], []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        batch = module.replay.sample(cfg.batch_size)
        t1 = time.perf_counter()
        out = module.loss_module(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        module.updater.step(out)
        t2 = time.perf_counter()
        if i >= 3:
            smp.append(t1 - t0)
            upd.append(t2 - t1)
    return statistics.median(upd), statistics.median(smp)


def time_pipeline(module: DQNLightningModule) -> float:
    """Env steps/s of the Lightning loop after ``learning_starts``."""
    marks: dict[str, tuple[float, int]] = {}

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if outputs and "start" not in marks:
                marks["start"] = (time.perf_counter(), pl_module.env_steps)
            marks["end"] = (time.perf_counter(), pl_module.env_steps)

    trainer = L.Trainer(
        max_epochs=-1, accelerator="cpu", devices=1, logger=False,
        callbacks=[TargetSelectionCallback(module.updater), Clock()],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module)
    (t0, s0), (t1, s1) = marks["start"], marks["end"]
    return (s1 - s0) / (t1 - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["dqn", "eaudeqn"])
    p.add_argument("--collectors", nargs="+", default=["lean", "lean+overlap", "torchrl"])
    p.add_argument("--width", default="medium")
    p.add_argument("--game", default="Breakout")
    p.add_argument("--steps", type=int, default=4000, help="learning-phase env steps timed")
    p.add_argument("--warm", type=int, default=1000, help="random env steps first")
    p.add_argument("--reps", type=int, default=60, help="timed bare updates")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="short run, results not written to docs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for method in args.methods:
        for collector in args.collectors:
            torch.manual_seed(0)
            module = make_module(method, args.width, args.steps, args.warm, args.game, collector)
            pipeline_sps = time_pipeline(module)
            update_s, sample_s = time_update(module, args.reps)
            bound = module.cfg.train_freq / update_s
            rows.append(
                {
                    "method": method,
                    "collector": collector,
                    "members": module.cfg.members,
                    "width": args.width,
                    "update_ms": update_s * 1e3,
                    "updates_per_s": 1 / update_s,
                    "sample_ms": sample_s * 1e3,
                    "sample_over_update": sample_s / update_s,
                    "learner_bound_env_steps_per_s": bound,
                    "pipeline_env_steps_per_s": pipeline_sps,
                    "pipeline_over_bound": pipeline_sps / bound,
                }
            )
            print(json.dumps(rows[-1]))
    out = {
        **machine_info(),
        "game": args.game,
        "timed_env_steps": args.steps,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "atari_throughput_cpu" + ("_quick" if args.quick else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    table = [
        "| method | K | collector | update ms | sample ms (ratio) | learner bound steps/s | "
        "pipeline steps/s | pipeline / bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['method']} | {r['members']} | {r['collector']} | {r['update_ms']:.1f} | "
            f"{r['sample_ms']:.2f} "
            f"({r['sample_over_update']:.1%}) | {r['learner_bound_env_steps_per_s']:.0f} | "
            f"{r['pipeline_env_steps_per_s']:.0f} | {r['pipeline_over_bound']:.1%} |"
        )
    print("\n".join(table))
    if not args.quick:
        write_docs_section(
            "atari_throughput:cpu",
            f"## Atari training throughput (CPU, {out['threads']} threads, {args.game}, "
            f"width {args.width})\n\nFrom `benchmarks/results/{name}.json`; "
            "`python benchmarks/bench_atari_throughput.py`. Learner bound = "
            "train_freq x bare update rate of the same agent, measured in the same run.\n\n"
            + "\n".join(table),
        )


if __name__ == "__main__":
    main()
