"""What the training recipes share: arguments, resume checks, MLflow run, Trainer, final steps.

``recipes/atari_dqn.py`` and ``recipes/mujoco_sac.py`` are thin: each
validates its task, says how to build its LightningModule (an
:class:`~torchrl_eaudeqn.lightning.OnlineRLModule`), what to plot and what
to register, and hands the rest to :func:`run_recipe`:

1. :func:`~torchrl_eaudeqn.validation.parse_args` (re-exported here):
   ``--config``, ``--resume``, ``key=value`` overrides, validated into the
   config dataclass with every check of :mod:`torchrl_eaudeqn.validation`
   (exit code 2 and one line on error), before torch is even imported;
2. with ``--resume``: :func:`find_checkpoint` and
   :func:`read_checkpoint_header` (refuses a checkpoint written under another
   config, except for the :data:`RESUMABLE` fields) -- before anything is written;
3. the run's checkpoint directory (:func:`checkpoint_dir`: run key and
   :func:`config_fingerprint`) is locked for this process
   (:class:`~torchrl_eaudeqn.checkpointing.CheckpointDirLock`; held
   elsewhere: exit 2, one line naming the holder) and cleared of what killed
   writes left;
4. :func:`start_mlflow_run` (or reopen the checkpoint's run);
5. Lightning ``fit`` with the updater callback and crash-safe checkpoints
   (``step<env steps>.ckpt``, every ``checkpoint_every`` env steps, at the
   end, on an exception or a signal; :func:`make_trainer`);
6. final evaluation, :func:`plot_run` (a PNG artifact), registration, and
   one summary block on stdout (:mod:`torchrl_eaudeqn.console`); the MLflow
   run is marked FINISHED, FAILED or KILLED whatever happens.

Example:
    >>> from torchrl_eaudeqn.config import AtariConfig
    >>> args, cfg = parse_args(AtariConfig, ["env=Breakout", "width=small"],
    ...                        default_config=None)
    >>> cfg.env, args.resume, checkpoint_dir(cfg).as_posix()
    ('Breakout', None, 'checkpoints/Breakout-eaudeqn-small-seed0-2f26696a')
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from ..checkpointing import (
    CheckpointDirLock,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint_file,
    remove_leftovers,
    replay_dir,
    verify_checkpoint,
    verify_dir,
)
from ..config import ConfigError, config_diff
from ..console import Registered, format_summary, known_noise_silenced
from ..credentials import redact_text
from ..tracking.runs import PlotPanel, plot_run, start_mlflow_run, training_score_summary
from ..tracking.summary import gather_summary
from ..validation import parse_args  # the command line; needs no torch (recipes call it first)
from .checkpoint_io import AtomicCheckpointIO
from .reliability import EnvStepCheckpoint, GracefulStop, NonFiniteError, NonFiniteGuard

__all__ = [
    "RESUMABLE",
    "PlotPanel",
    "check_replay",
    "checkpoint_dir",
    "config_fingerprint",
    "find_checkpoint",
    "make_trainer",
    "parse_args",
    "plot_run",
    "read_checkpoint_header",
    "run_recipe",
    "start_mlflow_run",
]

C = TypeVar("C")

#: Config fields that may change between a checkpoint and its resume.
RESUMABLE = (
    "env_steps", "progress_bar", "threads", "eval_every", "eval_episodes", "log_every",
    "checkpoint_every", "register_name", "register_alias", "tracking_uri", "run_name",
    "keep_checkpoints", "checkpoint_replay", "register_format", "steps_per_call",
)  # fmt: skip


def config_fingerprint(cfg: Any, resumable: Sequence[str] = RESUMABLE) -> str:
    """Eight hex digits naming what a run computes: the fields a resume must keep.

    The sha256 of ``name=value`` (JSON values, sorted by name) over the
    config's fields, leaving out the ``resumable`` ones (budget, logging,
    tracking URI, registry: they may change on resume, so they do not make a
    different run) and ``checkpoint_dir`` (where the run is, not what it
    is), and fields at their default value (a field added to the dataclass
    later does not rename existing directories). Two configs that differ only
    in fields a resume may change (those :func:`read_checkpoint_header`
    ignores) get the same fingerprint; any other difference changes it.

    Example:
        >>> from torchrl_eaudeqn.config import AtariConfig
        >>> a = AtariConfig(env="Breakout")
        >>> config_fingerprint(a) == config_fingerprint(AtariConfig(env="Breakout", env_steps=5))
        True
        >>> config_fingerprint(a) == config_fingerprint(AtariConfig(env="Breakout", lr=1e-3))
        False
        >>> config_fingerprint(a) == config_fingerprint(AtariConfig(game="Breakout"))
        True
    """
    skip = {*resumable, "checkpoint_dir"}
    # A renamed field keeps its older name here, so its runs keep their directories.
    older = {new: old for old, new in getattr(type(cfg), "ALIASES", {}).items()}
    # A field added later with a new behaviour as its default: runs with the older
    # behaviour keep their directories, runs with the new one get their own.
    legacy = getattr(type(cfg), "LEGACY_VALUES", {})
    lines = []
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if value != legacy.get(f.name, default):
            name = older.get(f.name, f.name)
            lines.append(f"{name}={json.dumps(value, sort_keys=True, default=str)}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:8]


def checkpoint_dir(cfg: Any) -> pathlib.Path:
    """``<checkpoint_dir>/<run key>-<fingerprint>``: where a run's checkpoints go.

    The :func:`config_fingerprint` keeps runs that differ in what they compute
    (``lr``, ``num_members``, ...) out of each other's directory.
    """
    return pathlib.Path(cfg.checkpoint_dir) / f"{cfg.run_key}-{config_fingerprint(cfg)}"


def _legacy_checkpoint_dir(cfg: Any) -> pathlib.Path:
    # Versions before fingerprints wrote <checkpoint_dir>/<run key>; --resume last reads it.
    return pathlib.Path(cfg.checkpoint_dir) / cfg.run_key


def find_checkpoint(cfg: Any, resume: str) -> pathlib.Path:
    """The checkpoint ``--resume`` names, verified against its checksum.

    ``last`` is the newest checkpoint of the timeline in the run's
    directory that verifies (a newer one left torn or corrupt by a crash is
    skipped, one of an abandoned timeline is never taken:
    :func:`~torchrl_eaudeqn.checkpointing.latest_checkpoint`); when that
    directory has none, the directory older versions used,
    ``<checkpoint_dir>/<run key>``, is read instead, so nothing they wrote is
    lost. A path must verify itself.

    Raises:
        ValueError: no such checkpoint, or it fails verification (one line).
    """
    if resume == "last":
        directory = checkpoint_dir(cfg)
        path = latest_checkpoint(directory) or latest_checkpoint(_legacy_checkpoint_dir(cfg))
        if path is None:
            raise ValueError(f"--resume last: no valid checkpoint in {directory}")
        return path
    path = pathlib.Path(resume)
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path}")
    try:
        verify_checkpoint(path)
    except CheckpointError as err:
        raise ValueError(f"--resume: {err}") from None
    return path


def read_checkpoint_header(
    path: pathlib.Path, cfg: Any, resumable: Sequence[str] = RESUMABLE
) -> str | None:
    """Check that ``path`` was written under ``cfg`` (up to ``resumable``); its MLflow run id.

    Raises:
        ValueError: unreadable file, a checkpoint of another recipe, or one
            written under another config (the message names the first field).
    """
    try:
        state = load_checkpoint_file(path, map_location="cpu")["eaudeqn"]
    except CheckpointError as err:  # it needs unpickling: nothing in it ran
        raise ValueError(f"--resume: {err}") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"--resume: {path} is not a readable checkpoint ({first})") from None
    # Fields the checkpoint predates take the value they had in effect then.
    fields = {**getattr(type(cfg), "LEGACY_VALUES", {}), **state["config"]}
    try:
        saved = type(cfg)(**fields)
    except (TypeError, ConfigError):
        raise ValueError(
            f"--resume: {path} was written by another recipe (not a {type(cfg).__name__})"
        ) from None
    diff = config_diff(saved, cfg, ignore=tuple(resumable))
    if diff:
        name, (old, new) = next(iter(diff.items()))
        raise ValueError(
            f"--resume: {path} was written with another config ({name}: {old!r} != {new!r})"
        )
    return state.get("mlflow_run_id")


def check_replay(path: pathlib.Path) -> None:
    """Verify the replay directory beside checkpoint ``path``, if there is one.

    A damaged one (a file changed, missing or added; no manifest: written by
    an older version or not completely) is refused rather than silently
    dropped: the run would resume with an empty replay and learn differently.

    Raises:
        ValueError: one line naming the directory, what is wrong and the way out.
    """
    directory = replay_dir(path)
    if not directory.exists():
        return
    try:
        verify_dir(directory)
    except CheckpointError as err:
        raise ValueError(
            f"--resume: replay buffer {err}; delete that directory to resume from "
            f"{path.name} with an empty replay"
        ) from None


def make_trainer(
    cfg: Any, callbacks: list[Any], ckpt_dir: pathlib.Path, description: str = "training"
) -> Any:
    """A Lightning ``Trainer`` for an online module: safe checkpoints, progress bar, no validation.

    Checkpoints (``ckpt_dir/step<env steps>.ckpt``, atomic and checksummed by
    :class:`~torchrl_eaudeqn.checkpointing.AtomicCheckpointIO`, the newest
    ``keep_checkpoints`` kept) are written every ``checkpoint_every`` env
    steps, at the end, on an exception and on ``SIGINT``/``SIGTERM``
    (:class:`~torchrl_eaudeqn.reliability.GracefulStop`); a NaN/Inf gradient
    stops training before the optimizer step
    (:class:`~torchrl_eaudeqn.reliability.NonFiniteGuard`). The progress bar
    (:class:`~torchrl_eaudeqn.lightning.EnvStepProgressBar`, ``description``
    before it) counts env steps of the budget.
    """
    import lightning as L

    from .progress import EnvStepProgressBar

    callbacks = [
        *callbacks,
        NonFiniteGuard(),
        EnvStepCheckpoint(ckpt_dir, cfg.checkpoint_every),
        GracefulStop(),
    ]
    if cfg.progress_bar:
        callbacks.append(EnvStepProgressBar(description, refresh_rate=50))
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[cfg.device]
    return L.Trainer(
        max_epochs=-1,  # the module stops on its env-step budget
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(keep_last=cfg.keep_checkpoints)],
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        # EnvStepCheckpoint writes the checkpoints; Lightning's default
        # ModelCheckpoint would add full copies under ./checkpoints at each epoch end.
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


@known_noise_silenced()  # the known-harmless lines of the run's own calls, not a user's
def run_recipe(
    cfg: Any,
    resume: str | None,
    *,
    build_module: Callable[[Any], Any],
    build_callbacks: Callable[[Any], list[Any]],
    register: Callable[[Any, dict[str, float], str], Registered],
    plot_panels: Sequence[PlotPanel],
    run_tags: Mapping[str, str] | None = None,
    plot_name: str = "plot.png",
    title: str | None = None,
) -> int:
    """Resume checks, MLflow run, fit, last checkpoint, final evaluation, plot, registration.

    Args:
        cfg: the validated config (from :func:`parse_args`).
        resume: ``None``, ``"last"`` or a checkpoint path.
        build_module: ``fn(metrics) -> OnlineRLModule`` (metrics: an
            :class:`~torchrl_eaudeqn.lightning.MLflowMetrics` of the run).
        build_callbacks: ``fn(module) -> [callback, ...]`` (the updater
            callback); checkpointing and the progress bar are added here.
        register: ``fn(module, final_eval, run_id) ->``
            :class:`~torchrl_eaudeqn.console.Registered`: registers the trained
            network and says where it is and how sparse it is.
        plot_panels: what :func:`plot_run` draws.
        run_tags: tags of a new MLflow run.
        plot_name: the PNG artifact's file name.
        title: the summary's headline (``"EauDeQN on RoadRunner"``; default:
            the method and the run key); the progress bar shows it too.

    When done it prints one summary block on stdout
    (:func:`~torchrl_eaudeqn.console.format_summary`): env steps, wall time
    and steps/s; the final agent's evaluation against the random policy's,
    with the verdict; the evaluation history; sparsity overall and per layer;
    target updates won by a pruned member; the registered model with a
    ``recipes/evaluate.py`` command; the plot; how to open the run in the MLflow UI.

    Returns:
        0 on success; 2 on a user error (bad resume, a checkpoint directory
        another process holds, a checkpoint that cannot be written: one line on
        stderr); 1 when training stopped on a NaN/Inf or an unreachable
        tracking store; 128 + signal number after a graceful
        ``SIGINT``/``SIGTERM`` stop. In every case but a bad resume or a held
        directory the state is checkpointed first and the MLflow run ends
        FINISHED, FAILED or KILLED.
    """
    started = time.perf_counter()  # the summary's wall time includes the resume checks
    title = title or f"{cfg.method} {cfg.run_key}"
    run_id = None
    ckpt = None
    if resume:
        try:
            ckpt = find_checkpoint(cfg, resume)
            run_id = read_checkpoint_header(ckpt, cfg)
            check_replay(ckpt)
        except ValueError as err:
            print(f"error: {redact_text(str(err))}", file=sys.stderr)
            return 2
    ckpt_dir = checkpoint_dir(cfg)
    # One writer per directory, before the MLflow run exists: a second process
    # is refused with one line naming the holder (docs/reliability.md).
    lock = CheckpointDirLock(ckpt_dir)
    try:
        lock.acquire()
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        remove_leftovers(ckpt_dir, locked=True)  # what killed writes left behind
        return _run_locked(
            cfg, ckpt, run_id, ckpt_dir, build_module, build_callbacks, register, plot_panels,
            run_tags, plot_name, title, started,
        )  # fmt: skip
    finally:
        lock.release()


def _run_locked(
    cfg: Any,
    ckpt: pathlib.Path | None,
    run_id: str | None,
    ckpt_dir: pathlib.Path,
    build_module: Callable[[Any], Any],
    build_callbacks: Callable[[Any], list[Any]],
    register: Callable[[Any, dict[str, float], str], Registered],
    plot_panels: Sequence[PlotPanel],
    run_tags: Mapping[str, str] | None,
    plot_name: str,
    title: str,
    started: float,
) -> int:
    """:func:`run_recipe` once the checkpoint directory is held: MLflow run, fit, final steps."""
    import lightning as L

    from ..tracking.metrics import MLflowMetrics, MLflowUnavailable
    from ..tracking.runs import store_errors

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    client, run_id = start_mlflow_run(cfg, run_id, run_tags)
    metrics = MLflowMetrics(client, run_id)
    if ckpt is not None:
        # Steps replayed after the checkpoint were already logged before the
        # crash: log each env step once.
        metrics.resume_from_store()
    status = "FAILED"

    def stopped(message: str, code: int, new_status: str) -> int:
        nonlocal status
        status = new_status
        saved = latest_checkpoint(ckpt_dir)
        where = f"; checkpoint {saved}, continue with --resume last" if saved else ""
        print(redact_text(f"{message}{where}"), file=sys.stderr)  # MLflow errors name the URI
        return code

    try:
        module = build_module(metrics)
        if ckpt is not None and replay_dir(ckpt).is_dir():
            module.load_replay(replay_dir(ckpt), verify=False)  # check_replay verified it
        trainer = make_trainer(cfg, build_callbacks(module), ckpt_dir, description=title)
        stop = next(c for c in trainer.callbacks if isinstance(c, GracefulStop))
        fit_started = time.perf_counter()
        try:
            trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
            train_s = time.perf_counter() - fit_started
        except NonFiniteError as err:
            return stopped(f"error: {err}", 1, "FAILED")
        except MLflowUnavailable as err:
            return stopped(f"error: {err}", 1, "FAILED")
        except CheckpointError as err:
            return stopped(f"error: {err}", 2, "FAILED")
        if stop.received is not None:
            return stopped(
                f"stopped by {stop.signal_name} at env step {module.env_steps}",
                128 + stop.received,
                "KILLED",
            )
        # Training is over and saved (the final checkpoint holds any metric
        # points the store has not taken). What follows needs the store.
        try:
            _flush_patiently(metrics)
            result = module.evaluate(cfg.eval_episodes)
            _flush_patiently(metrics)
            learned = training_score_summary(
                client, run_id, module.episode_metric, module.env_steps
            )
            for name, value in learned.items():
                metrics.add(f"train/{module.episode_metric}_{name}", value, module.env_steps)
            _flush_patiently(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_run(client, run_id, pathlib.Path(tmp) / plot_name, plot_panels)
                client.log_artifact(run_id, str(png))
            registered = register(module, result, run_id)
            summary = gather_summary(
                client=client,
                run_id=run_id,
                module=module,
                cfg=cfg,
                final=result,
                registered=registered,
                training=learned,
                title=title,
                plot_name=plot_name,
                wall_s=time.perf_counter() - started,
                train_s=train_s,
                start_steps=module.start_steps,
            )
        except store_errors() as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            return stopped(
                f"error: MLflow store failed after training ({first[:300]}); training is "
                "saved: once the store is back, --resume last logs what is missing, "
                "evaluates, plots and registers",
                1,
                "FAILED",
            )
        status = "FINISHED"
        print(format_summary(summary), flush=True)
        return 0
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        with contextlib.suppress(Exception):  # the store may be the thing that failed
            metrics.flush()
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, status)


def _flush_patiently(metrics: Any, waits: Sequence[float] = (1, 2, 4, 8, 15)) -> None:
    """Flush, giving a store outage ~30 s; :class:`MLflowUnavailable` if it stays down."""
    from ..tracking.metrics import MLflowUnavailable

    for wait in (*waits, None):
        if metrics.flush():
            return
        if wait is None:
            raise MLflowUnavailable(
                f"{len(metrics.pending)} metric points not taken: {metrics.last_error}"
            )
        time.sleep(wait)
