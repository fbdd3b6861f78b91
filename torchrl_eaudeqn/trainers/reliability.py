"""Lightning callbacks that keep long runs safe: env-step checkpoints, graceful stop, NaN guard.

* :class:`EnvStepCheckpoint`: a checkpoint every ``every`` env steps, at the
  end of training and when training stops on an exception or a signal, named
  ``step<env steps>.ckpt``; written through
  :class:`~torchrl_eaudeqn.checkpointing.AtomicCheckpointIO` they are atomic
  and checksummed. When training starts it removes what killed writes left
  and makes the directory hold this run's timeline only
  (:func:`~torchrl_eaudeqn.checkpointing.start_timeline`). (Lightning's
  ``ModelCheckpoint`` counts optimizer steps; the budget and every period
  here are env steps.)
* :class:`GracefulStop`: ``SIGINT``/``SIGTERM`` let the current step finish,
  then training stops (and :class:`EnvStepCheckpoint` saves); a second
  ``SIGINT`` interrupts at once.
* :class:`NonFiniteGuard`: before every optimizer step, a NaN or Inf in a
  gradient stops training *before* the parameters change, naming the
  ensemble member and the env step; the checkpoint written then holds the
  last good parameters.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..checkpointing import remove_leftovers, replay_dir, start_timeline

__all__ = ["EnvStepCheckpoint", "GracefulStop", "NonFiniteError", "NonFiniteGuard"]


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/Inf; the message names the member and the env step."""


def _env_steps(pl_module: Any) -> int:
    return int(getattr(pl_module, "env_steps", 0))


class EnvStepCheckpoint(L.Callback):
    """Checkpoint every ``every`` env steps, at the end, and on an exception.

    Args:
        dirpath: the run's checkpoint directory.
        every: env steps between checkpoints (>= 1).

    Example:
        >>> cb = EnvStepCheckpoint("checkpoints/run", every=1000)
        >>> cb.path_for(12345).name
        'step000000012345.ckpt'
    """

    def __init__(self, dirpath: str | Path, every: int) -> None:
        if isinstance(every, bool) or int(every) < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.dirpath = Path(dirpath)
        self.every = int(every)
        self._last_saved: int | None = None

    def path_for(self, env_steps: int) -> Path:
        return self.dirpath / f"step{env_steps:012d}.ckpt"

    def save(self, trainer: L.Trainer, pl_module: Any) -> Path:
        """Write a checkpoint of the current state (once per env step count).

        With ``cfg.checkpoint_replay`` the replay buffer is written first, beside
        it (``stepN.replay/``): a checkpoint on disk always has its replay.
        """
        steps = _env_steps(pl_module)
        path = self.path_for(steps)
        if self._last_saved != steps:
            if getattr(getattr(pl_module, "cfg", None), "checkpoint_replay", False):
                pl_module.save_replay(replay_dir(path))
            # The full state; explicit, so that Lightning does not log its default.
            trainer.save_checkpoint(path, weights_only=False)
            self._last_saved = steps
        return path

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._mark = _env_steps(pl_module) // self.every
        # A write killed half-way leaves its temporary file or directory (GBs).
        remove_leftovers(self.dirpath)
        # From here on the directory holds this run's timeline only (docs/reliability.md).
        start_timeline(self.dirpath, getattr(trainer, "ckpt_path", None))

    def ends_call(self, pl_module: Any) -> bool:
        """Whether a checkpoint is due at this env step (a ``training_step`` returns for it)."""
        return _env_steps(pl_module) // self.every > self._mark

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        mark = _env_steps(pl_module) // self.every
        if mark > self._mark:
            self._mark = mark
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.save(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        # A NonFiniteError is raised before the optimizer step: the state is the
        # last good one. Other exceptions (a bug, an env crash) are saved too, so
        # that the steps since the last periodic checkpoint are not lost.
        self.save(trainer, pl_module)


class GracefulStop(L.Callback):
    """Turn ``SIGINT``/``SIGTERM`` into "finish this step, checkpoint, stop".

    ``received`` holds the signal number once one arrived (``None`` before).
    Lightning's own ``SIGTERM`` handling raises at the next step boundary;
    this callback replaces it during ``fit`` with a flag checked after each
    step, so the recipe can checkpoint, mark its MLflow run as killed and exit
    with a one-line message. A second ``SIGINT`` raises ``KeyboardInterrupt``.

    Example:
        >>> stop = GracefulStop()
        >>> stop.received is None
        True
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.received = None
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def ends_call(self, pl_module: Any) -> bool:
        """Whether a signal arrived (a ``training_step`` returns so that training stops)."""
        return self.received is not None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None:
            trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def signal_name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name


class NonFiniteGuard(L.Callback):
    """Stop before an optimizer step whose gradients hold a NaN or an Inf.

    The check is one fused norm over all gradients (``torch._foreach_norm``:
    about 1% of a Nature-CNN update); only when it fails are the members
    located. Ensemble parameters are stacked ``[K, ...]``: the message names
    every member whose slice is not finite.

    Args:
        num_members: K of the module's ensembles; read from the module's
            ``cfg.members`` (or ``num_members``) when ``None``.

    Example:
        >>> NonFiniteGuard(num_members=3).num_members
        3
    """

    def __init__(self, num_members: int | None = None) -> None:
        self.num_members = num_members

    def _members(self, pl_module: Any) -> int | None:
        if self.num_members is not None:
            return self.num_members
        cfg = getattr(pl_module, "cfg", None)
        return getattr(cfg, "members", None) or getattr(pl_module, "num_members", None)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        grads = [
            p.grad for group in optimizer.param_groups for p in group["params"]
            if p.grad is not None
        ]  # fmt: skip
        if not grads:
            return
        total = torch.stack(torch._foreach_norm(grads)).sum()
        if math.isfinite(float(total)):
            return
        k = self._members(pl_module)
        bad: set[int] = set()
        for g in grads:
            if k and g.dim() >= 1 and g.shape[0] == k:
                bad.update(torch.nonzero(~torch.isfinite(g).flatten(1).all(1)).flatten().tolist())
            elif not torch.isfinite(g).all():
                bad.add(-1)
        where = (
            "member " + ", ".join(str(m) for m in sorted(bad) if m >= 0)
            if bad - {-1}
            else "a shared parameter"
        )
        raise NonFiniteError(
            f"non-finite gradient (NaN/Inf) in {where} at env step {_env_steps(pl_module)}: "
            "training stopped before the optimizer step; the checkpoint holds the last good state"
        )
