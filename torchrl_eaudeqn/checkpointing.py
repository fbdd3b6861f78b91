"""Crash-safe checkpoint files: atomic writes, checksums, one timeline, one writer.

Lightning writes checkpoints through a :class:`~lightning.fabric.plugins.CheckpointIO`
plugin; :class:`~torchrl_eaudeqn.trainers.checkpoint_io.AtomicCheckpointIO`,
built on the functions here, is one that survives ``SIGKILL`` and full disks
(this module itself does not import Lightning):

* the bytes go to a temporary file in the same directory, are ``fsync``-ed,
  then ``os.replace``-d over the target name (atomic on POSIX), and the
  directory is ``fsync``-ed, so a reader sees the old file or the new one,
  never half of one;
* a ``<name>.sha256`` sidecar is written (atomically) *before* the checkpoint
  it describes, so every checkpoint on disk has its checksum; a file whose
  bytes do not match is reported as corrupt, never loaded;
* before a ``step*.ckpt`` is written, the directory's ``LATEST`` pointer is
  set (atomically) to its name: the newest checkpoint of the timeline being
  written. :func:`latest_checkpoint` (``--resume last``) never looks above
  it, so a checkpoint of another timeline cannot be picked;
* after a successful write only the newest ``keep_last`` ``step*.ckpt`` files
  of the directory are kept (older ones, their sidecars and replays are
  removed). Step order is write order here because :func:`start_timeline`
  moved every checkpoint of an abandoned timeline out of the directory when
  the run started;
* a failed write (``ENOSPC``, read-only directory, ...) removes its
  temporary file and raises :class:`CheckpointError` with one line naming
  the file: existing checkpoints are untouched;
* loading never unpickles code: every read is ``torch.load(weights_only=True)``
  (:func:`load_checkpoint_file`, and Lightning's own resume load through
  :meth:`AtomicCheckpointIO.load_checkpoint`, whatever ``weights_only`` it
  asks for); a file that would need a Python object unpickled is refused
  with one line naming the file and the object.

One directory, one writer: :class:`CheckpointDirLock` holds an ``fcntl.flock``
on the directory's ``.lock`` file for the whole run; a second process is
refused with one line naming the holder (pid, host, start time). The kernel
drops the lock when its process dies, however it dies, so a killed run never
leaves the directory locked. :func:`remove_leftovers` removes what killed
writes left behind (temporary files and directories, a sidecar or a replay
whose checkpoint was never written).

A replay directory (``stepN.replay/``) gets the same care:
:func:`write_dir_atomic` fills a temporary directory, writes a
``MANIFEST.sha256`` of its files, ``fsync``-s everything and renames it into
place; :func:`verify_dir` checks it before it is loaded.

The checksums detect damage (a torn write, a bad disk block, a truncated
copy); they are not a signature: whoever can write a checkpoint can write its
sidecar too (docs/security.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._lazy import moved_names

__all__ = [
    "ABANDONED",
    "LATEST",
    "LOCK",
    "AtomicCheckpointIO",  # noqa: F822 - resolved lazily by __getattr__ (it needs Lightning)
    "CheckpointDirLock",
    "CheckpointError",
    "CheckpointLocked",
    "checkpoint_step",
    "latest_checkpoint",
    "load_checkpoint_file",
    "remove_leftovers",
    "remove_stale_tmp_dirs",
    "replay_dir",
    "start_timeline",
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
#: What belongs to the checkpoint of step N: the file, its sidecar, its replay.
_MEMBER_RE = re.compile(r"^(step\d+(?:-\d+)?)\.(ckpt|ckpt\.sha256|replay)$")
#: The pointer to the newest checkpoint of the timeline being written.
LATEST = "LATEST"
#: The lock file of a checkpoint directory (:class:`CheckpointDirLock`).
LOCK = ".lock"
#: Where :func:`start_timeline` moves the checkpoints of an abandoned timeline.
ABANDONED = "abandoned"
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
        >>> from torchrl_eaudeqn.trainers.checkpoint_io import AtomicCheckpointIO
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
        >>> from torchrl_eaudeqn.trainers.checkpoint_io import AtomicCheckpointIO
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


def _stale_tmp(entry: Path, any_pid: bool) -> bool:
    match = _TMP_DIR_RE.match(entry.name)
    if match is None or entry.is_symlink():
        return False
    pid = int(match.group(1))
    return any_pid or pid == os.getpid() or not _pid_alive(pid)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def remove_stale_tmp_dirs(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary directories killed :func:`write_dir_atomic` calls left behind.

    A ``.<name>.tmp-<pid>`` directory of this process, or of a process that
    no longer exists, is removed; one of a live process (a write under way)
    is kept. :func:`remove_leftovers` also removes temporary files.

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
    if not directory.is_dir():
        return []
    removed = [e for e in sorted(directory.iterdir()) if e.is_dir() and _stale_tmp(e, False)]
    for entry in removed:
        _remove(entry)
    return removed


def remove_leftovers(directory: str | os.PathLike, *, locked: bool = False) -> list[Path]:
    """Remove what killed writes left in a checkpoint directory.

    * ``.<name>.tmp-<pid>`` files and directories (a checkpoint, sidecar,
      pointer or replay write cut short): those of this process or of a
      dead one; with ``locked`` (the caller holds the directory's
      :class:`CheckpointDirLock`, so no other writer exists) all of them,
      whatever process number they carry (a dead writer's pid may have been
      reused since);
    * with ``locked``, a ``stepN.ckpt.sha256`` or ``stepN.replay/`` whose
      ``stepN.ckpt`` does not exist (both are written before the checkpoint
      itself: the write of that checkpoint never finished).

    Returns:
        What was removed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".step9.ckpt.tmp-999999999").write_bytes(b"half")
        >>> (d / "step9.replay").mkdir()
        >>> sorted(p.name for p in remove_leftovers(d, locked=True))
        ['.step9.ckpt.tmp-999999999', 'step9.replay']
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        member = _MEMBER_RE.match(entry.name)
        orphan = (
            locked
            and member is not None
            and member.group(2) != "ckpt"
            and not (directory / f"{member.group(1)}.ckpt").is_file()
        )
        if orphan or _stale_tmp(entry, locked):
            _remove(entry)
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


