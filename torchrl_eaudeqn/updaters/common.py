"""What every masked updater shares, DQN and SAC alike.

:class:`MaskedUpdater` is the one base: the argument checks, the masks
re-applied after every optimizer step, the optimizer reset, Trainer hooks,
the bounded history of :class:`UpdateEvent` entries and, for the selecting
updaters, the per-period loss sums kept on the losses' device.
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

from ..modules.ensemble import _positive_int, rebuild_members
from ..sparsity import PruningSpeedPolicy

__all__ = ["MaskedUpdater", "TrainerHooks", "UpdateEvent", "optimizer_list", "select_member"]


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


#: The history key prefix of each network role: DQN's one value network keeps the bare keys.
ROLE_PREFIX = {"value": "", "actor": "actor_", "critic": "critic_"}


class UpdateEvent(dict):
    """One history entry of a masked updater: a plain dict with typed accessors.

    Every entry has ``step`` (optimizer steps) and ``event``: ``"selection"``
    (EauDeQN / EauDeSAC), ``"target"`` (a baseline's hard target copy) or
    ``"prune"`` (a baseline's mask update). Per network role (``"value"``
    for the DQN updaters, ``"actor"`` and ``"critic"`` for SAC) a selection
    holds ``{p}selected``, ``{p}selected_sparsity``, ``{p}loss_sums``,
    ``{p}sparsity_before``, ``{p}speeds_before`` and ``{p}sparsity`` with the
    role's prefix ``p`` (``""``, ``"actor_"``, ``"critic_"``). A dict so that
    checkpoints stay loadable with ``weights_only=True`` and entries written
    by older versions (no ``event`` on selections) read the same.

    Example:
        >>> e = UpdateEvent(step=4, selected=2, speeds_before=[0.0, 0.1, 0.2], sparsity=[0.3])
        >>> e.event, e.selected(), e.pruned_win(), e.updates_target
        ('selection', 2, True, True)
        >>> UpdateEvent(step=6, event="prune", sparsity=[0.5]).selected() is None
        True
    """

    @property
    def step(self) -> int:
        """Optimizer steps when the event happened."""
        return int(self["step"])

    @property
    def event(self) -> str:
        """``"selection"``, ``"target"`` or ``"prune"``."""
        return str(self.get("event", "selection"))

    @property
    def updates_target(self) -> bool:
        """Whether the target changed hands (a selection or a hard copy), not a mask update."""
        return self.event != "prune"

    @property
    def roles(self) -> tuple[str, ...]:
        """The network roles this entry selected a member of (none for baseline events)."""
        return tuple(r for r, p in ROLE_PREFIX.items() if f"{p}selected" in self)

    def get_role(self, role: str, key: str, default: Any = None) -> Any:
        """``key`` of ``role`` (e.g. ``("critic", "sparsity")``), ``default`` when absent."""
        return self.get(ROLE_PREFIX[role] + key, default)

    def selected(self, role: str = "value") -> int | None:
        """The winning member of ``role``, ``None`` when the entry selected none."""
        j = self.get_role(role, "selected")
        return None if j is None else int(j)

    def pruned_win(self, role: str = "value") -> bool | None:
        """Whether ``role``'s winner had been pruned further in the period (speed above 0)."""
        j, speeds = self.selected(role), self.get_role(role, "speeds_before")
        if j is None or speeds is None:
            return None
        return float(speeds[j]) > 0


def role_view(what: str, role: str, doc: str) -> property:
    """A read-only property of an updater: one role's ``speed_policy``, ``speeds`` or ``loss_sums``.

    ``loss_sums`` reads a copy (CPU, float64) of the sums kept on the device.
    """
    read = {
        "speed_policy": lambda self: self.speed_policies[role],
        "speeds": lambda self: self._speeds[role],
        "loss_sums": lambda self: self._sums[role].value(),
    }[what]
    return property(read, doc=doc)


class _LossSums:
    """Per-period summed member losses, kept on the losses' device.

    Adding on the device avoids a host sync per optimizer step on CUDA (the
    sums reach the CPU once a period); float64 where the device has it.
    """

    def __init__(self, num_members: int) -> None:
        self._cpu = torch.zeros(num_members, dtype=torch.float64)
        self._device: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self._cpu.shape

    def add_(self, losses: torch.Tensor) -> None:
        if self._device is None or self._device.device != losses.device:
            dtype = torch.float32 if losses.device.type == "mps" else torch.float64
            self._device = self.value().to(losses.device, dtype)
        self._device += losses

    def value(self) -> torch.Tensor:
        """The sums on the CPU in float64 (a copy)."""
        if self._device is None:
            return self._cpu.clone()
        return self._device.to("cpu", torch.float64, copy=True)

    def set_(self, value: torch.Tensor | Sequence[float]) -> None:
        self._cpu = torch.as_tensor(value, dtype=torch.float64).cpu().clone()
        self._device = None


class TrainerHooks:
    """Mixin of the updaters: TorchRL ``Trainer`` registration and the common state.

    Subclasses define ``step()``, ``num_steps`` and ``optimized_loss_keys``
    (the loss keys the trainer's optimizer may sum), call
    :meth:`_init_history` in ``__init__`` and :meth:`_record` for each
    target update or prune event.

    ``history`` holds the newest ``history_len`` entries (a ``deque``: memory
    and checkpoints stay the same size however long the run is; the recipes
    log every entry to MLflow as it happens, ``target_update/*``,
    ``selection/*``); ``history_total`` counts all of them. Entries are
    :class:`UpdateEvent` s; checkpoints hold them as plain dicts.
    """

    optimized_loss_keys: tuple[str, ...] = ("loss",)
    #: entries kept in ``history`` (K = 5: ~1.3 kB each in memory, ~0.23 kB in a checkpoint)
    history_len: int = 1000
    num_steps: int
    history: deque[UpdateEvent]
    history_total: int

    def _init_history(self) -> None:
        self.history = deque(maxlen=self.history_len)
        self.history_total = 0

    def _record(self, entry: dict[str, Any]) -> None:
        self.history.append(UpdateEvent(entry))
        self.history_total += 1

    def recent(self, count: int) -> list[UpdateEvent]:
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
        self.history = deque(
            (UpdateEvent(h) for h in state_dict["history"]), maxlen=self.history_len
        )
        self.history_total = int(state_dict.get("history_total", len(state_dict["history"])))


class MaskedUpdater(TrainerHooks, TargetNetUpdater):
    """The one base of the masked updaters (DQN and SAC): checks, masks, optimizer reset, selection.

    A subclass names its networks by role (``{"value": ...}`` for DQN,
    ``{"actor": ..., "critic": ...}`` for SAC) and defines the target copy.
    The selecting updaters (:class:`~torchrl_eaudeqn.TargetSelectionUpdater`,
    :class:`~torchrl_eaudeqn.SACTargetSelectionUpdater`) also pass
    ``speed_policies`` and get the shared period machinery: per-role loss
    sums on the device, selection of each role's winner (:func:`select_member`),
    rebuilding each ensemble from its winner, one :class:`UpdateEvent` per
    selection. The baselines (PolyPrune) pass none and drive their own
    schedule in ``step``.

    Args:
        loss_module: the loss whose networks are updated.
        optimizer: one optimizer or several over the members' parameters
            (required when ``require_optimizer``); every network's parameters
            must be held by them.

    Keyword Args:
        networks: the masked ensembles by role, in the order their speeds are
            drawn and their members rebuilt.
        period: optimizer steps between selections (and a baseline's hard
            target copies).
        scope: magnitude ranking ``"global"`` or ``"layer"``.
        structure: ``"weights"`` or ``"filters"`` (convolutions lose whole
            output filters; see :func:`~torchrl_eaudeqn.sparsity.magnitude_masks`).
        require_optimizer: whether an optimizer must be given.
        speed_policies: pruning-speed policy per role (selecting updaters only).
        reset_optimizer: reset the members' optimizer state at each selection.
        prune_at_init: start the first period with pruned copies.

    Example:
        >>> from torchrl.data import OneHot
        >>> from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor, mlp
        >>> from torchrl_eaudeqn import TargetSelectionUpdater
        >>> actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(8,)), 2, action_spec=OneHot(2))
        >>> up = TargetSelectionUpdater(EauDeQNLoss(actor), period=1, reset_optimizer=False)
        >>> isinstance(up, MaskedUpdater), up.roles
        (True, ('value',))
    """

    def __init__(
        self,
        loss_module: Any,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
        *,
        networks: dict[str, Any],
        period: int,
        scope: Literal["global", "layer"],
        structure: Literal["weights", "filters"],
        require_optimizer: bool,
        speed_policies: dict[str, PruningSpeedPolicy] | None = None,
        reset_optimizer: bool = False,
        prune_at_init: bool = False,
    ) -> None:
        # TargetNetUpdater.__init__ pairs same-shape source/target parameters;
        # ours are ensembles [K] and one target, so it is not called.
        self.period = _positive_int(period, "period")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        if structure not in ("weights", "filters"):
            raise ValueError(f"structure must be 'weights' or 'filters', got {structure!r}")
        self.scope, self.structure = scope, structure
        self.loss_module = loss_module
        self.networks = dict(networks)
        self.optimizers = optimizer_list(optimizer)
        if not self.optimizers and require_optimizer:
            raise ValueError("optimizer is required to reset the members' optimizer state")
        if self.optimizers:
            held = {id(p) for opt in self.optimizers for g in opt.param_groups for p in g["params"]}
            for role, ens in self.networks.items():
                missing = [n for n, p in ens.named_parameters() if id(p) not in held]
                if missing:
                    whose = "the members'" if len(self.networks) == 1 else f"the {role} members'"
                    raise ValueError(
                        f"optimizer does not hold {whose} parameters (missing {missing[:3]}); "
                        "build it from loss_module.parameters()"
                    )
        self.speed_policies = dict(speed_policies or {})
        for role, pol in self.speed_policies.items():
            if not isinstance(pol, PruningSpeedPolicy):
                name = self._policy_key(role)
                raise TypeError(f"{name} must be a PruningSpeedPolicy, got {type(pol).__name__}")
        if len({id(p) for p in self.speed_policies.values()}) < len(self.speed_policies):
            # A stateful policy (NoisySpeedPolicy) remembers the last winner's speed.
            raise ValueError("actor_speed_policy must be a different object from speed_policy")
        self.reset_optimizer = reset_optimizer
        self.prune_at_init = prune_at_init
        self.steps_in_period = 0
        self._sums = {r: _LossSums(self.networks[r].num_members) for r in self.speed_policies}
        self._speeds = {r: [0.0] * self.networks[r].num_members for r in self.speed_policies}
        self.num_steps = 0
        self._init_history()
        self.initialized = False

    @property
    def roles(self) -> tuple[str, ...]:
        """The networks' roles, in the order they are rebuilt."""
        return tuple(self.networks)

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The first optimizer (the DQN family trains with one)."""
        return self.optimizers[0] if self.optimizers else None

    def apply_masks_(self) -> None:
        """Zero every pruned weight now (``step`` does it after each optimizer step).

        Between an optimizer step and :meth:`step`, Adam may have moved pruned
        weights off zero; anything that uses the networks in that window (an
        evaluation inside ``training_step``) calls this first.
        """
        for ens in self.networks.values():
            ens.apply_masks_()

    def _reset_optimizer(self) -> None:
        params = [p for ens in self.networks.values() for p in ens.parameters()]
        for opt in self.optimizers:
            for p in params:
                opt.state.pop(p, None)

    def selected_members(self) -> dict[str, int]:
        """Each role's acting member now (member 0 after a selection)."""
        return {role: int(ens.selected) for role, ens in self.networks.items()}

    def last_selection(self) -> UpdateEvent | None:
        """The newest history entry that selected members, ``None`` before the first."""
        return next((h for h in reversed(self.history) if h.roles), None)

    # ------------------------------------------------- selection (EauDe*)
    @staticmethod
    def _policy_key(role: str) -> str:
        # Checkpoint and argument names: the first role's policy is plain ``speed_policy``.
        return "actor_speed_policy" if role == "actor" else "speed_policy"

    def _copy_target(self, winners: dict[str, int], *, at_init: bool) -> None:
        """Move the target after a selection (``at_init``: before the first period)."""
        raise NotImplementedError

    def _after_rebuild(self, winners: dict[str, int]) -> None:
        """Target work after the members were rebuilt from the winners (default: none)."""

    def _per_step_target(self) -> None:
        """Target work done after every optimizer step (SAC: Polyak averaging)."""

    def _member_losses(self, losses: Any) -> dict[str, torch.Tensor]:
        """The ``[K]`` detached member losses per role, checked, from ``step``'s argument."""
        raise NotImplementedError

    def _init_selection(self) -> None:
        self.apply_masks_()
        winners = self.selected_members()
        self._copy_target(winners, at_init=True)
        if self.prune_at_init:
            self._rebuild(winners)
        self.initialized = True

    def _rebuild(self, winners: dict[str, int]) -> None:
        for role, j in winners.items():
            n = self.networks[role].num_members
            speeds = list(self.speed_policies[role].speeds(n, winner=j))
            if len(speeds) != n:
                raise ValueError(f"speed_policy returned {len(speeds)} speeds for {n} members")
            self._speeds[role] = speeds
        for role, j in winners.items():
            rebuild_members(
                self.networks[role], j, self._speeds[role], scope=self.scope,
                structure=self.structure,
            )  # fmt: skip
        if self.reset_optimizer:
            self._reset_optimizer()

    def _select(self) -> dict[str, int]:
        winners = {}
        for role in self.speed_policies:
            sparsity = self.networks[role].sparsity().tolist()
            try:
                winners[role] = select_member(self._sums[role].value(), sparsity)
            except FloatingPointError as err:
                raise FloatingPointError(f"{err} (step {self.num_steps})") from None
        return winners

    def _run_selection(self) -> dict[str, int]:
        winners = self._select()
        entry: dict[str, Any] = {"step": self.num_steps, "event": "selection"}
        for role, j in winners.items():
            p, before = ROLE_PREFIX[role], [float(s) for s in self.networks[role].sparsity()]
            entry[f"{p}selected"] = j
            entry[f"{p}selected_sparsity"] = before[j]
            entry[f"{p}loss_sums"] = self._sums[role].value().tolist()
            entry[f"{p}sparsity_before"] = before
            entry[f"{p}speeds_before"] = list(self._speeds[role])
        self._copy_target(winners, at_init=False)
        self._rebuild(winners)
        self._after_rebuild(winners)
        for role in winners:
            entry[f"{ROLE_PREFIX[role]}sparsity"] = [
                float(s) for s in self.networks[role].sparsity()
            ]
        self._record(entry)
        for sums in self._sums.values():
            sums.set_(torch.zeros(sums.shape))
        self.steps_in_period = 0
        return winners

    def _selection_step(self, losses: Any) -> None:
        member_losses = self._member_losses(losses)
        self.apply_masks_()
        self._per_step_target()
        for role, value in member_losses.items():
            self._sums[role].add_(value)
        self.num_steps += 1
        self.steps_in_period += 1
        if self.steps_in_period >= self.period:
            self.update_target()

    def update_target(self) -> Any:
        """Run the selection now (``step`` calls it at the end of each period)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.speed_policies:
            state.update(period=self.period, steps_in_period=self.steps_in_period)
            for role, pol in self.speed_policies.items():
                p = ROLE_PREFIX[role]
                state[f"{p}loss_sums"] = self._sums[role].value()
                state[f"{p}speeds"] = list(self._speeds[role])
                state[self._policy_key(role)] = pol.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.speed_policies:
            self.steps_in_period = int(state_dict["steps_in_period"])
            for role, pol in self.speed_policies.items():
                p = ROLE_PREFIX[role]
                self._sums[role].set_(state_dict[f"{p}loss_sums"])
                self._speeds[role] = list(state_dict[f"{p}speeds"])
                pol.load_state_dict(state_dict[self._policy_key(role)])

    # -------------------------------------------------------- TorchRL API
    def step(self, losses: TensorDictBase | torch.Tensor | None = None) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(period={self.period}, num_steps={self.num_steps})"
