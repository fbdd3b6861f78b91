"""Quick presets, seed by seed: does the final agent beat random every time, and how fast?

Runs the README's main job (Atari quick preset) and the MuJoCo quick preset for
each seed exactly as a user would (the recipe in a fresh process, the preset
plus ``seed=N``), then reads what the run left behind (its MLflow run, the
registered model version's tags, the last checkpoint's selection history) and
writes one JSON per seed under ``results/presets/<preset>/seed<N>.json``.
A seed whose JSON exists is skipped, so the grid resumes where it stopped; the
table in docs/results.md is rebuilt from every JSON present.

    python benchmarks/bench_presets.py run --preset atari --seeds 0 1 2 3 4
    python benchmarks/bench_presets.py collect --preset atari --seed 0 \
        --store sqlite:///mlflow.db --run-name NAME --checkpoint-dir DIR [--wall-s 612]
    python benchmarks/bench_presets.py table

The verdict is the issue's bar: final mean minus random mean greater than twice
the standard error of that difference (sample standard deviations).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "presets"
DOCS = ROOT / "docs" / "results.md"
PRESETS = {
    "atari": ("recipes/atari_dqn.py", "configs/atari/quick.yaml", "score", "nox -s train"),
    "mujoco": (
        "recipes/mujoco_sac.py",
        "configs/mujoco/quick.yaml",
        "return",
        "nox -s train_mujoco",
    ),
}


def _sample_std(pop_std: float, n: int) -> float:
    # MLflow holds the population std; the verdict uses the sample std (ddof=1).
    return pop_std * math.sqrt(n / (n - 1)) if n > 1 else 0.0


def _config_commit(preset: str) -> str | None:
    # Ties a record to the preset's config (and the configs it extends) that produced it.
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", str(pathlib.Path(PRESETS[preset][1]).parent)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip() or None


def collect(
    preset: str,
    seed: int,
    store: str,
    run_name: str,
    ckpt_dir: str,
    wall_s: float | None = None,
    started_after_ms: int = 0,
) -> dict:
    """The per-seed record of a finished run (MLflow metrics, model tags, selection history).

    A seed that was interrupted and run again leaves a RUNNING or FAILED run of the
    same name behind; the record is the newest FINISHED one (started after
    ``started_after_ms`` when given). Without ``wall_s`` the wall time is the MLflow
    run's own start-to-end time.
    """
    import torch
    from mlflow.tracking import MlflowClient

    kind = PRESETS[preset][2]
    client = MlflowClient(store)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    runs = [r for r in runs if r.info.start_time >= started_after_ms]
    if not runs:
        raise SystemExit(f"error: --run-name: no finished run named {run_name!r} in {store}")
    run = runs[0]
    # Collected after the fact, today's load says nothing about the run's.
    load = round(os.getloadavg()[0], 2) if wall_s is not None else None
    if wall_s is None:
        wall_s = (run.info.end_time - run.info.start_time) / 1000
    m = run.data.metrics
    hist = client.get_metric_history(run.info.run_id, f"eval/{kind}_mean")
    n, nr = int(m["eval/episodes"]), int(m["eval_random/episodes"])
    final, rnd = m[f"eval/{kind}_mean"], m[f"eval_random/{kind}_mean"]
    s1 = _sample_std(m[f"eval/{kind}_std"], n)
    s2 = _sample_std(m[f"eval_random/{kind}_std"], nr)
    se = math.sqrt(s1**2 / n + s2**2 / nr)
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    tags = versions[0].tags if versions else {}
    ckpts = sorted(c for c in pathlib.Path(ckpt_dir).rglob("*.ckpt") if "abandoned" not in c.parts)
    state = torch.load(ckpts[-1], weights_only=True, map_location="cpu") if ckpts else {}
    history = state.get("callbacks", {}).get("TargetSelectionCallback", {}).get("history", [])
    selection = {}
    for net in ("", "actor_", "critic_"):
        entries = [h for h in history if f"{net}speeds_before" in h]
        if entries:
            wins = sum(h[f"{net}speeds_before"][h[f"{net}selected"]] > 0 for h in entries)
            selection[net.rstrip("_") or "network"] = {"updates": len(entries), "pruned_wins": wins}
    steps = int(run.data.params.get("env_steps", 0))
    return {
        "preset": preset,
        "seed": seed,
        "env_steps": steps,
        "wall_s": round(wall_s, 1),
        "env_steps_per_s": round(steps / wall_s, 1) if wall_s else None,
        "final": {"mean": final, "std": s1, "episodes": n},
        "random": {"mean": rnd, "std": s2, "episodes": nr},
        "diff": final - rnd,
        "two_se": 2 * se,
        "above_random": final - rnd > 2 * se,
        "eval_history": [[h.step, h.value] for h in hist],
        "sparsity": {k: float(v) for k, v in tags.items() if k.startswith("sparsity")},
        "selection": selection,
        "model": f"models:/{versions[0].name}/{versions[0].version}" if versions else None,
        "config_commit": _config_commit(preset),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "load_average_after": load,
    }


def run(preset: str, seeds: list[int], workdir: pathlib.Path) -> None:
    script, config, _, _ = PRESETS[preset]
    workdir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        out = RESULTS / preset / f"seed{seed}.json"
        if out.exists():
            print(f"{preset} seed {seed}: done already ({out.relative_to(ROOT)})")
            continue
        store = f"sqlite:///{workdir / 'mlflow.db'}"
        name, ckpt = f"{preset}-seed{seed}", workdir / "ckpt" / f"{preset}-seed{seed}"
        cmd = [sys.executable, script, "--config", config, f"seed={seed}", f"tracking_uri={store}",
               f"run_name={name}", f"checkpoint_dir={ckpt}", "experiment=presets"]  # fmt: skip
        start, started_ms = time.monotonic(), int(time.time() * 1000)
        subprocess.run(cmd, cwd=ROOT, check=True)
        wall = time.monotonic() - start
        record = collect(preset, seed, store, name, str(ckpt), wall, started_ms)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
        table()


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def table() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import write_docs_section

    rows = ["| preset | seed | final (10 ep.) | random (10 ep.) | diff > 2 SE? | eval history | "
            "sparsity (prunable) | target updates (pruned wins) | wall, steps/s | reproduce |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for path in sorted(RESULTS.glob("*/seed*.json")):
        r = json.loads(path.read_text())
        f, q = r["final"], r["random"]
        hist = ", ".join(f"{s // 1000}k: {_fmt(v)}" for s, v in r["eval_history"])
        sel = "; ".join(
            f"{k} {v['updates']} ({v['pruned_wins']})" for k, v in r["selection"].items()
        )
        sp = r["sparsity"].get("sparsity_prunable")
        cmd = f"`{PRESETS[r['preset']][3]} -- seed={r['seed']}`"
        verdict = "yes" if r["above_random"] else "**no**"
        rows.append(
            f"| {r['preset']} | {r['seed']} | {_fmt(f['mean'])} +- {_fmt(f['std'])} | "
            f"{_fmt(q['mean'])} +- {_fmt(q['std'])} | {verdict} ({_fmt(r['diff'])} vs "
            f"{_fmt(r['two_se'])}) | {hist} | {'-' if sp is None else f'{sp:.1%}'} | {sel} | "
            f"{r['wall_s'] / 60:.1f} min, {r['env_steps_per_s']} (threads {r['threads']}, "
            f"load {r['load_average_after'] if r['load_average_after'] is not None else '-'}) "
            f"| {cmd} |"
        )
    write_docs_section("presets", "\n".join(rows), DOCS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--preset", choices=sorted(PRESETS), required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--workdir", type=pathlib.Path, default=None)
    c = sub.add_parser("collect")
    c.add_argument("--preset", choices=sorted(PRESETS), required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--store", required=True)
    c.add_argument("--run-name", required=True)
    c.add_argument("--checkpoint-dir", required=True)
    c.add_argument(
        "--wall-s", type=float, default=None, help="default: the MLflow run's start-to-end time"
    )
    sub.add_parser("table")
    a = p.parse_args()
    if a.cmd == "run":
        run(a.preset, a.seeds, a.workdir or pathlib.Path(tempfile.mkdtemp(prefix="presets-")))
    elif a.cmd == "collect":
        rec = collect(a.preset, a.seed, a.store, a.run_name, a.checkpoint_dir, a.wall_s)
        out = RESULTS / a.preset / f"seed{a.seed}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1) + "\n")
        table()
    else:
        table()


if __name__ == "__main__":
    main()
