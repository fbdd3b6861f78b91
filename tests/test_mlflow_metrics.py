"""MLflowMetrics under store failures (a fake client: pure buffering logic).

The real-server outage (kill ``mlflow server`` mid-run, restart it) is in
``tests/test_reliability.py``.
"""

from __future__ import annotations

import pytest
from mlflow.entities import Metric

from torchrl_eaudeqn.lightning import FLUSHED_TAG, MLflowMetrics, MLflowUnavailable


class FlakyClient:
    """Records what reached the store; fails the calls listed in ``fail``."""

    def __init__(self, fail_batches=(), fail_tags=()):
        self.fail_batches = set(fail_batches)  # indexes of log_batch calls that raise
        self.fail_tags = set(fail_tags)  # indexes of set_tag calls that raise
        self.batch_calls = self.tag_calls = 0
        self.stored: list[tuple[str, int]] = []
        self.tags: dict[str, str] = {}

    def log_batch(self, run_id, metrics):
        i, self.batch_calls = self.batch_calls, self.batch_calls + 1
        if i in self.fail_batches:
            raise ConnectionError("store down")
        assert len(metrics) <= 1000
        self.stored += [(m.key, m.step) for m in metrics]

    def set_tag(self, run_id, key, value):
        i, self.tag_calls = self.tag_calls, self.tag_calls + 1
        if i in self.fail_tags:
            raise ConnectionError("store down")
        self.tags[key] = value


def _fill(m, steps, key="loss"):
    for s in steps:
        m.add(key, float(s), step=s)


def test_failed_flushes_keep_everything_and_send_each_point_once():
    client = FlakyClient(fail_batches={0, 1})
    m = MLflowMetrics(client, "run")
    _fill(m, range(0, 30, 10))
    assert m.flush() is False and m.flush() is False and m.failures == 2
    _fill(m, range(30, 50, 10))
    assert m.flush() is True and m.failures == 0 and m.pending == []
    assert client.stored == [("loss", s) for s in range(0, 50, 10)]
    assert client.tags[FLUSHED_TAG] == "40"


def test_a_failure_between_batches_does_not_resend_the_first():
    client = FlakyClient(fail_batches={1})  # 2500 points = 3 batches; the 2nd fails
    m = MLflowMetrics(client, "run")
    _fill(m, range(2500))
    assert m.flush() is False and len(m.pending) == 1500
    assert m.flush() is True
    assert sorted(s for _, s in client.stored) == list(range(2500))


def test_a_failed_tag_write_is_retried_and_travels_in_the_checkpoint():
    client = FlakyClient(fail_tags={0})
    m = MLflowMetrics(client, "run")
    _fill(m, [10, 20])
    assert m.flush() is False and m.pending == []  # points sent, tag not written
    state = m.state_dict()
    assert state["tag_due"] == 20
    # A resume from this state (the store still says nothing) skips what was sent.
    resumed = MLflowMetrics(FlakyClient(), "run")
    resumed.load_state_dict(state)
    _fill(resumed, [20, 30])
    assert resumed.flush() is True
    assert resumed.client.stored == [("loss", 30)] and resumed.client.tags[FLUSHED_TAG] == "30"
    # ... and the original writes the tag at its next flush, even with nothing new.
    assert m.flush() is True and client.tags[FLUSHED_TAG] == "20"


def test_a_long_outage_stops_with_the_points_kept():
    client = FlakyClient(fail_batches=set(range(100)))
    now = [0.0]
    m = MLflowMetrics(client, "run", max_outage_s=600.0, clock=lambda: now[0])
    _fill(m, [1, 2, 3])
    # Many quick failures are not enough (a fast run logs often) ...
    for _ in range(50):
        now[0] += 1.0
        assert m.flush() is False
    # ... ten minutes of nothing but failures are.
    now[0] = 601.0
    with pytest.raises(MLflowUnavailable, match=r"unreachable for 600 s \(51 flushes.*3 metric"):
        m.flush()
    # The unsent points go into the checkpoint and out after the resume.
    resumed = MLflowMetrics(FlakyClient(), "run")
    resumed.load_state_dict(m.state_dict())
    assert resumed.flush() is True and [s for _, s in resumed.client.stored] == [1, 2, 3]


def test_resume_skips_steps_already_flushed_but_keeps_later_points_at_the_same_step():
    m = MLflowMetrics(FlakyClient(), "run")
    m.skip_through = 20  # the run's flushed-step tag at resume
    _fill(m, [10, 20, 30])
    assert m.flush() is True and m.client.stored == [("loss", 30)]
    m.add("eval", 1.0, step=30)  # final evaluation at the last logged step
    assert m.flush() is True and m.client.stored[-1] == ("eval", 30)


def test_resume_after_a_kill_between_batch_and_tag_logs_each_step_once(tmp_path):
    """A real SQLite store: the batch went in, the process died before the tag."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    before = MLflowMetrics(client, run_id)
    _fill(before, [40, 80])
    assert before.flush() is True  # tag: 80
    client.log_batch(run_id, metrics=[Metric("loss", 120.0, 0, 120)])  # ... tag never written
    client.log_batch(run_id, metrics=[Metric("score", 1.0, 0, 110)])
    assert client.get_run(run_id).data.tags[FLUSHED_TAG] == "80"

    resumed = MLflowMetrics(client, run_id)
    resumed.resume_from_store()
    _fill(resumed, [80, 120, 160])  # replayed from a checkpoint at step 80
    _fill(resumed, [110, 150], key="score")
    assert resumed.flush() is True
    loss = [m.step for m in client.get_metric_history(run_id, "loss")]
    score = [m.step for m in client.get_metric_history(run_id, "score")]
    assert sorted(loss) == [40, 80, 120, 160] and sorted(score) == [110, 150]
