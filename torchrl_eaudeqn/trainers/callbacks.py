"""The updater as a Lightning callback: ``step`` after every gradient step, state in checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L

from ..updaters.common import MaskedUpdater, UpdateEvent

__all__ = ["SAC_MEMBER_LOSS_KEYS", "TargetSelectionCallback"]


#: Per-member loss keys a SAC updater reads (``training_step`` returns them as ``member_losses``).
SAC_MEMBER_LOSS_KEYS = ("loss_actor_per_member", "loss_qvalue_per_member")


class TargetSelectionCallback(L.Callback):
    """Runs a target updater after every gradient step of a LightningModule.

    The module's ``training_step`` returns, when it took a gradient step, a
    dict with ``loss_per_member`` (DQN updaters: a ``[K]`` tensor) or
    ``member_losses`` (SAC updaters: a TensorDict with
    ``loss_actor_per_member`` and ``loss_qvalue_per_member``), and ``None``
    otherwise; the callback passes it to ``updater.step``. The updater's
    state (sums, history, counters) is saved in and restored from Lightning
    checkpoints.

    Args:
        updater: a :class:`~torchrl_eaudeqn.TargetSelectionUpdater`,
            :class:`~torchrl_eaudeqn.PolyPruneUpdater`,
            :class:`~torchrl_eaudeqn.SACTargetSelectionUpdater` or
            :class:`~torchrl_eaudeqn.PolyPruneSACUpdater`.
        on_update: optional ``fn(entry)`` called with each new
            :class:`~torchrl_eaudeqn.updaters.UpdateEvent` (selections, and a
            baseline's target copies and mask updates).

    Example:
        >>> import torch
        >>> from torchrl.data import OneHot
        >>> from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor, mlp
        >>> from torchrl_eaudeqn import TargetSelectionUpdater
        >>> actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(8,)), 2, action_spec=OneHot(2))
        >>> loss = EauDeQNLoss(actor)
        >>> cb = TargetSelectionCallback(
        ...     TargetSelectionUpdater(loss, period=1, reset_optimizer=False))
        >>> cb.on_train_batch_end(None, None, {"loss_per_member": torch.tensor([2., 1.])}, None, 0)
        >>> cb.updater.history[-1]["selected"]
        1
    """

    def __init__(
        self,
        updater: MaskedUpdater,
        on_update: Callable[[UpdateEvent], None] | None = None,
    ) -> None:
        self.updater = updater
        self.on_update = on_update

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.after_gradient_step(outputs)

    def after_gradient_step(self, outputs: Any) -> None:
        """``updater.step`` on one gradient step's ``training_step`` output (``None``: none).

        :class:`~torchrl_eaudeqn.trainers.OnlineRLModule` calls it for the
        gradient steps inside a ``training_step`` of several rounds
        (``steps_per_call``); Lightning's ``on_train_batch_end`` for the last.
        """
        if not outputs:
            return
        losses = outputs.get("loss_per_member", outputs.get("member_losses"))
        if losses is None:
            return
        before = self.updater.history_total
        self.updater.step(losses)
        if self.on_update is not None:
            for entry in self.updater.recent(self.updater.history_total - before):
                self.on_update(entry)

    def state_dict(self) -> dict[str, Any]:
        return self.updater.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updater.load_state_dict(state_dict)
