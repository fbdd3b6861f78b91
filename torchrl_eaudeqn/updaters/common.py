"""What every masked updater shares: member selection, optimizer lists, Trainer hooks and history,
and the DQN updaters' base (checks, mask re-application, optimizer reset).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torchrl.objectives.utils import TargetNetUpdater

from ..modules.ensemble import _positive_int
from ..objectives.dqn import EauDeQNLoss

__all__ = ["TrainerHooks", "optimizer_list", "select_member"]


def select_member(loss_sums: Sequence[float] | torch.Tensor, sparsity: Sequence[float]) -> int:
    """``argmin`` of the summed losses; ties: the less sparse, then the lower index.

    NaN sums never win; all-NaN raises :class:`FloatingPointError`.

    Example:
        >>> select_member([2.0, 1.0, 1.0], [0.0, 0.5, 0.2])
        2
    """
    sums = [float(x) for x in loss_sums]
    if all(math.isnan(x) for x in sums):
        raise FloatingPointError("every member's summed loss is NaN: cannot select a member")
    key = [(math.inf if math.isnan(x) else x, float(sparsity[k]), k) for k, x in enumerate(sums)]
    return min(range(len(sums)), key=key.__getitem__)


def optimizer_list(
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    out = list(optimizer)
    for opt in out:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch Optimizer, got {type(opt).__name__}")
    return out


class TrainerHooks:
    """Mixin of the updaters: TorchRL ``Trainer`` registration and the common state.

    Subclasses define ``step()``, ``num_steps`` and ``optimized_loss_keys``
    (the loss keys the trainer's optimizer may sum), call
    :meth:`_init_history` in ``__init__`` and :meth:`_record` for each
    target update or prune event.

    ``history`` holds the newest ``history_len`` entries (a ``deque``: memory
    and checkpoints stay the same size however long the run is; the recipes
    log every entry to MLflow as it happens, ``target_update/*``,
    ``selection/*``); ``history_total`` counts all of them.
    """

    optimized_loss_keys: tuple[str, ...] = ("loss",)
    #: entries kept in ``history`` (K = 5: ~1.3 kB each in memory, ~0.23 kB in a checkpoint)
    history_len: int = 1000
    num_steps: int
    history: deque[dict[str, Any]]
    history_total: int

    def _init_history(self) -> None:
        self.history = deque(maxlen=self.history_len)
        self.history_total = 0

    def _record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        self.history_total += 1

    def recent(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` history entries, oldest first (at most ``history_len``)."""
        if count <= 0:
            return []
        return list(itertools.islice(reversed(self.history), count))[::-1]

    def _post_optim(self) -> None:
        self.step()

    def register(self, trainer: Any, name: str = "target_net_updater") -> None:
        """Hook this updater on a :class:`torchrl.trainers.Trainer`.

        Runs ``step`` after every optimizer step, checkpoints the updater with
        the trainer, and restricts the trainer's optimizer hook to
        ``optimized_loss_keys`` (the trainer would otherwise also sum the
        detached per-member losses, whose keys start with ``"loss"`` too).

        Raises:
            ValueError: if the trainer clips gradients by a joint norm, which
                would couple the members' updates.
        """
        if getattr(trainer, "clip_grad_norm", False) and getattr(trainer, "clip_norm", None):
            raise ValueError(
                "trainer clips the gradient norm jointly across members "
                "(clip_grad_norm=True, clip_norm set): pass clip_norm=None"
            )
        for module in getattr(trainer, "_modules", {}).values():
            if hasattr(module, "loss_components") and module.loss_components is None:
                module.loss_components = list(self.optimized_loss_keys)
        trainer.register_op("post_optim", self._post_optim)
        trainer.register_module(name, self)

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "history": [dict(h) for h in self.history],
            "history_total": self.history_total,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_steps = int(state_dict["num_steps"])
        # A checkpoint of an older version holds the whole history: keep its newest part.
        self.history = deque((dict(h) for h in state_dict["history"]), maxlen=self.history_len)
        self.history_total = int(state_dict.get("history_total", len(state_dict["history"])))


class _MaskedUpdater(TrainerHooks, TargetNetUpdater):
    """Shared plumbing: checks, mask re-application, optimizer reset, Trainer hooks."""

    def __init__(
        self,
        loss_module: EauDeQNLoss,
        optimizer: torch.optim.Optimizer | None,
        *,
        period: int,
        scope: Literal["global", "layer"],
        require_optimizer: bool,
        structure: Literal["weights", "filters"] = "weights",
    ) -> None:
        # TargetNetUpdater.__init__ assumes source/target parameter pairs of the
        # same shape; ours are an ensemble [K] and one network, so we do our own.
        if not isinstance(loss_module, EauDeQNLoss):
            raise TypeError(f"loss_module must be an EauDeQNLoss, got {type(loss_module).__name__}")
        self.period = _positive_int(period, "period")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.scope = scope
        if structure not in ("weights", "filters"):
            raise ValueError(f"structure must be 'weights' or 'filters', got {structure!r}")
        self.structure = structure
        self.loss_module = loss_module
        self.actor = loss_module.value_network
        if optimizer is None and require_optimizer:
            raise ValueError("optimizer is required to reset the members' optimizer state")
        if optimizer is not None:
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            missing = [n for n, p in self.actor.named_parameters() if id(p) not in held]
            if missing:
                raise ValueError(
                    f"optimizer does not hold the members' parameters (missing {missing[:3]}); "
                    "build it from loss_module.parameters()"
                )
        self.optimizer = optimizer
        self.num_steps = 0
        self._init_history()
        self.initialized = False

    def apply_masks_(self) -> None:
        """Zero every pruned weight now (``step`` does it after each optimizer step).

        Between an optimizer step and :meth:`step`, Adam may have moved pruned
        weights off zero; anything that uses the network in that window (an
        evaluation inside ``training_step``) calls this first.
        """
        self.actor.apply_masks_()

    # ------------------------------------------------------------ helpers
    def _copy_member_to_target(self, k: int) -> None:
        loss = self.loss_module
        loss.target_value_network_params.data.update_(self.actor.params[k].data)
        loss.target_masks.update_(self.actor.masks[k])

    def _reset_optimizer(self) -> None:
        if self.optimizer is not None:
            for p in self.actor.parameters():
                self.optimizer.state.pop(p, None)

    # -------------------------------------------------------- TorchRL API
    def step(self, losses: TensorDictBase | torch.Tensor | None = None) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(period={self.period}, num_steps={self.num_steps})"
