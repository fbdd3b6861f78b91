"""Shared plumbing of masked ensembles: stacked member parameters, masks, rebuilds.

:class:`MaskedEnsemble` holds K members of one architecture the way
:class:`~torchrl_eaudeqn.MaskedEnsembleQValueActor` does (a ``meta``-device
template, the real parameters stacked in a :class:`~tensordict.nn.TensorDictParams`
``[K]``, a bool mask per prunable weight), without committing to what the
network computes. The SAC actor and critic build on it; the functions below
(:func:`rebuild_members`, :func:`prune_member_to`) implement the
copy / prune step of ``docs/algorithm.md`` on any such ensemble.

"""

from __future__ import annotations

import copy
import math
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    TensorDictModuleBase,
    TensorDictParams,
)
from torch import nn

from ..sparsity import (
    magnitude_masks,
    prunable_parameter_names,
    sparsity_stats,
)

__all__ = [
    "MaskedEnsemble",
    "aliased_member_network",
    "calibrate_vmap_by_step",
    "check_num_members",
    "prune_member_to",
    "rebuild_members",
    "write_member",
]


#: The integer type whose bits a float of that many bytes is ANDed with (apply_masks_).
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: calibrate_vmap's results by (template, K, inputs, device, threads), for the process.
_VMAP_CALIBRATIONS: dict[tuple, dict[str, Any]] = {}
#: How much faster than the loop vmap must time in calibrate_vmap to be chosen.
VMAP_MARGIN = 0.05


def vmap_wins(vmap_ms: float, loop_ms: float, margin: float = VMAP_MARGIN) -> bool:
    """The calibrations' rule: vmap only where it times at least ``margin`` faster.

    :meth:`MaskedEnsemble.calibrate_vmap` times forward + backward alone;
    where it saw the two within a few percent (Nature CNN, K=5, CPU), the
    whole gradient step (target forward, loss, Adam, masks) was 9-15% slower
    under vmap in three benchmark runs (docs/benchmarks.md, "vmap or loop").
    :func:`calibrate_vmap_by_step` times whole steps; there too a near tie
    goes to the loop, whose timings vary less.

    Example:
        >>> vmap_wins(90.0, 100.0), vmap_wins(97.0, 100.0), vmap_wins(101.0, 100.0)
        (True, False, False)
    """
    return vmap_ms < (1.0 - margin) * loop_ms


def _key(name: str) -> tuple[str, ...]:
    return tuple(name.split("."))


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_num_members(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"num_members must be an int >= 1, got {value!r}")
    return value


