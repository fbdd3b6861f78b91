"""Buffered MLflow metric writes keyed by env step, that survive a store outage."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from ..credentials import redact_text

__all__ = ["FLUSHED_TAG", "MAX_PENDING", "MLflowMetrics", "MLflowUnavailable"]


class MLflowUnavailable(RuntimeError):
    """The tracking store stayed unreachable for longer than the metric buffer allows."""


#: Metric points :class:`MLflowMetrics` keeps while the store is down (~170 bytes each in
#: memory, ~30 in a checkpoint: 17 MB and 3 MB at the limit).
MAX_PENDING = 100_000


#: Run tag holding the last env step whose metrics reached the store.
FLUSHED_TAG = "torchrl_eaudeqn.flushed_step"


class MLflowMetrics:
    """Buffers ``(key, value, env_step)`` and writes them in one ``log_batch`` call.

    Metrics are keyed by env step, so a resumed run continues the same curves.
    Nothing is lost silently:

    * a flush that fails (tracking server down, database locked) keeps the
      buffer and is retried at the next flush; once the store has failed
      every flush for ``max_outage_s`` seconds (and at least 3 in a row),
      :class:`MLflowUnavailable` stops training (the recipe then
      checkpoints, and the unsent metrics travel in the checkpoint, see
      ``pending``). Time, not a count of flushes: how many flushes an
      outage spans depends on ``log_every`` and the run's speed;
    * the buffer is bounded: a failed flush with ``max_pending`` points or
      more kept stops training the same way, whatever the time (a fast run
      with per-episode metrics fills memory long before ``max_outage_s``);
    * each successful flush records the newest env step it sent in the run's
      ``torchrl_eaudeqn.flushed_step`` tag; a resumed run
      (:meth:`resume_from_store`) skips points at or below it, and below each
      key's newest stored step (a kill between a batch and its tag write
      leaves the tag behind), so the steps it replays after its checkpoint
      are not logged twice.

    Args:
        client: an ``MlflowClient`` (``None``: buffer only).
        run_id: the run the points go to.
        max_outage_s: seconds of failed flushes before training stops.
        max_pending: points kept before a failed flush stops training
            (``None``: :data:`MAX_PENDING`).
        clock: the time source (tests).

    Example:
        >>> m = MLflowMetrics(client=None, run_id=None)
        >>> m.add("score", 1.0, step=10); len(m.pending)
        1
        >>> m.skip_through = 10; m.add("score", 2.0, step=10); len(m.pending)
        1
    """

    def __init__(
        self,
        client: Any,
        run_id: str | None,
        max_outage_s: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.pending: list[Any] = []
        self.skip_through = -1
        self.max_outage_s = max_outage_s
        self.max_pending = MAX_PENDING if max_pending is None else int(max_pending)
        self.clock = clock
        self._down_since = 0.0
        self.failures = 0
        self.last_error: str | None = None
        self._tag_due = -1  # newest env step sent whose flushed-step tag is not written yet
        self.skip_keys: dict[str, int] = {}  # per key: newest step already in the store

    def _sent(self, key: str, step: int) -> bool:
        return step <= self.skip_through or step <= self.skip_keys.get(key, -1)

    def resume_from_store(self) -> None:
        """Read what the run's store already holds (called once, on resume)."""
        run = self.client.get_run(self.run_id)
        flushed = run.data.tags.get(FLUSHED_TAG)
        self.skip_through = max(self.skip_through, int(flushed) if flushed else -1)
        # Newest step per key: RunData keeps them (MLflow's latest_metrics);
        # the public fallback reads each key's history.
        latest = getattr(run.data, "_metric_objs", None)
        if latest is None:
            latest = [
                m
                for key in run.data.metrics
                for m in self.client.get_metric_history(self.run_id, key)
            ]
        for m in latest:
            self.skip_keys[m.key] = max(self.skip_keys.get(m.key, -1), int(m.step))

    def add(self, key: str, value: float, step: int) -> None:
        if self._sent(key, int(step)):
            return
        if math.isfinite(float(value)):
            self.pending.append((key, float(value), int(step), int(time.time() * 1000)))

    def flush(self) -> bool:
        """Send the buffer; ``False`` (buffer kept) when the store did not take it."""
        if (not self.pending and self._tag_due < 0) or self.client is None:
            return True
        from mlflow.entities import Metric

        todo = [p for p in self.pending if not self._sent(p[0], p[2])]
        metrics = [Metric(k, v, ts, s) for k, v, s, ts in todo]
        sent = 0
        try:
            for i in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
                self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
                sent = min(len(todo), i + 1000)
                # Points sent must be named by the tag even if the tag write
                # below fails: a resume would log them twice otherwise.
                self._tag_due = max(self._tag_due, max(p[2] for p in todo[:sent]))
            if self._tag_due >= 0:
                self.client.set_tag(self.run_id, FLUSHED_TAG, str(self._tag_due))
                self._tag_due = -1
        except Exception as err:  # noqa: BLE001 - any store error: keep the buffer, retry later
            # Batches already sent are dropped from the buffer, so a retry does
            # not send them twice.
            self.pending = todo[sent:]
            self.failures += 1
            first = str(err).splitlines()[0] if str(err) else ""
            self.last_error = redact_text(f"{type(err).__name__}: {first}")  # it names the URI
            if self.failures == 1:
                self._down_since = self.clock()
                print(
                    f"warning: MLflow store unreachable ({self.last_error}); keeping "
                    f"{len(self.pending)} metric points, retrying at each log",
                    file=sys.stderr,
                )
            down = self.clock() - self._down_since
            if self.failures >= 3 and down >= self.max_outage_s:
                raise MLflowUnavailable(
                    f"MLflow tracking store unreachable for {down:.0f} s ({self.failures} "
                    f"flushes in a row; {self.last_error}); {len(self.pending)} metric points "
                    "kept in the checkpoint"
                ) from None
            if len(self.pending) >= self.max_pending:
                raise MLflowUnavailable(
                    f"MLflow tracking store unreachable ({self.failures} flushes in a row, "
                    f"{down:.0f} s; {self.last_error}) and {len(self.pending)} metric points "
                    f"buffered, the limit (max_pending {self.max_pending}): training stopped, "
                    "the points are kept in the checkpoint"
                ) from None
            return False
        if self.failures:
            print(f"MLflow store back after {self.failures} failed flushes", file=sys.stderr)
        self.pending.clear()
        # skip_through only changes on resume: later points at an already sent
        # step (the final evaluation at the last log step) must still go out.
        self.failures = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        """Unsent points (they go into checkpoints, so an outage loses nothing)."""
        return {"pending": [list(p) for p in self.pending], "tag_due": self._tag_due}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = [tuple(p) for p in state.get("pending", [])] + self.pending
        # Points sent before the checkpoint whose tag write failed: skip them
        # too, and write the tag at the next flush.
        due = int(state.get("tag_due", -1))
        if due > self.skip_through:
            self.skip_through = self._tag_due = due
