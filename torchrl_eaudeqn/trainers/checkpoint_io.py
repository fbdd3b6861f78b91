"""Lightning's checkpoint plugin, crash-safe: atomic writes, sha256 sidecars, ``LATEST``.

The file-level guarantees are :mod:`torchrl_eaudeqn.checkpointing`'s; see its docstring.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..checkpointing import (
    CheckpointError,
    _sidecar,
    _write_pointer,
    checkpoint_step,
    replay_dir,
    unpickling_refused,
    verify_checkpoint,
    write_atomic,
)

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes, sha256 sidecars, ``LATEST``, the last N kept.

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
        if checkpoint_step(path):
            # The pointer first: a crash before the file is written leaves it
            # naming a missing file, and latest_checkpoint takes the one before.
            _write_pointer(path.parent, path.name)
        # The sidecar first: a crash between the two leaves a sidecar without
        # its file (ignored) or an old file with a new sidecar (reported corrupt,
        # an older checkpoint is used), never an unverifiable checkpoint.
        write_atomic(_sidecar(path), f"{digest}  {path.name}\n".encode())
        write_atomic(path, data)
        self._prune(path)

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

    def _prune(self, newest: Path) -> None:
        top = checkpoint_step(newest)
        if self.keep_last is None or top is None:
            return
        # Only at or below the file just written: nothing there outranks this timeline.
        ckpts = sorted(
            ((step, p) for p in newest.parent.iterdir() if (step := checkpoint_step(p))
             and step <= top),
            reverse=True,
        )  # fmt: skip
        for _, old in ckpts[self.keep_last :]:
            self.remove_checkpoint(old)