class MaskedEnsemble(TensorDictModuleBase):
    """K masked copies of one network, evaluated together (vmap or a loop).

    Subclasses set ``in_keys``/``out_keys`` and ``forward``.

    Args:
        network: the member architecture and initial weights (copied, not modified).
        num_members: K >= 1; every member starts from the same weights.
        use_vmap: ``True``: :func:`torch.vmap` over members; ``False``: a loop;
            ``None`` (auto): a loop when K = 1; for K > 1 the faster of the two,
            timed on the first :meth:`ensemble_call`'s inputs by
            :meth:`calibrate_vmap` (or set :attr:`auto_vmap` yourself).
        selected: index of the acting member.

    Example:
        >>> ens = MaskedEnsemble(nn.Linear(3, 2), 2)
        >>> ens.ensemble_call(torch.zeros(4, 3)).shape, ens.sparsity()
        (torch.Size([2, 4, 2]), tensor([0., 0.]))
    """

    def __init__(
        self,
        network: nn.Module,
        num_members: int,
        *,
        use_vmap: bool | None = None,
        selected: int = 0,
    ) -> None:
        super().__init__()
        check_num_members(num_members)
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")
        if any(True for _ in network.buffers()):
            raise ValueError(
                "network has buffers (e.g. BatchNorm running stats); the ensemble supports "
                "parameter-only networks"
            )
        prunable = prunable_parameter_names(network)
        if not prunable:
            raise ValueError("network has no prunable Linear/Conv weight")
        if not 0 <= selected < num_members:
            raise ValueError(f"selected must be in [0, {num_members}), got {selected}")
        self.num_members = num_members
        self.use_vmap = use_vmap
        #: The path ``use_vmap=None`` takes for K > 1 (``None``: not decided yet).
        self.auto_vmap: bool | None = None
        #: What :meth:`calibrate_vmap` measured (ms per forward + backward of each path).
        self.vmap_calibration: dict[str, Any] | None = None
        self.prunable_names = prunable
        params = TensorDict.from_module(network).data
        # Identical copies (expand + clone), not K independent initialisations.
        self.params = TensorDictParams(params.expand(num_members).clone())
        masks = TensorDict(
            {_key(n): torch.ones_like(params.get(_key(n)), dtype=torch.bool) for n in prunable}
        )
        self.masks = TensorDictParams(masks.expand(num_members).clone(), no_convert=True)
        self.register_buffer("_selected", torch.tensor(int(selected)))
        # Python mirror: int() on a CUDA buffer would synchronise every forward.
        self._selected_int = int(selected)
        self.register_load_state_dict_post_hook(_after_load)
        template = copy.deepcopy(network)
        TensorDict.from_module(template).data.to("meta").to_module(template)
        # Outside the module tree: it only carries the structure.
        self.__dict__["_template"] = template

    # ---------------------------------------------------------------- state
    @property
    def template(self) -> nn.Module:
        """The member structure on the ``meta`` device."""
        return self.__dict__["_template"]

    @property
    def selected(self) -> int:
        """Index of the acting member (member 0 after each selection)."""
        return self._selected_int

    @selected.setter
    def selected(self, value: int) -> None:
        if not 0 <= int(value) < self.num_members:
            raise ValueError(f"selected must be in [0, {self.num_members}), got {value}")
        self._selected.fill_(int(value))
        self._selected_int = int(value)

    def flat_params(self) -> dict[str, torch.Tensor]:
        """All member parameters by dotted name, each ``[K, ...]``."""
        return dict(self.params.flatten_keys(".").items())

    def flat_masks(self) -> dict[str, torch.Tensor]:
        """Masks of the prunable weights by dotted name, each ``[K, ...]``."""
        return dict(self.masks.flatten_keys(".").items())

    @torch.no_grad()
    def apply_masks_(self) -> None:
        """Set every pruned weight of every member to exactly 0 (NaN and Inf too).

        Each mask is turned once per version into an integer bit mask (all ones
        where a weight is kept, zeros where pruned) that is ANDed into the
        weight's bits: ``torch.where(mask, p, 0)`` branches per element
        (``updater.step`` on half-pruned Nature CNN members, K=1, 2-core CPU:
        4.8 ms with it, 0.27 ms with the AND; docs/benchmarks.md), and a float
        multiply would keep NaN * 0 = NaN. A mask that
        keeps every weight is skipped. The bit masks cost as much memory as
        the prunable weights. Masks are known by their version counters:
        write them in place (``copy_``, indexing, the functions of this
        module) or load them with ``load_state_dict``, not through ``.data``,
        which bypasses the counter.
        """
        for p, mask, state in self._mask_pairs():
            if state[0] != mask._version:
                dense = bool(mask.all())
                bits = None if dense else mask.to(_INT_OF_SIZE[p.element_size()]).neg_()
                state[:] = [mask._version, bits]
            if state[1] is not None:
                p.view(state[1].dtype).bitwise_and_(state[1])

    def _mask_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor, list[Any]]]:
        # Cached: walking the two TensorDicts cost ~120 us of the ~180 us of a call on
        # an MLP (2-core CPU), and the updater applies the masks after every step.
        # Masks and parameters are written in place; a move (.to) changes the
        # pointers, which the check below catches. The third entry is
        # apply_masks_'s [mask version, bit mask or None when the mask keeps all].
        first = self.prunable_names[0].split(".")
        ptrs = (self.params.get(tuple(first)).data_ptr(), self.masks.get(tuple(first)).data_ptr())
        cached = self.__dict__.get("_mask_cache")
        if cached is None or cached[0] != ptrs:
            pairs = []
            for key, mask in self.masks.items(True, True):
                pairs.append((self.params.get(key).data, mask, [None, None]))
            cached = self.__dict__["_mask_cache"] = (ptrs, pairs)
        return cached[1]

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles rebuild the caches: theirs would alias this ensemble's tensors.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k not in _CACHES}

    def sparsity(self) -> torch.Tensor:
        """Pruned fraction of the prunable weights, per member: ``[K]``."""
        stats = sparsity_stats(self.flat_params(), self.flat_masks(), ensemble_dim=True)
        return stats["prunable"].float()

    def sparsity_stats(self) -> dict[str, object]:
        """Per-member statistics; see :func:`~torchrl_eaudeqn.sparsity.sparsity_stats`."""
        return sparsity_stats(self.flat_params(), self.flat_masks(), ensemble_dim=True)

    def member_module(self, k: int | None = None) -> nn.Module:
        """An independent copy of the template holding member ``k`` (masks applied)."""
        k = self.selected if k is None else int(k)
        if not 0 <= k < self.num_members:
            raise ValueError(f"member index must be in [0, {self.num_members}), got {k}")
        net = copy.deepcopy(self.template).to_empty(device=self.params.device or "cpu")
        masks = self.flat_masks()
        state = {}
        for name, p in self.flat_params().items():
            value = p[k].detach().clone()
            if name in masks:
                value = torch.where(masks[name][k], value, torch.zeros((), dtype=value.dtype))
            state[name] = value
        net.load_state_dict(state)
        return net.requires_grad_(False)

    # ----------------------------------------------------------- evaluation
    def _call(self, params: TensorDictBase, *inputs: torch.Tensor) -> Any:
        """The template's forward with ``params`` (one member's structure) as its parameters."""
        return self._call_leaves(self._leaves(params), *inputs)

    def _leaves(self, params: TensorDictBase) -> list[torch.Tensor]:
        """``params``' leaves in :meth:`_slots` order (cached per TensorDict).

        A ``get`` per leaf per call was ~2 us each, 12 per small-task gradient
        step. The cache holds while ``params`` keeps its leaf objects: a move,
        ``load_state_dict`` or ``set`` replaces them, which the identity check
        of the first and last leaf catches.
        """
        slots = self._slots()
        cache = self.__dict__.setdefault("_leaf_cache", {})
        key = id(params)
        cached = cache.get(key)
        if cached is not None and cached[0]() is params:
            leaves = cached[1]
            if params.get(slots[0][2]) is leaves[0] and params.get(slots[-1][2]) is leaves[-1]:
                return leaves
        leaves = [params.get(k) for *_, k in slots]
        # A weak reference whose end drops the entry: a temporary TensorDict (the
        # vmap calibration's copy) must not stay alive through its leaves.
        cache[key] = (weakref.ref(params, lambda _, c=cache, k=key: c.pop(k, None)), leaves)
        return leaves

    def _call_leaves(self, leaves: Sequence[torch.Tensor], *inputs: torch.Tensor) -> Any:
        # A direct swap of the template's parameter slots, not TensorDict.to_module:
        # measured on an MLP-256 batch-64 forward (2-core CPU), to_module added ~200 us
        # per call, as much as the forward itself. Not thread-safe, as to_module is not.
        slots = self._slots()
        saved = [mod._parameters[leaf] for mod, leaf, _ in slots]
        try:
            for (mod, leaf, _), value in zip(slots, leaves, strict=True):
                mod._parameters[leaf] = value
            return self.template(*inputs)
        finally:
            for (mod, leaf, _), value in zip(slots, saved, strict=True):
                mod._parameters[leaf] = value

    def _slots(self) -> list[tuple[nn.Module, str, tuple[str, ...]]]:
        """``(submodule, parameter name, params key)`` for every template parameter (cached)."""
        slots = self.__dict__.get("_slot_cache")
        if slots is None:
            slots = []
            for key in self.params.keys(True, True):
                key = key if isinstance(key, tuple) else (key,)
                *path, leaf = key
                mod = self.template.get_submodule(".".join(path)) if path else self.template
                slots.append((mod, leaf, key))
            self.__dict__["_slot_cache"] = slots
        return slots

    def _call_to_module(self, params: TensorDictBase, *inputs: torch.Tensor) -> Any:
        # Under torch.vmap the leaves are batched tensors; to_module handles them.
        with params.to_module(self.template):
            return self.template(*inputs)

    def resolve_vmap(self) -> bool:
        """The path :meth:`ensemble_call` takes now (``True``: vmap)."""
        if self.use_vmap is not None:
            return bool(self.use_vmap)
        if self.num_members == 1:
            return False
        # Undecided (no call yet, or inside a transform): vmap, the choice before calibration.
        return True if self.auto_vmap is None else self.auto_vmap

    def calibrate_vmap(self, *inputs: torch.Tensor, min_block_s: float = 0.01) -> dict[str, Any]:
        """Time both paths on ``inputs`` and make the faster one :attr:`auto_vmap`.

        One forward of every member plus a backward, on detached copies of the
        parameters (the real ones and their gradients are untouched; no random
        numbers are drawn): each path warmed up (at least 3 calls), then timed
        seven times in alternation (blocks of at least ``min_block_s``); the
        medians decide, vmap only where it is at least :data:`VMAP_MARGIN`
        faster (:func:`vmap_wins`). On a small network that is ~0.16 s in all, once per
        process and shape. Which path is faster depends on the network, K, the
        batch, the device and the thread count (docs/benchmarks.md, "vmap or
        loop"), so it is measured rather than guessed; where the two are within
        a few percent, machine noise may pick either. The result is remembered
        for the process under that key, so two ensembles of the same shape
        decide alike. The two paths agree to float rounding, not bit for bit:
        the recipes store the decision in their checkpoints so that a resume
        takes the same path.

        Returns:
            ``{"vmap": bool, "vmap_ms": float, "loop_ms": float, "cached": bool}``.
        """
        key = (
            repr(self.template),
            self.num_members,
            tuple((tuple(x.shape), x.dtype, x.device.type) for x in inputs),
            torch.get_num_threads(),
        )
        result = _VMAP_CALIBRATIONS.get(key)
        if result is None:
            params = self.params.detach().clone()
            for leaf in params.values(True, True):
                leaf.requires_grad_(True)
            leaves = list(params.values(True, True))

            def call(vmap: bool) -> None:
                with torch.enable_grad():
                    out = self._ensemble(params, vmap, *inputs)
                    outs = out if isinstance(out, tuple) else (out,)
                    sum(o.float().sum() for o in outs).backward()
                for leaf in leaves:
                    leaf.grad = None

            result = _VMAP_CALIBRATIONS[key] = _time_paths(call, leaves[0].is_cuda, min_block_s)
            cached = False
        else:
            cached = True
        self.auto_vmap = bool(result["vmap"])
        self.vmap_calibration = {**result, "cached": cached}
        return dict(self.vmap_calibration)

    def ensemble_call(self, *inputs: torch.Tensor) -> Any:
        """Every member on the same inputs; outputs get a leading ``[K]`` dim."""
        if (
            self.use_vmap is None
            and self.auto_vmap is None
            and self.num_members > 1
            and not torch._C._are_functorch_transforms_active()
            and not torch.compiler.is_compiling()
        ):
            self.calibrate_vmap(*inputs)
        return self._ensemble(self.params, self.resolve_vmap(), *inputs)

    def _ensemble(self, params: TensorDictBase, vmap: bool, *inputs: torch.Tensor) -> Any:
        if vmap:
            return torch.vmap(
                self._call_to_module, (0,) + (None,) * len(inputs), randomness="same"
            )(params, *inputs)
        if self.num_members == 1:  # a view, no unbind/stack pair around the one member
            out = self._call_leaves([p.squeeze(0) for p in self._leaves(params)], *inputs)
            if isinstance(out, tuple):
                return tuple(o.unsqueeze(0) for o in out)
            return out.unsqueeze(0)
        # unbind, not params[k]: indexing makes backward build a full-size zero
        # gradient per member.
        members = zip(*(p.unbind(0) for p in self._leaves(params)), strict=True)
        outs = [self._call_leaves(leaves, *inputs) for leaves in members]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs, strict=True))
        return torch.stack(outs)

    def acting_network(self, k: int | None = None) -> nn.Module:
        """Member ``k`` (default: the selected one) as a plain module aliasing its parameters.

        :func:`aliased_member_network`, cached while the parameters stay where
        they are: a batch-1 forward through it skips the ``unbind`` and
        ``to_module`` swap of :meth:`member_call`, most of an acting step's cost
        on small networks. No gradients flow through it.
        """
        k = self.selected if k is None else k
        ptr = next(iter(self.params.values(True, True))).data_ptr()
        cache = self.__dict__.setdefault("_acting_cache", {})
        cached = cache.get(k)
        if cached is None or cached[0] != ptr:
            cached = cache[k] = (ptr, aliased_member_network(self, k))
        return cached[1]

    def member_call(self, k: int, *inputs: torch.Tensor, detach: bool = False) -> Any:
        """Member ``k`` alone; ``detach=True`` blocks gradients to its parameters."""
        leaves = [self.params.get(key).unbind(0)[k] for *_, key in self._slots()]
        if detach:
            leaves = [t.detach() for t in leaves]
        return self._call_leaves(leaves, *inputs)


