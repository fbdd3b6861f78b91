"""Crash-safe checkpoint files: atomic replace, checksums, pruning, failures that keep old files.

The end of the file runs ``recipes/control_dqn.py`` for real (CartPole, a few
hundred env steps): one timeline per directory, one writer, leftovers removed,
a directory per config.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from scripts import load_script

from torchrl_eaudeqn.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    checkpoint_step,
    latest_checkpoint,
    remove_leftovers,
    start_timeline,
    verify_checkpoint,
    write_atomic,
)
from torchrl_eaudeqn.config import load_config
from torchrl_eaudeqn.control import ControlConfig
from torchrl_eaudeqn.recipe import checkpoint_dir, config_fingerprint, find_checkpoint

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False"}


def _state(v: float) -> dict:
    return {"state_dict": {"w": torch.full((64,), v)}, "global_step": int(v)}


def test_save_verify_load_round_trip(tmp_path):
    io = AtomicCheckpointIO(keep_last=None)
    path = tmp_path / "run" / "step5.ckpt"
    io.save_checkpoint(_state(5.0), path)
    assert path.is_file() and (tmp_path / "run" / "step5.ckpt.sha256").is_file()
    verify_checkpoint(path)
    loaded = io.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.full((64,), 5.0))
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar"])
def test_damaged_checkpoints_are_refused_and_older_ones_used(tmp_path, damage):
    io = AtomicCheckpointIO(keep_last=None)
    for step in (1, 2):
        io.save_checkpoint(_state(float(step)), tmp_path / f"step{step}.ckpt")
    newest = tmp_path / "step2.ckpt"
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    else:
        (tmp_path / "step2.ckpt.sha256").unlink()
    with pytest.raises(CheckpointError) as err:
        io.load_checkpoint(newest)
    assert "step2.ckpt" in str(err.value) and "\n" not in str(err.value)
    assert latest_checkpoint(tmp_path) == tmp_path / "step1.ckpt"


def test_keep_last_prunes_old_step_files_only(tmp_path):
    io = AtomicCheckpointIO(keep_last=2)
    (tmp_path / "notes.txt").write_text("keep me")
    for step in (10, 20, 30, 40):
        io.save_checkpoint(_state(float(step)), tmp_path / f"step{step}.ckpt")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "LATEST", "notes.txt", "step30.ckpt", "step30.ckpt.sha256", "step40.ckpt",
        "step40.ckpt.sha256",
    ]  # fmt: skip
    assert (tmp_path / "LATEST").read_text() == "step40.ckpt\n"
    assert checkpoint_step(tmp_path / "step40.ckpt") == (40, 0)
    with pytest.raises(ValueError, match="keep_last"):
        AtomicCheckpointIO(keep_last=0)


def test_read_only_directory_fails_cleanly_and_keeps_old_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; the file-size limit test covers this")
    io = AtomicCheckpointIO(keep_last=None)
    io.save_checkpoint(_state(1.0), tmp_path / "step1.ckpt")
    before = (tmp_path / "step1.ckpt").read_bytes()
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write checkpoint"):
            io.save_checkpoint(_state(2.0), tmp_path / "step2.ckpt")
    finally:
        tmp_path.chmod(0o700)
    assert (tmp_path / "step1.ckpt").read_bytes() == before
    assert latest_checkpoint(tmp_path) == tmp_path / "step1.ckpt"


def test_a_full_disk_mid_write_keeps_the_previous_checkpoint(tmp_path):
    """A real write limit (RLIMIT_FSIZE) in a subprocess: the big save fails with one line."""
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        from torchrl_eaudeqn.checkpointing import AtomicCheckpointIO, CheckpointError
        io = AtomicCheckpointIO(keep_last=None)
        io.save_checkpoint({{"w": torch.zeros(10)}}, r"{tmp_path}/step1.ckpt")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            io.save_checkpoint({{"w": torch.zeros(1_000_000)}}, r"{tmp_path}/step2.ckpt")
        except CheckpointError as err:
            print("ERR", err)
            sys.exit(3)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr
    assert out.stdout.startswith("ERR cannot write checkpoint") and out.stdout.count("\n") == 1
    assert not (tmp_path / "step2.ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert latest_checkpoint(tmp_path) == tmp_path / "step1.ckpt"


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "f.bin"
    write_atomic(target, b"old")
    write_atomic(target, b"new-content")
    assert target.read_bytes() == b"new-content"
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        write_atomic(tmp_path / "missing-dir" / "f.bin", b"x")


# ------------------------------------------------------------ timelines (unit)
def _steps(directory):
    return sorted(checkpoint_step(p)[0] for p in directory.iterdir() if checkpoint_step(p))


def test_a_resumed_older_timeline_is_kept_and_the_abandoned_one_moved_aside(tmp_path):
    io = AtomicCheckpointIO(keep_last=3)
    for step in (100, 200, 300, 400):
        io.save_checkpoint(_state(float(step)), tmp_path / f"step{step}.ckpt")
    (tmp_path / "step400.replay").mkdir()
    moved = start_timeline(tmp_path, resume=tmp_path / "step200.ckpt")
    assert sorted(p.name for p in moved) == [
        "step300.ckpt", "step300.ckpt.sha256", "step400.ckpt", "step400.ckpt.sha256",
        "step400.replay",
    ]  # fmt: skip
    assert _steps(tmp_path) == [200] and _steps(tmp_path / "abandoned") == [300, 400]
    assert latest_checkpoint(tmp_path) == tmp_path / "step200.ckpt"
    # The new timeline's checkpoints survive as written (by step they rank below 300, 400).
    for step in (250, 280, 310):
        io.save_checkpoint(_state(float(step)), tmp_path / f"step{step}.ckpt")
        assert latest_checkpoint(tmp_path) == tmp_path / f"step{step}.ckpt"
    assert _steps(tmp_path) == [250, 280, 310]
    # A fresh start abandons everything, replacing the previous abandoned/.
    start_timeline(tmp_path, resume=None)
    assert _steps(tmp_path) == [] and _steps(tmp_path / "abandoned") == [250, 280, 310]
    assert latest_checkpoint(tmp_path) is None


def test_resuming_from_the_abandoned_folder_keeps_it(tmp_path):
    io = AtomicCheckpointIO(keep_last=None)
    for step in (1, 2):
        io.save_checkpoint(_state(float(step)), tmp_path / f"step{step}.ckpt")
    start_timeline(tmp_path, resume=tmp_path / "step1.ckpt")  # step2 -> abandoned/
    io.save_checkpoint(_state(1.5), tmp_path / "step3.ckpt")
    start_timeline(tmp_path, resume=tmp_path / "abandoned" / "step2.ckpt")
    assert _steps(tmp_path / "abandoned") == [2]  # the file resumed from is still there
    assert _steps(tmp_path / "abandoned-2") == [1, 3] and _steps(tmp_path) == []
    assert latest_checkpoint(tmp_path) is None


def test_latest_never_looks_above_the_pointer(tmp_path):
    io = AtomicCheckpointIO(keep_last=None)
    for step in (1, 2):
        io.save_checkpoint(_state(float(step)), tmp_path / f"step{step}.ckpt")
    write_atomic(tmp_path / "LATEST", b"step1.ckpt\n")  # a crash while moving step2 aside
    assert latest_checkpoint(tmp_path) == tmp_path / "step1.ckpt"
    (tmp_path / "LATEST").unlink()  # a directory written before pointers: by step
    assert latest_checkpoint(tmp_path) == tmp_path / "step2.ckpt"


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    io = AtomicCheckpointIO(keep_last=None)
    io.save_checkpoint(_state(1.0), tmp_path / "step1.ckpt")
    live = os.getppid()  # a live process that is not writing here (a reused pid)
    (tmp_path / f".step2.ckpt.tmp-{live}").write_bytes(b"half a checkpoint")
    (tmp_path / f".step2.ckpt.sha256.tmp-{live}").write_bytes(b"ab")
    (tmp_path / ".step2.replay.tmp-999999999").mkdir()
    (tmp_path / "step2.replay").mkdir()  # written, then the checkpoint's write was killed
    (tmp_path / "step3.ckpt.sha256").write_text("00  step3.ckpt\n")
    assert remove_leftovers(tmp_path) == [tmp_path / ".step2.replay.tmp-999999999"]
    removed = remove_leftovers(tmp_path, locked=True)  # the caller holds the lock
    assert sorted(p.name for p in removed) == [
        f".step2.ckpt.sha256.tmp-{live}", f".step2.ckpt.tmp-{live}", "step2.replay",
        "step3.ckpt.sha256",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "LATEST", "step1.ckpt", "step1.ckpt.sha256",
    ]  # fmt: skip


def test_the_fingerprint_separates_configs_and_ignores_resumable_fields():
    def cfg(*over):
        return load_config(ControlConfig, overrides=["task=CartPole-v1", *over])

    base = checkpoint_dir(cfg())
    assert base.name == f"CartPole-v1-eaudeqn-w128-seed0-{config_fingerprint(cfg())}"
    assert checkpoint_dir(cfg("lr=0.0005")) != base  # another run: another folder
    assert checkpoint_dir(cfg("num_members=3")) != base
    for same in ("env_steps=99", "log_every=7", "tracking_uri=sqlite:///other.db",
                 "checkpoint_dir=checkpoints", "threads=1", "eval_episodes=2"):  # fmt: skip
        assert checkpoint_dir(cfg(same)) == base, same
    # A field at its default value does not count: naming it changes nothing.
    assert checkpoint_dir(cfg(f"lr={ControlConfig().lr}")) == base


# ------------------------------------------------------------ real recipe runs
CONTROL = [
    "task=CartPole-v1", "width=8", "num_members=2", "progress_bar=false", "threads=1",
    "learning_starts=40", "target_period=20", "buffer_size=200", "batch_size=8",
    "eval_episodes=1", "eval_max_steps=30", "eval_random_baseline=false", "log_every=40",
]  # fmt: skip


@pytest.fixture(scope="module")
def control_main():
    return load_script("recipes/control_dqn.py", "control_dqn_checkpointing").main


def _control(tmp_path, *over):
    args = [*CONTROL, f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"checkpoint_dir={tmp_path}/ckpt", *over]  # fmt: skip
    return args, load_config(ControlConfig, overrides=args)


def _header_steps(path):
    return torch.load(path, map_location="cpu", weights_only=True)["eaudeqn"]["env_steps"]


def test_resume_from_an_older_checkpoint_writes_a_timeline_that_survives(
    tmp_path, capsys, control_main
):
    args, cfg = _control(tmp_path, "checkpoint_every=40")  # 3 kept (ControlConfig)
    assert control_main([*args, "env_steps=200"]) == 0, capsys.readouterr().err[-2000:]
    ckpt_dir = checkpoint_dir(cfg)
    assert _steps(ckpt_dir) == [120, 160, 200]
    capsys.readouterr()
    # Back to step 120 with another checkpoint period and a shorter budget.
    older = ckpt_dir / "step000000000120.ckpt"
    code = control_main([*args, "env_steps=180", "checkpoint_every=30", "--resume", str(older)])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "note: 2 checkpoint(s) of an abandoned timeline (steps above step000000000120" in err
    # Retention: the newest 3 of this timeline, by write order (150 was not pruned for 160/200).
    assert _steps(ckpt_dir) == [120, 150, 180]
    assert _steps(ckpt_dir / "abandoned") == [160, 200]
    last = find_checkpoint(cfg, "last")
    assert last == ckpt_dir / "step000000000180.ckpt" and _header_steps(last) == 180
    # --resume last continues this timeline, not the abandoned step 200.
    assert control_main([*args, "env_steps=220", "--resume", "last"]) == 0
    assert "\nenv steps         220 (40 after resuming at 180) in " in capsys.readouterr().out
    assert _steps(ckpt_dir) == [180, 200, 220] and _steps(ckpt_dir / "abandoned") == [160, 200]


def test_a_second_run_on_the_same_directory_is_refused_and_leftovers_go(
    tmp_path, capsys, control_main
):
    args, cfg = _control(tmp_path, "env_steps=80", "checkpoint_every=40")
    ckpt_dir = checkpoint_dir(cfg)
    # A run holding the directory, killed in the middle of a checkpoint write.
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, time
            from pathlib import Path
            from torchrl_eaudeqn.checkpointing import CheckpointDirLock
            d = Path(r"{ckpt_dir}")
            CheckpointDirLock(d).acquire()
            (d / f".step000000000040.ckpt.tmp-{{os.getpid()}}").write_bytes(b"half")
            (d / f".step000000000040.replay.tmp-{{os.getpid()}}").mkdir()
            (d / "step000000000040.replay").mkdir()
            print("held", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert control_main(args) == 2
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert line.startswith(f"error: checkpoint directory {ckpt_dir} is in use by pid ")
        assert f"pid {holder.pid} on {socket.gethostname()} since " in line
        assert not (tmp_path / "mlflow.db").exists()  # refused before the MLflow run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert len(list(ckpt_dir.glob(".*.tmp-*"))) == 2
    # The kernel dropped the killed holder's lock; its leftovers go at this start.
    assert control_main(args) == 0, capsys.readouterr().err[-2000:]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        ".lock", "LATEST", "step000000000040.ckpt", "step000000000040.ckpt.sha256",
        "step000000000080.ckpt", "step000000000080.ckpt.sha256",
    ]  # fmt: skip


def test_configs_that_differ_get_their_own_folder_and_old_folders_still_resume(
    tmp_path, capsys, control_main
):
    args, cfg = _control(tmp_path, "env_steps=80", "checkpoint_every=40")
    assert control_main(args) == 0, capsys.readouterr().err[-2000:]
    assert control_main([*args, "lr=0.0005"]) == 0, capsys.readouterr().err[-2000:]
    _, other = _control(tmp_path, "lr=0.0005")
    mine, theirs = checkpoint_dir(cfg), checkpoint_dir(other)
    assert mine != theirs and _steps(mine) == [40, 80] and _steps(theirs) == [40, 80]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted([mine.name, theirs.name])
    # A directory written before fingerprints (<run key>/) is still found by --resume last.
    legacy = tmp_path / "ckpt" / cfg.run_key
    mine.rename(legacy)
    assert control_main([*args[:-2], "env_steps=120", "--resume", "last"]) == 0
    assert "\nenv steps         120 (40 after resuming at 80) in " in capsys.readouterr().out
    assert _steps(legacy) == [40, 80]  # read, not changed
    assert _steps(mine) == [120] and _header_steps(mine / "step000000000120.ckpt") == 120
