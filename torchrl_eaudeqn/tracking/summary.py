"""The end-of-run summary filled from a finished run: its MLflow run, registry and paths.

:func:`gather_summary` reads the run's logged metrics and artifacts (through
the ``MlflowClient`` it is given) into a :class:`~torchrl_eaudeqn.console.RunSummary`;
:func:`evaluate_command` and :func:`ui_hint` are the ready-to-paste lines the
summary prints (credentials never shown), :func:`local_artifact_path` and
:func:`absolute_tracking_uri` the locations in them.

Example:
    >>> ui_hint("http://mlflow:5000", "1", "ab")
    'http://mlflow:5000/#/experiments/1/runs/ab'
"""

from __future__ import annotations

import os
import shlex
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..console import EvalStats, Registered, RunSummary, count_selections
from ..credentials import has_credentials, redact_uri

__all__ = [
    "absolute_tracking_uri",
    "evaluate_command",
    "gather_summary",
    "local_artifact_path",
    "ui_hint",
]


# --------------------------------------------------------------------------- locations
def absolute_tracking_uri(uri: str) -> str:
    """A ``sqlite:///`` or local-path store made absolute (pasteable from any directory).

    Example:
        >>> absolute_tracking_uri("sqlite:////data/mlflow.db")
        'sqlite:////data/mlflow.db'
        >>> absolute_tracking_uri("http://mlflow:5000")
        'http://mlflow:5000'
    """
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"sqlite:///{os.path.abspath(path)}"
        return uri
    if "://" not in uri and not uri.startswith(("file:", "databricks")):
        return os.path.abspath(uri)
    return uri


def local_artifact_path(artifact_uri: str, name: str) -> str:
    """Where artifact ``name`` of a run lies: a local path, or the (redacted) artifact URI.

    Example:
        >>> local_artifact_path("file:///runs/1/abc/artifacts", "plot.png")
        '/runs/1/abc/artifacts/plot.png'
        >>> local_artifact_path("s3://bucket/1/abc/artifacts", "plot.png")
        's3://bucket/1/abc/artifacts/plot.png'
    """
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme == "file":
        return str(Path(urllib.parse.unquote(parsed.path)) / name)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive)
        return str(Path(artifact_uri).absolute() / name)
    return f"{redact_uri(artifact_uri).rstrip('/')}/{name}"


def _command(path: Path, name: str) -> str:
    """``path`` relative to the working directory when under it (shorter to paste)."""
    try:
        rel = path.relative_to(Path.cwd())
        return str(rel) if rel.parts else name
    except ValueError:
        return str(path)


def _venv_tool(tool: str) -> str:
    """The ``tool`` next to this interpreter when it lives in a virtualenv, else ``tool``."""
    if sys.prefix == sys.base_prefix:
        return tool if tool != "python" else "python"
    exe = Path(sys.executable)
    candidate = exe if tool == "python" else exe.with_name(tool)
    return _command(candidate, tool) if candidate.exists() else tool


def _evaluate_script() -> str:
    here = Path("recipes") / "evaluate.py"
    if here.is_file():
        return str(here)
    repo = Path(__file__).resolve().parents[2] / "recipes" / "evaluate.py"
    return str(repo) if repo.is_file() else str(here)


def evaluate_command(model_uri: str, tracking_uri: str, args: Sequence[str]) -> str:
    """A ready-to-paste ``recipes/evaluate.py`` command for a registered model."""
    parts = [_venv_tool("python"), _evaluate_script(), "--model", model_uri, *args]
    parts += ["--tracking-uri", redact_uri(absolute_tracking_uri(tracking_uri))]
    cmd = shlex.join(parts)
    if has_credentials(tracking_uri):  # never printed: say how to give them instead
        cmd += "  # *** = your credentials: MLFLOW_TRACKING_USERNAME/_PASSWORD or env:NAME"
    return cmd


def ui_hint(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """How to open the run in the MLflow UI: the URL of a server, or ``mlflow ui`` on a store."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    uri = absolute_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        return f"{redact_uri(uri).rstrip('/')}/{page}"
    if uri.startswith("databricks"):
        return f"run {run_id} of experiment {experiment_id} in the Databricks workspace"
    cmd = shlex.join([_venv_tool("mlflow"), "ui", "--backend-store-uri", redact_uri(uri)])
    return f"{cmd}, then http://127.0.0.1:5000/{page}"


# --------------------------------------------------------------------------- gathering
def gather_summary(
    *,
    client: Any,
    run_id: str,
    module: Any,
    cfg: Any,
    final: Mapping[str, float],
    registered: Registered,
    training: Mapping[str, float] | None,
    title: str,
    plot_name: str,
    wall_s: float,
    train_s: float,
    start_steps: int,
) -> RunSummary:
    """Fill a :class:`RunSummary` from a finished run: the module, its MLflow run, the registry.

    The final evaluation is ``final`` (this process's, of the registered
    agent); the random baseline and the evaluation history are read from the
    MLflow run, so a resumed run reports what was logged before the resume.
    """
    name = module.EVAL_NAME
    final_stats = EvalStats.from_population(
        final[f"eval/{name}_mean"], final[f"eval/{name}_std"], final["eval/episodes"]
    )
    run = client.get_run(run_id)
    metrics = run.data.metrics
    random = None
    random_note = ""
    if f"eval_random/{name}_mean" in metrics:
        random = EvalStats.from_population(
            metrics[f"eval_random/{name}_mean"],
            metrics[f"eval_random/{name}_std"],
            metrics["eval_random/episodes"],
        )
    elif not cfg.eval_random_baseline:
        random_note = "not scored (eval_random_baseline=false)"
    else:
        random_note = "not in this run (it is scored at env step 0, before any resume)"
    points: dict[int, float] = {}
    for m in sorted(
        client.get_metric_history(run_id, f"eval/{name}_mean"), key=lambda m: (m.step, m.timestamp)
    ):
        points[int(m.step)] = float(m.value)
    history = tuple(sorted(points.items()))
    history_note = ""
    if len(history) <= 1 and not cfg.eval_every:
        history_note = "eval_every=0: only the final evaluation"
    model_uri = registered.model_uri
    if model_uri is not None and registered.alias:
        model_text = f"{model_uri} (alias @{registered.alias})"
    else:
        model_text = model_uri
    evaluate_cmd = None
    if model_uri is not None and registered.evaluate_args is not None:
        evaluate_cmd = evaluate_command(model_uri, cfg.tracking_uri, registered.evaluate_args)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    plot = local_artifact_path(run.info.artifact_uri, plot_name) if plot_name in artifacts else None
    learned = None
    if training is not None:
        learned = (float(training["first_tenth"]), float(training["last_tenth"]))
    return RunSummary(
        title=title,
        env_steps=int(module.env_steps),
        start_steps=int(start_steps),
        wall_s=float(wall_s),
        train_s=float(train_s),
        metric=name,
        final=final_stats,
        random=random,
        random_note=random_note,
        history=history,
        history_note=history_note,
        training=learned,
        sparsity=registered.sparsity,
        selections=count_selections(
            module.updater.history, getattr(module.updater, "history_total", None)
        ),
        model_uri=model_text,
        model_note=registered.note or "not registered",
        evaluate_cmd=evaluate_cmd,
        evaluate_note=registered.evaluate_note,
        plot=plot,
        plot_note="no plot logged",
        ui=ui_hint(cfg.tracking_uri, run.info.experiment_id, run_id),
        run_id=run_id,
    )
