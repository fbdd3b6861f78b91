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
  the file: existing checkpoints are untouched;
* loading never unpickles code: every read is ``torch.load(weights_only=True)``
  (:func:`load_checkpoint_file`, and Lightning's own resume load through
  :meth:`AtomicCheckpointIO.load_checkpoint`, whatever ``weights_only`` it
  asks for); a file that would need a Python object unpickled is refused
  with one line naming the file and the object.

A replay directory (``stepN.replay/``) gets the same care:
:func:`write_dir_atomic` fills a temporary directory, writes a
``MANIFEST.sha256`` of its files, ``fsync``-s everything and renames it into
place; :func:`verify_dir` checks it before it is loaded;
:func:`remove_stale_tmp_dirs` removes what a killed write left behind.

The checksums detect damage (a torn write, a bad disk block, a truncated
copy); they are not a signature: whoever can write a checkpoint can write its
sidecar too (docs/security.md).

:func:`latest_checkpoint` finds the newest checkpoint that verifies, which is
what ``--resume last`` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "checkpoint_step",
    "latest_checkpoint",
    "load_checkpoint_file",
    "remove_stale_tmp_dirs",
    "replay_dir",
    "unpickling_refused",
    "verify_checkpoint",
    "verify_dir",
    "write_atomic",
    "write_dir_atomic",
]

_STEP_RE = re.compile(r"^step(\d+)(?:-(\d+))?\.ckpt$")
#: The checksum list inside a directory written by :func:`write_dir_atomic`.
MANIFEST = "MANIFEST.sha256"
_TMP_DIR_RE = re.compile(r"^\..+\.tmp-(\d+)$")
_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL (\S+)")


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


def unpickling_refused(path: str | os.PathLike, err: BaseException, what: str) -> str:
    """The one-line reason a ``weights_only`` load refused ``path`` (``err``: its error).

    Example:
        >>> err = RuntimeError("... Unsupported global: GLOBAL builtins.eval was not ...")
        >>> print(unpickling_refused("x.ckpt", err, "checkpoint"))  # doctest: +NORMALIZE_WHITESPACE
        checkpoint x.ckpt needs the Python object builtins.eval unpickled, which can run
        code: refused (only tensors and plain containers are loaded)
    """
    match = _GLOBAL_RE.search(str(err))
    obj = f"the Python object {match.group(1)}" if match else "Python objects"
    return (
        f"{what} {path} needs {obj} unpickled, which can run code: refused (only tensors "
        "and plain containers are loaded)"
    )


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never code.

    Args:
        path: a checkpoint file (verify it first: :func:`verify_checkpoint`).
        map_location: as for ``torch.load``.

    Raises:
        CheckpointError: the file would need a Python object unpickled (one
            line naming the file and the object; nothing in it ran).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, d / "step1.ckpt")
        >>> load_checkpoint_file(d / "step1.ckpt")["a"]
        tensor([1., 1.])
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(unpickling_refused(path, err, "checkpoint")) from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def write_dir_atomic(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Write a directory so that a crash leaves the old one, or the new one complete.

    ``fill(tmp)`` writes the files into ``.<name>.tmp-<pid>`` beside ``path``;
    then a ``MANIFEST.sha256`` of every file is added, every file and
    directory is ``fsync``-ed, and the directory is renamed to ``path``.

    Args:
        path: the target directory (its parents are created).
        fill: writes the contents into the directory it is given.

    Raises:
        CheckpointError: the write failed (one line; the temporary directory
            is removed, an existing ``path`` is untouched).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "run" / "step1.replay"
        >>> write_dir_atomic(d, lambda tmp: (tmp / "a.bin").write_bytes(b"abc"))
        >>> sorted(p.name for p in d.iterdir())
        ['MANIFEST.sha256', 'a.bin']
        >>> verify_dir(d)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        fill(tmp)
        lines = []
        for file in _files_under(tmp):
            if file.is_symlink():
                raise OSError(f"{file.relative_to(tmp)} is a symbolic link")
            _fsync_file(file)
            lines.append(f"{_sha256_file(file)}  {file.relative_to(tmp).as_posix()}\n")
        manifest = tmp / MANIFEST
        with open(manifest, "w") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        for sub in sorted({p.parent for p in _files_under(tmp)}, reverse=True):
            _fsync_dir(sub)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write {path}: {err.strerror or err} (existing checkpoints are untouched)"
        ) from None
    _fsync_dir(path.parent)


def verify_dir(path: str | os.PathLike) -> None:
    """Check a directory written by :func:`write_dir_atomic` against its ``MANIFEST.sha256``.

    Every listed file must be there with its checksum, and no other file may
    be (a file that is not listed was not written by :func:`write_dir_atomic`).

    Raises:
        CheckpointError: no such directory, no manifest, or a file missing,
            added, or changed (one line naming the directory and the file).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "step1.replay"
        >>> write_dir_atomic(d, lambda tmp: (tmp / "a.bin").write_bytes(b"abc"))
        >>> (d / "a.bin").write_bytes(b"abd") and None
        >>> verify_dir(d)
        Traceback (most recent call last):
        ...
        torchrl_eaudeqn.checkpointing.CheckpointError: .../step1.replay is damaged: a.bin ...
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(
            f"{path} has no {MANIFEST} (not written completely, or by an older version)"
        )
    expected: dict[str, str] = {}
    for line in manifest.read_text(errors="replace").splitlines():
        digest, sep, name = line.partition("  ")
        parts = Path(name).parts
        if not sep or not name or Path(name).is_absolute() or ".." in parts:
            raise CheckpointError(f"{path} is damaged: {MANIFEST} has a bad line {line[:80]!r}")
        expected[name] = digest
    found = {p.relative_to(path).as_posix(): p for p in _files_under(path) if p != manifest}
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise CheckpointError(f"{path} is damaged: {name} is missing")
        if name not in expected:
            raise CheckpointError(f"{path} is damaged: {name} is not in {MANIFEST}")
        if found[name].is_symlink():
            raise CheckpointError(f"{path} is damaged: {name} is a symbolic link")
        digest = _sha256_file(found[name])
        if digest != expected[name]:
            raise CheckpointError(
                f"{path} is damaged: {name} has sha256 {digest[:12]}..., {MANIFEST} says "
                f"{expected[name][:12]}..."
            )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_tmp_dirs(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary directories killed :func:`write_dir_atomic` calls left behind.

    A ``.<name>.tmp-<pid>`` directory of this process, or of a process that
    no longer exists, is removed; one of a live process (a write under way)
    is kept.

    Returns:
        The directories removed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / ".step1.replay.tmp-999999999").mkdir()
        >>> [p.name for p in remove_stale_tmp_dirs(d)]
        ['.step1.replay.tmp-999999999']
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in sorted(directory.iterdir()):
        match = _TMP_DIR_RE.match(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


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
        """Verify, then load with ``weights_only=True`` whatever the caller asks for.

        Raises:
            CheckpointError: the file does not verify, or would need a Python
                object unpickled (one line).
        """
        verify_checkpoint(path)
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            # weights_only is forced: a checkpoint is data, never code (docs/security.md).
            return super().load_checkpoint(path, weights_only=True, **kwargs)
        except pickle.UnpicklingError as err:
            raise CheckpointError(unpickling_refused(path, err, "checkpoint")) from None

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