def _read_pointer(directory: Path) -> str | None:
    """The ``LATEST`` pointer: a file name, ``""`` (no checkpoint yet) or ``None`` (none)."""
    try:
        name = (directory / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if name == "" or checkpoint_step(name) else None


def _write_pointer(directory: Path, name: str) -> None:
    write_atomic(directory / LATEST, f"{name}\n".encode())


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint of the directory's timeline that verifies, or ``None``.

    The timeline is what the ``LATEST`` pointer names: its checkpoint, or
    when that one does not verify (a crash between the pointer and the
    file, a corrupted disk block) the newest older one that does. Nothing
    above the pointer is considered (a checkpoint left there belongs to
    another timeline). A directory without a pointer (written by an older
    version) is read by step number alone.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> from torchrl_eaudeqn.trainers.checkpoint_io import AtomicCheckpointIO
        >>> io_ = AtomicCheckpointIO()
        >>> io_.save_checkpoint({"s": 1}, d / "step1.ckpt")
        >>> io_.save_checkpoint({"s": 2}, d / "step2.ckpt")
        >>> (d / "step2.ckpt").write_bytes(b"torn") and latest_checkpoint(d).name
        'step1.ckpt'
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    pointer = _read_pointer(directory)
    if pointer == "":
        return None
    limit = checkpoint_step(pointer) if pointer else None
    found = sorted(
        ((step, p) for p in directory.iterdir() if (step := checkpoint_step(p))),
        reverse=True,
    )
    for step, path in found:
        if limit is not None and step > limit:
            continue
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


def _members(directory: Path) -> dict[str, list[Path]]:
    """``{"stepN": [stepN.ckpt, stepN.ckpt.sha256, stepN.replay], ...}`` (those present)."""
    out: dict[str, list[Path]] = {}
    for entry in sorted(directory.iterdir()):
        match = _MEMBER_RE.match(entry.name)
        if match:
            out.setdefault(match.group(1), []).append(entry)
    return out


def start_timeline(
    directory: str | os.PathLike, resume: str | os.PathLike | None = None
) -> list[Path]:
    """Make ``directory`` hold one timeline: the one a run (re)starting now writes.

    Called when training starts (:class:`~torchrl_eaudeqn.reliability.EnvStepCheckpoint`),
    ``resume`` being the checkpoint it resumed from (``None``: a fresh start).

    1. The ``LATEST`` pointer is set to ``resume`` when it lies in this
       directory (its older checkpoints are this timeline's past), else to
       "nothing yet": from now on ``--resume last`` can only pick this
       timeline's checkpoints.
    2. The checkpoints of the abandoned timeline (above ``resume``, or all of
       them when it lies elsewhere or the run starts fresh) move, with their
       sidecars and replays, to ``directory/abandoned/``, replacing what an
       earlier start put there. They are kept until the next start that
       abandons a timeline; delete the folder to free the space. (A run
       resumed from a file inside ``abandoned/`` keeps that folder and moves
       the timeline it leaves to ``abandoned-2/``, ``-3``, ...)

    So the run's own checkpoints are never pruned in favour of higher step
    numbers of a timeline it left, and ``--resume last`` never jumps back to
    it.

    Returns:
        The files and directories moved to ``abandoned/``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> from torchrl_eaudeqn.trainers.checkpoint_io import AtomicCheckpointIO
        >>> io_ = AtomicCheckpointIO()
        >>> for s in (1, 2, 3):
        ...     io_.save_checkpoint({"s": s}, d / f"step{s}.ckpt")
        >>> [p.name for p in start_timeline(d, resume=d / "step1.ckpt")]
        ['step2.ckpt', 'step2.ckpt.sha256', 'step3.ckpt', 'step3.ckpt.sha256']
        >>> io_.save_checkpoint({"s": 1.5}, d / "step2.ckpt"); latest_checkpoint(d).name
        'step2.ckpt'
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    base = None
    if resume is not None:
        resume = Path(resume)
        if resume.parent.resolve() == directory.resolve() and checkpoint_step(resume):
            base = checkpoint_step(resume)
    # The pointer first: a crash while moving leaves --resume last on this timeline.
    _write_pointer(directory, resume.name if base is not None else "")
    moved: list[Path] = []
    abandoned = {
        key: paths
        for key, paths in _members(directory).items()
        if base is None or checkpoint_step(f"{key}.ckpt") > base
    }
    if not abandoned:
        return moved
    target = directory / ABANDONED
    if resume is not None and target.resolve() in resume.resolve().parents:
        # Resumed from the abandoned folder itself: keep it, use the next free name.
        n = 2
        while (directory / f"{ABANDONED}-{n}").exists():
            n += 1
        target = directory / f"{ABANDONED}-{n}"
    elif target.exists():
        shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for paths in abandoned.values():
        for path in paths:
            os.replace(path, target / path.name)
            moved.append(path)
    _fsync_dir(target)
    _fsync_dir(directory)
    if base is not None:
        why = f"steps above {resume.name}, which this run resumes from"
    else:
        why = "this run starts fresh" if resume is None else f"this run resumes from {resume}"
    print(
        f"note: {len(abandoned)} checkpoint(s) of an abandoned timeline ({why}) moved to {target}",
        file=sys.stderr,
    )
    return moved


class CheckpointLocked(CheckpointError):
    """Another live process holds the checkpoint directory (message: one line naming it)."""


class CheckpointDirLock:
    """An exclusive ``fcntl.flock`` on ``directory/.lock``: one writer per checkpoint directory.

    The lock belongs to the open file: the kernel releases it when the
    process exits or is killed, so it can never be left stuck. The file
    records its holder (pid, host, start time) for the message a second
    process gets. On network filesystems ``flock`` is as good as the
    filesystem's lock support (NFSv4 and Lustre honour it).

    Args:
        directory: the checkpoint directory (created when missing).

    Raises:
        CheckpointLocked: from :meth:`acquire`, when another process holds it.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with CheckpointDirLock(d):
        ...     CheckpointDirLock(d).acquire()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrl_eaudeqn.checkpointing.CheckpointLocked: checkpoint directory ... in use by pid ...
        >>> CheckpointDirLock(d).acquire().release()  # free again
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self._fd: int | None = None

    def acquire(self) -> CheckpointDirLock:
        """Take the lock (non-blocking); returns ``self``."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CheckpointError(
                f"cannot create checkpoint directory lock {self.path}: {err.strerror or err}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            raise CheckpointLocked(
                f"checkpoint directory {self.directory} is in use by {holder} (lock "
                f"{self.path}); wait for that run to end or stop it"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode())
            return f"pid {int(info['pid'])} on {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (it has not written its name yet)"

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would race with the next holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CheckpointDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# The Lightning plugin lives with the trainers; this module stays free of Lightning.
__getattr__ = moved_names(
    __name__, "torchrl_eaudeqn.trainers.checkpoint_io", ["AtomicCheckpointIO"]
)
