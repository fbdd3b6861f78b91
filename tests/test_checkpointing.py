"""Crash-safe checkpoint files: atomic replace, checksums, pruning, failures that keep old files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from torchrl_eaudeqn.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    checkpoint_step,
    latest_checkpoint,
    verify_checkpoint,
    write_atomic,
)


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