def _time_paths(call: Callable[[bool], None], cuda: bool, min_block_s: float) -> dict[str, Any]:
    """``call(vmap)`` for both paths: warm-up, then 7 alternating blocks; the medians decide."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def per_call_ms(vmap: bool, min_s: float = min_block_s, min_calls: int = 1) -> float:
        calls, start = 0, time.perf_counter()
        while True:
            call(vmap)
            sync()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s and calls >= min_calls:
                return 1e3 * elapsed / calls

    for vmap in (True, False):  # warm-up: vmap's first calls and the allocator are slow
        per_call_ms(vmap, min_block_s, 3)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(7):
        for vmap in (True, False):
            times[vmap].append(per_call_ms(vmap))
    # Medians, not minima: vmap's fastest blocks on CPU come close to the loop's
    # while its typical one does not (Nature CNN, K=5), and the run pays the typical one.
    vmap_ms, loop_ms = statistics.median(times[True]), statistics.median(times[False])
    return {"vmap": vmap_wins(vmap_ms, loop_ms), "vmap_ms": vmap_ms, "loop_ms": loop_ms}


def calibrate_vmap_by_step(
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module], torch.Tensor],
    key: Any = None,
    *,
    min_block_s: float = 0.01,
) -> dict[str, Any] | None:
    """Time whole gradient steps on both paths; set the faster as every auto ensemble's.

    :meth:`MaskedEnsemble.calibrate_vmap` times the members' forward and
    backward alone; a gradient step also runs the target forward, the loss,
    the optimizer and the masks, and vmap's stacked gradients can make those
    slower too (Nature CNN, K=5, CPU: a tie in the forward and backward, the
    whole step 9-15% slower under vmap; docs/benchmarks.md, "vmap or loop").
    This times what a run pays: on a deep copy of ``loss_module`` with an
    optimizer of ``optimizer``'s type and defaults, ``loss_fn(copy)``,
    backward, the optimizer step and the masks, under vmap and under the
    loop (:func:`vmap_wins` decides, as in ``calibrate_vmap``). The real
    parameters, their gradients, the optimizer's state and the random
    streams are untouched; the copy costs its memory for the duration (the
    parameters, gradients and optimizer state once more).

    Every :class:`MaskedEnsemble` in ``loss_module`` with ``use_vmap=None`` and
    K > 1 gets the one decision (``auto_vmap``, and ``vmap_calibration`` with
    ``"whole_step": True``); ``None`` is returned where there is none. With a
    ``key`` (what, besides the ensembles' shapes, sets the cost: the batch's
    shapes), the result is remembered for the process as ``calibrate_vmap``'s.

    Example:
        >>> from torchrl.data import OneHot
        >>> from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor, mlp
        >>> actor = MaskedEnsembleQValueActor(mlp(4, 2, (8,)), 3, action_spec=OneHot(2))
        >>> loss = EauDeQNLoss(actor)
        >>> opt = torch.optim.Adam(loss.parameters())
        >>> x, a = torch.randn(8, 4), torch.randint(2, (8,))
        >>> r, done = torch.zeros(8), torch.zeros(8, dtype=torch.bool)
        >>> cal = calibrate_vmap_by_step(loss, opt, lambda lm: lm.td_losses(x, a, r, x, done)[0])
        >>> cal["whole_step"], actor.auto_vmap == cal["vmap"]
        (True, True)
    """
    real = _auto_ensembles(loss_module)
    if not real:
        return None
    full_key = None
    if key is not None:
        full_key = ("step", type(loss_module).__name__, key, torch.get_num_threads(),
                    tuple((repr(e.template), e.num_members) for e in real))  # fmt: skip
    result = _VMAP_CALIBRATIONS.get(full_key) if full_key is not None else None
    cached = result is not None
    if result is None:
        work = copy.deepcopy(loss_module)
        ensembles = _auto_ensembles(work)
        params = [p for p in work.parameters() if p.requires_grad]
        opt = type(optimizer)(params, **optimizer.defaults)
        devices = {p.device.type for p in params}

        def call(vmap: bool) -> None:
            for ens in ensembles:
                ens.use_vmap = vmap
            opt.zero_grad()
            with torch.enable_grad():
                loss_fn(work).backward()
            opt.step()
            for ens in ensembles:
                ens.apply_masks_()

        with torch.random.fork_rng(devices=[] if "cuda" not in devices else None):
            result = _time_paths(call, "cuda" in devices, min_block_s)
        result["whole_step"] = True
        if full_key is not None:
            _VMAP_CALIBRATIONS[full_key] = result
    for ens in real:
        ens.auto_vmap = bool(result["vmap"])
        ens.vmap_calibration = {**result, "cached": cached}
    return {**result, "cached": cached}


def _auto_ensembles(module: nn.Module) -> list[MaskedEnsemble]:
    """The ensembles in ``module`` whose path is left to measurement (each once)."""
    seen: dict[int, MaskedEnsemble] = {}
    for m in module.modules():
        if isinstance(m, MaskedEnsemble) and m.use_vmap is None and m.num_members > 1:
            seen.setdefault(id(m), m)
    return list(seen.values())


#: What MaskedEnsemble keeps in its ``__dict__`` to skip per-call lookups (never copied).
_CACHES = ("_mask_cache", "_slot_cache", "_leaf_cache", "_acting_cache")


def aliased_member_network(ensemble: MaskedEnsemble, k: int) -> nn.Module:
    """A plain copy of the ensemble's template whose parameters alias member ``k``.

    Nothing is copied: the optimizer's in-place updates and the masks show
    through. Acting threads use it so that they never touch the shared
    template (``to_module`` on it is not thread-safe).

    Example:
        >>> ens = MaskedEnsemble(nn.Linear(3, 2), 2)
        >>> net = aliased_member_network(ens, 1)
        >>> net.weight.data_ptr() == ens.flat_params()["weight"][1].data_ptr()
        True
    """
    net = copy.deepcopy(ensemble.template)
    for name, p in ensemble.flat_params().items():
        *path, leaf = name.split(".")
        mod = net.get_submodule(".".join(path)) if path else net
        mod._parameters[leaf] = nn.Parameter(p[k].detach(), requires_grad=False)
    return net.eval()


def _after_load(module: MaskedEnsemble, incompatible_keys: object) -> None:
    module._selected_int = int(module._selected)
    # Loading writes the masks without bumping their version counters.
    module.__dict__.pop("_mask_cache", None)


def write_member(
    ens: MaskedEnsemble, k: int, weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> None:
    """Overwrite member ``k``'s weights and masks (weights are masked on the way)."""
    params, ens_masks = ens.flat_params(), ens.flat_masks()
    with torch.no_grad():
        for name, value in weights.items():
            if name in masks:
                value = torch.where(masks[name], value, torch.zeros((), dtype=value.dtype))
            params[name].data[k].copy_(value)
        for name, mask in masks.items():
            ens_masks[name][k].copy_(mask)


