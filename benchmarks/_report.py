"""What the throughput benchmarks share: machine facts, the docs table section, a bare fit."""

from __future__ import annotations

import os
import pathlib
import platform
import time
from typing import Any

import lightning as L
import torch

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def fit(module: Any, callbacks: list[Any], trainer: str = "bare") -> None:
    """Train ``module`` on the CPU with Lightning.

    ``trainer="bare"``: nothing but ``callbacks`` (no logger, bar, checkpoints).
    ``"recipe"``: the recipes' own ``make_trainer`` (NaN/Inf guard before every
    optimizer step, env-step checkpoints in a temporary directory, graceful
    stop; no progress bar, no MLflow). Set ``checkpoint_every`` past the budget
    to keep checkpoint writes out of a timed run.
    """
    if trainer == "recipe":
        import tempfile

        from torchrl_eaudeqn.trainers.recipe import make_trainer

        with tempfile.TemporaryDirectory() as tmp:
            make_trainer(module.cfg, callbacks, pathlib.Path(tmp)).fit(module)
        return
    if trainer != "bare":
        raise ValueError(f"trainer must be 'bare' or 'recipe', got {trainer!r}")
    L.Trainer(
        max_epochs=-1, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    ).fit(module)  # fmt: skip


class LearningClock(L.Callback):
    """A Lightning callback: time and env steps at the first gradient step and at the last batch.

    ``(end - start)`` is the learning phase: random steps before learning starts
    do not count.
    """

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs and self.start is None:  # the first gradient step
            self.start = (time.perf_counter(), pl_module.env_steps)
        self.end = (time.perf_counter(), pl_module.env_steps)

    def rate(self) -> float:
        """Learning-phase env steps per second."""
        (t0, s0), (t1, s1) = self.start, self.end
        return (s1 - s0) / (t1 - t0)


def loop_parts(
    steps: int, seconds: float, env_s: float, act_s: float, grad_s: float
) -> dict[str, float]:
    """A plain loop's env steps/s and per-env-step microseconds of its timed parts.

    ``overhead_us`` is what is left of an env step after the env step, the
    acting forward and the gradient steps.
    """
    return {
        "rate": steps / seconds,
        "env_us": 1e6 * env_s / steps,
        "act_us": 1e6 * act_s / steps,
        "grad_us": 1e6 * grad_s / steps,
        "overhead_us": 1e6 * (seconds - env_s - act_s - grad_s) / steps,
    }


def machine_info() -> dict[str, Any]:
    """torch version, thread count, CPU and cores: the context every result JSON carries."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }


def write_docs_section(tag: str, body: str, docs: pathlib.Path = DOCS) -> None:
    """Replace the ``<!-- tag:start/end -->`` block of ``docs`` (append it if missing)."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    counts = (text.count(start), text.count(end))
    if counts == (0, 0):
        text = text.rstrip() + "\n\n" + block + "\n"
    elif counts == (1, 1) and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        # A hand edit broke the markers: appending or splicing would duplicate text.
        raise ValueError(
            f"{docs}: expected one {start!r} before one {end!r}, found {counts[0]} and "
            f"{counts[1]}; repair the markers by hand"
        )
    docs.write_text(text)
