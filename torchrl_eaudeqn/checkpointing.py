"""Crash-safe checkpoint files: atomic writes, checksums, the last N kept.

Lightning writes checkpoints through a :class:`~lightning.fabric.plugins.CheckpointIO`
plugin; :class:`AtomicCheckpointIO` is one that survives ``SIGKILL`` and full
disks:

* the bytes go to a temporary file in the same directory, are ``fsync``-ed,
  then ``os.replace``-d over the target name (atomic on POSIX), and the
  directory is ``fsync``-ed, so a reader sees the old file or the new one,
  never half of one;
* a ``<name>.sha256`` sidecar is written (atomically) *before* the checkpoint
  it describes, so every checkpoint on disk has its checksum; a file whose
  bytes do not match is reported as corrupt, never loaded;
* after a successful write only the newest ``keep_last`` ``step*.ckpt`` files
  of the directory are kept (older ones and their sidecars are removed);
* a failed write (``ENOSPC``, read-only directory, ...) removes its
  temporary file and raises :class:`CheckpointError` with one line naming
  the file: existing checkpoints are untouched.

:func:`latest_checkpoint` finds the newest checkpoint that verifies, which is
what ``--resume last`` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "checkpoint_step",
    "latest_checkpoint",
    "replay_dir",
    "verify_checkpoint",
    "write_atomic",
]

_STEP_RE = re.compile(r"^step(\d+)(?:-(\d+))?\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or does not verify (message: one line)."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    Args:
        path: the target file; its directory must exist.
        data: the bytes.

    Raises:
        CheckpointError: the write failed (the target is untouched).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.bin"
        >>> write_atomic(p, b"abc"); p.read_bytes()
        b'abc'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(
            f"cannot write checkpoint {path}: {err.strerror or err} (existing checkpoints are "
            "untouched)"
        ) from None
    _fsync_dir(path.parent)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check a checkpoint file against its ``.sha256`` sidecar.

    Raises:
        CheckpointError: the file is missing, has no sidecar, or its bytes differ.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> AtomicCheckpointIO().save_checkpoint({"a": 1}, d / "step1.ckpt")
        >>> verify_checkpoint(d / "step1.ckpt")
        >>> (d / "step1.ckpt").write_bytes(b"garbage") and None
        >>> verify_checkpoint(d / "step1.ckpt")
        Traceback (most recent call last):
        ...
        torchrl_eaudeqn.checkpointing.CheckpointError: checkpoint .../step1.ckpt is corrupt: ...
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    side = _sidecar(path)
    if not side.is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file {side.name}")
    expected = side.read_text().split()[0] if side.stat().st_size else ""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: sha256 {digest[:12]}... does not match "
            f"{side.name} ({expected[:12] or 'empty'}...)"
        )


def replay_dir(path: str | os.PathLike) -> Path:
    """Where the replay buffer of checkpoint ``path`` is written (``stepN.replay/``).

    Example:
        >>> replay_dir("ckpt/step000100.ckpt").as_posix()
        'ckpt/step000100.replay'
    """
    return Path(path).with_suffix(".replay")


def checkpoint_step(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(step, version)`` of a ``step<N>[-<v>].ckpt`` name, else ``None``.

    Example:
        >>> checkpoint_step("a/step000120.ckpt"), checkpoint_step("step7-2.ckpt")
        ((120, 0), (7, 2))
    """
    match = _STEP_RE.match(Path(path).name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest ``step*.ckpt`` in ``directory`` that verifies, or ``None``.

    Newer files that fail verification (a crash between the sidecar and the
    file, a corrupted disk block) are skipped in favour of older good ones.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> io_ = AtomicCheckpointIO()
        >>> io_.save_checkpoint({"s": 1}, d / "step1.ckpt")
        >>> io_.save_checkpoint({"s": 2}, d / "step2.ckpt")
        >>> (d / "step2.ckpt").write_bytes(b"torn") and latest_checkpoint(d).name
        'step1.ckpt'
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(
        ((checkpoint_step(p), p) for p in directory.iterdir() if checkpoint_step(p)),
        reverse=True,
    )
    for _, path in found:
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes, sha256 sidecars, the last N kept.

    Args:
        keep_last: how many ``step*.ckpt`` files to keep per directory (>= 1);
            ``None`` keeps all.

    Example:
        >>> import tempfile, lightning as L
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO(keep_last=3)], logger=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> type(trainer.strategy.checkpoint_io).__name__
        'AtomicCheckpointIO'
    """

    def __init__(self, keep_last: int | None = 3) -> None:
        super().__init__()
        if keep_last is not None and (isinstance(keep_last, bool) or int(keep_last) < 1):
            raise ValueError(f"keep_last must be an int >= 1 or None, got {keep_last!r}")
        self.keep_last = keep_last

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(
                f"cannot create checkpoint directory {path.parent}: {err.strerror or err}"
            ) from None
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        # The sidecar first: a crash between the two leaves a sidecar without
        # its file (ignored) or an old file with a new sidecar (reported corrupt,
        # an older checkpoint is used), never an unverifiable checkpoint.
        write_atomic(_sidecar(path), f"{digest}  {path.name}\n".encode())
        write_atomic(path, data)
        self._prune(path.parent)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None):
        verify_checkpoint(path)
        if map_location is None:
            return super().load_checkpoint(path, weights_only=weights_only)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        path = Path(path)
        for p in (path, _sidecar(path)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        shutil.rmtree(replay_dir(path), ignore_errors=True)

    def _prune(self, directory: Path) -> None:
        if self.keep_last is None:
            return
        ckpts = sorted(
            ((checkpoint_step(p), p) for p in directory.iterdir() if checkpoint_step(p)),
            reverse=True,
        )
        for _, old in ckpts[self.keep_last :]:
            self.remove_checkpoint(old)
