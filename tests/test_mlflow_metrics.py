"""MLflowMetrics under store failures (a fake client: pure buffering logic).

The real-server outages (kill ``mlflow server`` mid-run, restart it) are in
``tests/test_reliability.py`` and, for the buffer's bound, at the end of this
file (a real ``recipes/control_dqn.py`` run, reliability suite).
"""

from __future__ import annotations

import pathlib
import signal
import threading
import time

import pytest
import torch
from mlflow.entities import Metric

from torchrl_eaudeqn.lightning import FLUSHED_TAG, MAX_PENDING, MLflowMetrics, MLflowUnavailable


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


def test_the_buffer_is_bounded_during_an_outage_and_nothing_is_lost():
    client = FlakyClient(fail_batches=set(range(100)))
    m = MLflowMetrics(client, "run", max_pending=50, clock=lambda: 0.0)
    assert MLflowMetrics(None, None).max_pending == MAX_PENDING
    _fill(m, range(30))
    assert m.flush() is False and len(m.pending) == 30  # below the bound: keep buffering
    _fill(m, range(30, 60))
    # No time has passed (the max_outage_s rule would wait): the count stops it.
    with pytest.raises(MLflowUnavailable) as err:
        m.flush()
    line = str(err.value)
    assert "60 metric points buffered, the limit (max_pending 50)" in line and "\n" not in line
    assert "kept in the checkpoint" in line
    resumed = MLflowMetrics(FlakyClient(), "run")
    resumed.load_state_dict(m.state_dict())
    assert resumed.flush() is True
    assert [s for _, s in resumed.client.stored] == list(range(60))


@pytest.mark.reliability
def test_a_real_outage_stops_at_the_bound_and_resume_logs_every_step_once(
    tmp_path, capsys, monkeypatch
):
    """``recipes/control_dqn.py`` in-process; the tracking server is SIGKILLed mid-run.

    With a small bound the run stops with one line well before ``max_outage_s``
    (30 min), its checkpoint holds the unsent points, and ``--resume last``
    logs every env step exactly once once the server is back.
    """
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer
    from scripts import load_script, run_dir

    import torchrl_eaudeqn.tracking.metrics as metrics_mod
    from torchrl_eaudeqn.checkpointing import latest_checkpoint

    main = load_script("recipes/control_dqn.py", "control_dqn_metrics").main
    monkeypatch.setattr(metrics_mod, "MAX_PENDING", 60)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = MlflowServer(tmp_path).start()
    args = [
        "task=CartPole-v1", "width=8", "num_members=2", "progress_bar=false", "threads=1",
        "env_steps=1000", "learning_starts=40", "target_period=20", "buffer_size=200",
        "batch_size=8", "eval_episodes=1", "eval_max_steps=30", "eval_random_baseline=false",
        "log_every=20", "checkpoint_every=40", f"tracking_uri={server.uri}",
        f"checkpoint_dir={tmp_path}/ckpt",
    ]  # fmt: skip
    root = pathlib.Path(tmp_path) / "ckpt"

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            d = run_dir(root, "CartPole-v1-eaudeqn-w8-seed0") if root.is_dir() else None
            if d is not None and latest_checkpoint(d) is not None:
                server.stop(signal.SIGKILL)
                return
            time.sleep(0.05)

    try:
        killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
        killer.start()
        code = main(args)
        killer.join()
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert code == 1 and len(lines) == 1, err[-3000:]
        assert "metric points buffered, the limit (max_pending 60)" in lines[0]
        assert "continue with --resume last" in lines[0]
        saved = latest_checkpoint(run_dir(root, "CartPole-v1-eaudeqn-w8-seed0"))
        state = torch.load(saved, weights_only=True)["eaudeqn"]
        assert state["env_steps"] < 1000  # stopped early, by the bound
        assert 60 <= len(state["mlflow_pending"]["pending"]) < 200

        server.start()
        assert main([*args, "--resume", "last"]) == 0, capsys.readouterr().err[-3000:]
        client = MlflowClient(server.uri)
        (run,) = client.search_runs(
            [client.get_experiment_by_name("eaudeqn-control").experiment_id]
        )
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "epsilon"))
        assert steps == list(range(20, 1001, 20))  # every log step once, none lost
    finally:
        server.stop()
