"""The reproduction study: EauDeQN vs PolyPruneQN vs dense DQN across widths and seeds.

    # run the grid (resumable: finished runs are found in MLflow and skipped)
    python recipes/study.py run --grid configs/study/default.yaml --workers 2
    python recipes/study.py run --grid configs/study/default.yaml --seeds 0 1 2 --tasks CartPole-v1
    # on a Ray cluster, logging to a shared MLflow server (docs/cluster.md)
    python recipes/study.py run --grid configs/study/full.yaml --address auto \
        --tracking-uri http://mlflow-host:5000 --cpus-per-run 1
    # aggregate (rliable IQM/mean with 95% stratified bootstrap CIs), tables, figures
    python recipes/study.py report --grid configs/study/default.yaml
    # the seeded regression references (tests/data/regression_cartpole*.json), both collectors
    python recipes/study.py regression --write --collector lean
    python recipes/study.py regression --write --collector torchrl

Every run is one recipe process (`recipes/control_dqn.py`; a grid's `recipe:`
picks `recipes/atari_dqn.py` or `recipes/mujoco_sac.py`) with one torch thread,
tracked in MLflow (default `sqlite:///study.db`) under the grid's experiment.
`run` executes on Ray when it is installed (`--backend auto`: Ray in this
process, or the cluster at `--address`), else on a thread pool.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

import numpy as np  # noqa: E402

from torchrl_eaudeqn import study  # noqa: E402
from torchrl_eaudeqn.credentials import (  # noqa: E402
    hide_run_urls,
    redact_text,
    redact_uri,
    resolve_env_uri,
)
from torchrl_eaudeqn.validation import (  # noqa: E402
    RECIPE_CHECKS,
    OneLineParser,
    check_tracking_uri,
    load_run_config,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The seeded regression runs: CartPole, 1.5k env steps, K=3, one thread (written with
#: the older name task=, which must go on reproducing the stored trace), once per
#: collection path; the TorchRL path's trace predates the lean one and is unchanged.
#: use_vmap=true: the path both traces were written with (auto picks by timing).
REGRESSION_OVERRIDES = [
    "task=CartPole-v1", "method=eaudeqn", "width=32", "seed=0", "env_steps=1500",
    "learning_starts=300", "target_period=100", "num_members=3", "max_speed=0.02",
    "batch_size=32", "eval_episodes=1", "eval_random_baseline=false", "progress_bar=false",
    "use_vmap=true",
]  # fmt: skip
REGRESSION_RUNS = {
    "lean": (ROOT / "tests/data/regression_cartpole_lean.json", [*REGRESSION_OVERRIDES]),
    "torchrl": (
        ROOT / "tests/data/regression_cartpole.json",
        [*REGRESSION_OVERRIDES, "collector=torchrl"],
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        s = sub.add_parser(name)
        s.add_argument("--grid", default="configs/study/default.yaml", help="grid YAML")
        s.add_argument(
            "--tracking-uri",
            default="sqlite:///study.db",
            help="MLflow tracking URI (env:NAME: read it from environment variable NAME)",
        )
        s.add_argument("--experiment", default=None, help="override the grid's experiment")
        s.add_argument("--seeds", type=int, nargs="*", default=None, help="subset of seeds")
        s.add_argument("--tasks", nargs="*", default=None, help="subset of tasks")
        s.add_argument("--methods", nargs="*", default=None, help="subset of methods")
        s.add_argument("--widths", nargs="*", default=None, help="subset of width names")
    run = sub.choices["run"]
    run.add_argument(
        "--backend", default="auto", choices=("auto", "ray", "threads"),
        help="where runs execute: ray (in-process or --address), threads (a local pool); "
        "auto: ray when installed (pip install torchrl_eaudeqn[distributed]), else threads",
    )  # fmt: skip
    run.add_argument(
        "--address", default=None,
        help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: Ray in-process",
    )  # fmt: skip
    run.add_argument(
        "--workers", type=int, default=None,
        help="runs at a time (threads: default 2; in-process Ray: default all cores / "
        "--cpus-per-run; cluster: default no cap)",
    )  # fmt: skip
    run.add_argument(
        "--cpus-per-run", type=float, default=1.0,
        help="CPUs a run declares to Ray (its torch threads: rounded up)",
    )  # fmt: skip
    run.add_argument(
        "--gpus-per-run", type=float, default=0.0,
        help="GPUs a run declares to Ray (0.25: four runs share one); the run uses cuda",
    )  # fmt: skip
    run.add_argument(
        "--memory-per-run", type=float, default=0.0,
        help="GB of RAM a run declares to Ray (0: undeclared); Atari with a 1M replay: ~9",
    )  # fmt: skip
    run.add_argument(
        "--max-retries", type=int, default=2,
        help="retries of a failed or killed run (each resumes from its checkpoint)",
    )  # fmt: skip
    run.add_argument("--dashboard", action="store_true", help="Ray dashboard (in-process Ray)")
    run.add_argument("--dry-run", action="store_true", help="list the cells to run and stop")
    run.add_argument("--log-dir", default="runs/study", help="one log file per run")
    run.add_argument("--checkpoint-dir", default="checkpoints/study")
    run.add_argument("--pause-file", default=None, help="start no run while this file exists")
    run.add_argument(
        "--cell-results",
        default=None,
        help="directory of one result JSON per finished cell (commit it): cells with a file "
        "are skipped, each finished cell writes one (threads backend)",
    )
    rep = sub.choices["report"]
    rep.add_argument("--figures", default="docs/figures/study", help="where PNGs go")
    rep.add_argument("--results", default="results/study", help="summary JSON and tables")
    rep.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    rep.add_argument(
        "--from-results",
        default=None,
        metavar="DIR",
        help="read the grid's committed result files (run --cell-results) instead of MLflow",
    )
    reg = sub.add_parser("regression")
    reg.add_argument("--write", action="store_true", help="(re)write the reference JSON")
    reg.add_argument("--collector", default="lean", choices=sorted(REGRESSION_RUNS))
    return p.parse_args(argv)


# --------------------------------------------------------------------------- run
def check_common_args(args: argparse.Namespace) -> None:
    """The checks `run` and `report` share (no work done): ValueError, one line naming the flag."""
    from torchrl_eaudeqn.config import SEED_MAX

    for flag in ("grid", "tracking_uri"):
        if not str(getattr(args, flag)).strip():
            raise ValueError(f"--{flag.replace('_', '-')}: expected a value, got ''")
    if args.experiment is not None and not args.experiment.strip():
        raise ValueError("--experiment: expected a non-empty MLflow experiment name, got ''")
    for seed in args.seeds or ():
        if not 0 <= seed <= SEED_MAX:
            raise ValueError(f"--seeds: expected ints in 0..{SEED_MAX}, got {seed}")
    for flag in ("tasks", "methods", "widths"):
        if any(not name.strip() for name in getattr(args, flag) or ()):
            raise ValueError(f"--{flag}: expected names, got ''")


def check_run_args(args: argparse.Namespace) -> str:
    """Every check of `run` that needs no work done: the backend to use, or ValueError (one line).

    Order matters: the cheap local checks first, the tracking server's reachability
    last (a few seconds at most, instead of MLflow's minutes of retries).
    """
    from torchrl_eaudeqn.study.cluster import check_cluster_tracking, resolve_backend

    check_common_args(args)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: expected an int >= 1, got {args.workers}")
    # Non-finite numbers compare False with every bound: refused by name.
    for flag in ("cpus_per_run", "gpus_per_run", "memory_per_run"):
        if not math.isfinite(getattr(args, flag)):
            name = f"--{flag.replace('_', '-')}"
            raise ValueError(f"{name}: expected a finite number, got {getattr(args, flag)}")
    if not args.cpus_per_run > 0:
        raise ValueError(f"--cpus-per-run: expected a number > 0, got {args.cpus_per_run:g}")
    if args.gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run: expected a number >= 0, got {args.gpus_per_run:g}")
    if args.memory_per_run < 0:
        raise ValueError(f"--memory-per-run: expected GB >= 0, got {args.memory_per_run:g}")
    if args.max_retries < 0:
        raise ValueError(f"--max-retries: expected an int >= 0, got {args.max_retries}")
    for flag in ("log_dir", "checkpoint_dir", "pause_file"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise ValueError(f"--{flag.replace('_', '-')}: expected a path, got ''")
    backend = resolve_backend(args.backend, args.address)
    if backend == "threads" and args.gpus_per_run > 0:
        raise ValueError("--gpus-per-run needs --backend ray (the thread pool runs on CPU)")
    # env:NAME keeps a URI with credentials off this command line (docs/security.md).
    args.tracking_uri = resolve_env_uri(args.tracking_uri, "--tracking-uri")
    hide_run_urls(args.tracking_uri)
    check_cluster_tracking(args.tracking_uri, args.address)
    check_tracking_uri(args.tracking_uri)
    return backend


def check_cells(cells: list[study.Cell], args: argparse.Namespace, experiment: str) -> None:
    """Each cell's config, as its recipe will read it, before any run starts.

    A bad override in the grid (``lr=.nan``, ``batch_size`` above
    ``buffer_size``, an unknown game) would otherwise fail every run of the
    grid, each after its retries. The replay's memory is left to each run:
    on a cluster the runs' nodes are not this one.

    Raises:
        ValueError: ``cell <key>: <field>: ...`` (one line).
    """
    from torchrl_eaudeqn.config import ConfigError

    for cell in cells:
        config_cls, check = RECIPE_CHECKS[cell.recipe]
        argv = cell.argv(args.tracking_uri, experiment, args.checkpoint_dir)
        try:
            load_run_config(
                config_cls,
                argv[1],  # ["--config", path, overrides...]
                argv[2:],
                check=functools.partial(check, memory=False),
                tracking=False,  # the study's own store, checked once above
                mlflow_names=False,
            )
        except (ConfigError, ValueError) as err:
            raise ValueError(f"cell {cell.key}: {err}") from None


def _echo_to(log_dir: str):
    """Print a line and append it, timestamped, to <log_dir>/runner.log (the runner's own log)."""
    path = pathlib.Path(log_dir) / "runner.log"
    path.parent.mkdir(parents=True, exist_ok=True)

    def echo(line: str) -> None:
        print(line, flush=True)
        with open(path, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    return echo


def check_cell_results(args: argparse.Namespace, backend: str, cells: list) -> None:
    """``--cell-results``: a directory (or a new one) whose result files all read back."""
    if backend == "ray":
        raise ValueError("--cell-results: supported with --backend threads only")
    path = pathlib.Path(args.cell_results)
    if not args.cell_results.strip() or (path.exists() and not path.is_dir()):
        raise ValueError(f"--cell-results: expected a directory, got {args.cell_results!r}")
    if path.is_dir():
        study.load_results(path)  # a file that does not read back stops the run, naming it
        for cell in cells:
            study.has_result(path, cell)  # ... and so does one under another cell's name


def cmd_run(args: argparse.Namespace) -> int:
    try:
        check_common_args(args)
        spec = study.load_grid(args.grid)
        backend = check_run_args(args)
        cells = study.expand_grid(
            spec, seeds=args.seeds, tasks=args.tasks, methods=args.methods, widths=args.widths
        )
        experiment = args.experiment or spec.experiment
        check_cells(cells, args, experiment)
        if args.cell_results is not None:
            check_cell_results(args, backend, cells)
    except (ValueError, OSError) as err:
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return 2
    if args.dry_run:
        done = study.finished_keys(args.tracking_uri, experiment)
        if args.cell_results is not None:
            done |= {c.key for c in cells if study.has_result(args.cell_results, c)}
        for c in cells:
            print(("done " if c.key in done else "todo ") + c.key)
        return 0
    echo = _echo_to(args.log_dir)
    where = (args.address or "in-process") if backend == "ray" else f"{args.workers or 2} threads"
    shown = redact_uri(args.tracking_uri)
    echo(f"backend: {backend} ({where}), tracking {shown}, experiment {experiment}")
    if backend == "ray":
        from torchrl_eaudeqn.study.cluster import run_grid_ray

        counts = run_grid_ray(
            cells,
            tracking_uri=args.tracking_uri,
            experiment=experiment,
            address=args.address,
            workers=args.workers,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            memory_per_run_gb=args.memory_per_run,
            max_retries=args.max_retries,
            checkpoint_dir=args.checkpoint_dir,
            log_dir=args.log_dir,
            pause_file=args.pause_file,
            dashboard=args.dashboard,
            echo=echo,
        )
    else:
        counts = study.run_grid(
            cells,
            tracking_uri=args.tracking_uri,
            experiment=experiment,
            workers=args.workers or 2,
            checkpoint_dir=args.checkpoint_dir,
            log_dir=args.log_dir,
            pause_file=args.pause_file,
            attempts=args.max_retries + 1,
            threads=max(1, math.ceil(args.cpus_per_run)),
            echo=echo,
            results_dir=args.cell_results,
        )
    echo(json.dumps(counts))
    return 1 if counts["failed"] else 0


# --------------------------------------------------------------------------- report
def _fmt(e: dict, key: str) -> str:
    return f"{e[key]:.3f} [{e[key + '_low']:.3f}, {e[key + '_high']:.3f}]"


def cmd_report(args: argparse.Namespace) -> int:
    try:
        check_common_args(args)
        if args.reps < 1:
            raise ValueError(f"--reps: expected an int >= 1, got {args.reps}")
        for flag in ("figures", "results"):
            if not getattr(args, flag).strip():
                raise ValueError(f"--{flag}: expected a directory, got ''")
        spec = study.load_grid(args.grid)
        cells = study.expand_grid(
            spec, seeds=args.seeds, tasks=args.tasks, methods=args.methods, widths=args.widths
        )
        wanted = {c.key for c in cells}
        if args.from_results is not None:
            if not pathlib.Path(args.from_results).is_dir():
                raise ValueError(f"--from-results: {args.from_results} is not a directory")
            # Reads every file first: a damaged one stops the report naming it.
            records = study.run_records(args.from_results, keys=wanted)
            source = f"result files in {args.from_results}"
        else:
            uri = resolve_env_uri(args.tracking_uri, "--tracking-uri")
            hide_run_urls(uri)
            # Reading a report must not create an empty store.
            check_tracking_uri(uri, must_exist=True)
    except (ValueError, OSError) as err:
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return 2
    if args.from_results is None:
        experiment = args.experiment or spec.experiment
        records = [r for r in study.collect_runs(uri, experiment) if r.key in wanted]
        source = "MLflow"
    if not records:
        print(f"error: no finished runs of this grid in {source}", file=sys.stderr)
        return 2
    # A growing grid may hold a task's pruned runs before its dense baseline:
    # such a task has nothing to normalise against yet and stays out of the scores.
    dense = {r.task for r in records if r.method in study.DENSE_METHODS}
    unnormalised = sorted({r.task for r in records} - dense)
    normed = [r for r in records if r.task in dense]
    if not normed:
        print(
            f"error: no finished dense-baseline run ({' or '.join(study.DENSE_METHODS)}) in "
            f"{source}: nothing to normalise the scores against",
            file=sys.stderr,
        )
        return 2
    bounds = study.task_bounds(normed)
    scores = study.normalised_scores(normed, bounds)
    est = study.interval_estimates(scores, reps=args.reps)
    auc = study.normalised_scores(
        normed, bounds, value=lambda r: study.area_under_curve(r, bounds[r.task][0])
    )
    auc_est = study.interval_estimates(auc, reps=args.reps)
    widths = study.width_names(records)
    lines = [
        "| method | width | runs x tasks | IQM [95% CI] | mean [95% CI] | AUC IQM [95% CI] "
        "| final sparsity (mean, min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    summary: dict = {"bounds": bounds, "groups": {}}
    for method in study.METHODS:
        for w in widths:
            if (method, w) not in est:
                continue
            e, a = est[(method, w)], auc_est[(method, w)]
            sp = [r.final_sparsity for r in normed if (r.method, r.width_name) == (method, w)]
            lines.append(
                f"| {study.method_label(method, records)} | {w} | {e['runs']} x {e['tasks']} | "
                f"{_fmt(e, 'iqm')} | {_fmt(e, 'mean')} | {_fmt(a, 'iqm')} | "
                f"{np.mean(sp):.3f} ({min(sp):.3f}-{max(sp):.3f}) |"
            )
            summary["groups"][f"{method}/{w}"] = {
                **e, "auc": a, "final_sparsity_mean": float(np.mean(sp)),
                "final_sparsity": sp,
            }  # fmt: skip
    # Per task: raw final returns and sparsity, so the normalisation can be checked.
    # MuJoCo runs also have a critic: its sparsity gets a column when there are any.
    critic = any(math.isfinite(r.critic_sparsity) for r in records)
    task_lines = [
        "| task | method | width | seeds | final return (mean +- sd) | final sparsity (mean) |"
        + (" critic sparsity (mean) |" if critic else ""),
        "|---|---|---|---|---|---|" + ("---|" if critic else ""),
    ]
    for t in sorted({r.task for r in records}):
        for method in study.METHODS:
            for w in widths:
                rs = [r for r in records if (r.task, r.method, r.width_name) == (t, method, w)]
                if not rs:
                    continue
                sc = [r.final_score for r in rs]
                cs = [r.critic_sparsity for r in rs]
                task_lines.append(
                    f"| {t} | {study.method_label(method, records)} | {w} ({rs[0].width}) | "
                    f"{len(rs)} | {np.mean(sc):.1f} +- {np.std(sc):.1f} | "
                    f"{np.mean([r.final_sparsity for r in rs]):.3f} |"
                    + (f" {np.mean(cs):.3f} |" if critic else "")
                )
    bound_lines = [
        "| task | random score | reference (dense DQN or SAC, widest, mean) |",
        "|---|---|---|",
    ]
    bound_lines += [f"| {t} | {lo:.1f} | {hi:.1f} |" for t, (lo, hi) in sorted(bounds.items())]
    if unnormalised:
        bound_lines += [
            "",
            "Not in the normalised scores yet (no dense-baseline run finished): "
            + ", ".join(unnormalised) + ".",
        ]  # fmt: skip
    # Wall time per run (the result files' clock; a resumed run counts its pause).
    cost_lines = ["| method | width | runs | wall time per run, min (mean, min-max) |",
                  "|---|---|---|---|"]  # fmt: skip
    for method in study.METHODS:
        for w in widths:
            walls = [
                r.wall_s / 60 for r in records
                if (r.method, r.width_name) == (method, w) and r.wall_s is not None
            ]  # fmt: skip
            if walls:
                cost_lines.append(
                    f"| {study.method_label(method, records)} | {w} | {len(walls)} | "
                    f"{np.mean(walls):.1f} ({min(walls):.1f}-{max(walls):.1f}) |"
                )
    claims = study.read_claims(records, est, cells)
    claim_lines = ["## Claims", "", *study.claims_markdown(claims), ""] if claims else []
    tables = "\n".join(
        ["## Aggregate (normalised scores)", "", *lines, "", "## Per task", "", *task_lines, "",
         "## Normalisation", "", *bound_lines, "", "## Cost", "", *cost_lines, "",
         *claim_lines]
    )  # fmt: skip
    results = pathlib.Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "tables.md").write_text(tables)
    summary["runs"] = [
        {
            k: v
            for k, v in vars(r).items()
            if k not in ("returns", "sparsity", "updates")
            and not (k == "critic_sparsity" and math.isnan(v))  # no critic: no key
        }
        for r in records
    ]
    summary["claims"] = [dataclasses.asdict(c) for c in claims]
    summary["target_updates"] = {
        r.key: [[int(s), round(v, 5)] for s, v in r.updates] for r in records
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    figs = pathlib.Path(args.figures)
    figs.mkdir(parents=True, exist_ok=True)
    study.plot_score_curves(normed, bounds, figs / "score_curves.png", reps=min(args.reps, 500))
    study.plot_sparsity_curves(records, figs / "sparsity_curves.png")
    study.plot_sparsity_vs_width(records, figs / "final_sparsity_vs_width.png")
    study.plot_score_vs_sparsity(normed, bounds, figs / "score_vs_sparsity.png")
    print(tables)
    print(f"wrote {results}/tables.md, {results}/summary.json and 4 figures in {figs}")
    return 0


# --------------------------------------------------------------------------- regression
def regression_run(collector: str = "lean") -> dict:
    from torchrl_eaudeqn.config import load_config
    from torchrl_eaudeqn.control import ControlConfig, regression_trace

    overrides = REGRESSION_RUNS[collector][1]
    return regression_trace(load_config(ControlConfig, overrides=overrides))


def cmd_regression(args: argparse.Namespace) -> int:
    trace = regression_run(args.collector)
    if args.write:
        path, overrides = REGRESSION_RUNS[args.collector]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"overrides": overrides, **trace}, indent=1) + "\n")
        print(f"wrote {path}")
    else:
        print(json.dumps(trace, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return {"run": cmd_run, "report": cmd_report, "regression": cmd_regression}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