def rebuild_members(
    ens: MaskedEnsemble,
    j: int,
    speeds: Sequence[float],
    scope: Literal["global", "layer"] = "global",
    structure: Literal["weights", "filters"] = "weights",
) -> None:
    """Member 0 <- member ``j``; member ``k >= 1`` <- ``j`` pruned to ``s_j + v_k (1 - s_j)``.

    Member 0 becomes the selected member. Already-pruned weights are never regrown.

    Example:
        >>> ens = MaskedEnsemble(nn.Linear(4, 4), 3)
        >>> rebuild_members(ens, 0, [0.0, 0.25, 0.5])
        >>> ens.sparsity().tolist()
        [0.0, 0.25, 0.5]
    """
    if len(speeds) != ens.num_members:
        raise ValueError(f"got {len(speeds)} speeds for {ens.num_members} members")
    weights = {n: p[j].detach().clone() for n, p in ens.flat_params().items()}
    masks = {n: m[j].clone() for n, m in ens.flat_masks().items()}
    prunable = {n: weights[n] for n in masks}
    numel = {n: m.numel() for n, m in masks.items()}
    kept = {n: int(m.sum()) for n, m in masks.items()}
    s_global = 1.0 - sum(kept.values()) / sum(numel.values())
    below_one = math.nextafter(1.0, 0.0)
    for k, v in enumerate(speeds):
        if k == 0 or v == 0.0:
            new_masks = masks
        elif scope == "global":
            target = min(s_global + v * (1.0 - s_global), below_one)
            new_masks = magnitude_masks(
                prunable, target, scope="global", masks=masks, structure=structure
            )
        else:
            targets = {n: min((1 - kept[n] / numel[n]) * (1 - v) + v, below_one) for n in masks}
            new_masks = magnitude_masks(
                prunable, targets, scope="layer", masks=masks, structure=structure
            )
        write_member(ens, k, weights, new_masks)
    ens.selected = 0


def prune_member_to(
    ens: MaskedEnsemble,
    k: int,
    sparsity: float,
    scope: Literal["global", "layer"] = "global",
    structure: Literal["weights", "filters"] = "weights",
) -> None:
    """Magnitude-prune member ``k`` to ``sparsity`` (never regrowing)."""
    weights = {n: p[k].detach().clone() for n, p in ens.flat_params().items()}
    masks = {n: m[k].clone() for n, m in ens.flat_masks().items()}
    new = magnitude_masks(
        {n: weights[n] for n in masks}, sparsity, scope=scope, masks=masks, structure=structure
    )
    write_member(ens, k, weights, new)
