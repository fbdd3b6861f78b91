"""Masks, magnitude pruning, sparsity statistics, schedules and pruning speeds.

Everything here works on *flat* ``{name: tensor}`` mappings (or TensorDicts
flattened with ``"."``) so that the same code serves a plain ``nn.Module``,
one member of an ensemble, or a whole ensemble (leading ``[K]`` dimension).

Conventions (``docs/algorithm.md``):

* Prunable tensors are the ``weight`` of ``nn.Linear`` and ``nn.Conv*d``
  layers. Biases and normalisation parameters are never pruned (JaxPruner's
  choice; the paper does not say).
* A mask is a ``bool`` tensor of the weight's shape, ``True`` = kept.
* Sparsity is the fraction of *pruned* entries.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "PRUNABLE_LAYER_TYPES",
    "LinearSpeedGrid",
    "NoisySpeedPolicy",
    "PolynomialSchedule",
    "PruningSpeedPolicy",
    "apply_masks_",
    "magnitude_masks",
    "make_speed_policy",
    "polynomial_sparsity",
    "prunable_parameter_names",
    "sparsity_stats",
]

PRUNABLE_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)

PruningScope = Literal["global", "layer"]
PruningStructure = Literal["weights", "filters"]


def prunable_parameter_names(module: nn.Module) -> list[str]:
    """Names (as in ``module.named_parameters()``) of the prunable weights.

    Args:
        module: any network; lazy layers must be materialised first.

    Returns:
        The ``"<path>.weight"`` names of every Linear / Conv layer, in
        registration order.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> prunable_parameter_names(net)
        ['0.weight', '2.weight']
    """
    names = []
    for mod_name, mod in module.named_modules():
        if isinstance(mod, PRUNABLE_LAYER_TYPES) and getattr(mod, "weight", None) is not None:
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def _check_sparsity(value: float, name: str) -> float:
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    *,
    scope: PruningScope = "global",
    masks: Mapping[str, torch.Tensor] | None = None,
    structure: PruningStructure = "weights",
) -> dict[str, torch.Tensor]:
    """Masks that keep the largest-magnitude weights.

    Already-pruned entries (``masks[name] == False``) are ranked below every
    kept entry, so pruning only ever removes weights: the returned masks are a
    subset of ``masks`` as long as the requested sparsity is not lower than
    the current one (when it is lower, nothing is regrown and the current
    masks are returned).

    Args:
        weights: prunable tensors by name (one network, no ensemble dim).
        sparsity: target fraction of pruned entries in ``[0, 1)``. With
            ``scope="global"`` one number for all tensors together; with
            ``scope="layer"`` either one number applied to every tensor or a
            mapping name -> sparsity.
        scope: ``"global"`` ranks all tensors together (layers end with
            different sparsities); ``"layer"`` prunes each tensor to its own
            target (uniform sparsity).
        masks: current masks; ``None`` means all kept.
        structure: ``"weights"`` ranks single weights (unstructured);
            ``"filters"``: a magnitude threshold decides how many weights
            each convolution (3 dims or more) loses, counting each kept
            weight of a convolution that has lost filters ``numel / kept``
            times (its kept filters stand for the whole layer, so a removed
            filter is counted once, not again at every step); it loses that
            many, rounded to the nearest whole number of output filters
            (those with the smallest mean ``|w|`` of their kept weights; at
            least one filter stays), and the other tensors make up the
            total. From dense masks this is the plain ranking's count; many
            small steps end near one large step. The compact
            export then drops those channels
            (:func:`torchrl_eaudeqn.export.compact`): unstructured zeros in a
            convolution buy no inference speed, removed channels do.

    Returns:
        ``{name: bool mask}``; the number of pruned entries is exactly
        ``round(sparsity * numel)`` over the scope (or the current number, if
        larger). With ``structure="filters"`` the same, unless the
        convolutions' rounding to whole filters cannot be made up by the
        other tensors (then within half a filter per convolution).

    Example:
        >>> w = {"a": torch.tensor([1.0, -3.0, 0.5, 2.0])}
        >>> magnitude_masks(w, 0.5)["a"]
        tensor([False,  True, False,  True])

        Whole filters: the ranking takes 0.1 and 0.2 from the convolution, so
        it loses a filter's worth of weights, the one with the smaller mean:

        >>> w = {"conv": torch.tensor([[[[3.0, 0.1]]], [[[0.2, 0.3]]]]),
        ...      "fc": torch.tensor([1.0, 2.0])}
        >>> m = magnitude_masks(w, 0.3, structure="filters")
        >>> m["conv"].flatten(1).any(1), m["fc"]
        (tensor([ True, False]), tensor([True, True]))
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if structure not in ("weights", "filters"):
        raise ValueError(f"structure must be 'weights' or 'filters', got {structure!r}")
    if not weights:
        raise ValueError("weights is empty: the network has no prunable Linear/Conv weight")
    names = list(weights)
    current = {
        n: (masks[n].bool() if masks is not None else torch.ones_like(weights[n], dtype=torch.bool))
        for n in names
    }
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise ValueError("sparsity must be a single float when scope='global'")
        groups = [(names, _check_sparsity(sparsity, "sparsity"))]
    else:
        if isinstance(sparsity, Mapping):
            missing = set(names) - set(sparsity)
            if missing:
                raise ValueError(f"sparsity has no entry for layers {sorted(missing)}")
            groups = [([n], _check_sparsity(sparsity[n], f"sparsity[{n!r}]")) for n in names]
        else:
            s = _check_sparsity(sparsity, "sparsity")
            groups = [([n], s) for n in names]

    out: dict[str, torch.Tensor] = {}
    for group, target in groups:
        total = sum(weights[n].numel() for n in group)
        n_pruned = int(round(target * total))
        convs = [n for n in group if weights[n].dim() >= 3]
        if structure == "weights" or not convs:
            out.update(_keep_largest(weights, current, group, n_pruned))
            continue
        # A magnitude threshold decides how many weights each convolution
        # loses; whole filters decide which. The other tensors of the group
        # then make up the exact total.
        budget = _filter_budgets(weights, current, group, convs, n_pruned)
        masks_g = {n: _prune_filters(weights[n], current[n], budget[n]) for n in convs}
        rest = [n for n in group if n not in convs]
        if rest:
            left = n_pruned - sum(int((~masks_g[n]).sum()) for n in convs)
            masks_g.update(_keep_largest(weights, current, rest, left))
        out.update(masks_g)
    return out


def _keep_largest(
    weights: Mapping[str, torch.Tensor],
    current: Mapping[str, torch.Tensor],
    group: list[str],
    n_pruned: int,
) -> dict[str, torch.Tensor]:
    """Prune ``group`` to ``n_pruned`` entries (or its current count, if larger) by |w|."""
    # Scores: |w| for kept entries, -1 for pruned ones, so topk never
    # resurrects a pruned weight and the kept count is exact.
    scores = torch.cat(
        [torch.where(current[n], weights[n].detach().abs(), -1.0).flatten().float() for n in group]
    )
    total = scores.numel()
    alive = int(sum(int(current[n].sum()) for n in group))
    keep = max(0, min(alive, total - n_pruned))
    flat = torch.zeros(total, dtype=torch.bool, device=scores.device)
    if keep > 0:
        flat[torch.topk(scores, keep, sorted=False).indices] = True
    out, offset = {}, 0
    for n in group:
        numel = weights[n].numel()
        out[n] = flat[offset : offset + numel].view_as(weights[n])
        offset += numel
    return out


def _filter_budgets(
    weights: Mapping[str, torch.Tensor],
    current: Mapping[str, torch.Tensor],
    group: list[str],
    convs: list[str],
    n_pruned: int,
) -> dict[str, int]:
    """How many weights each convolution of ``group`` should have lost in all.

    The plain ranking's count is not it once filters are gone: a
    filter-pruned convolution's zeros are counted again at every step, and
    so are the small weights still inside its kept filters (the ones
    unstructured pruning would already have taken), so each step takes
    filters again. Measured on a fixed random Nature CNN (width 512),
    pruning to 95% in 95 steps of 1% that way left 2/32, 1/64, 1/64 filters
    where one step leaves 23, 39, 37; a 50k-step training run did the same.
    Here a convolution's kept weights stand for its whole distribution: each
    counts ``numel / kept`` times, so the convolution's budget at a
    threshold is that multiple of its kept weights below it (and never less
    than what it has already lost); the threshold is the smallest one at
    which the group reaches ``n_pruned``. From a dense network every weight
    counts once and this is the plain ranking.
    """
    rest = [n for n in group if n not in convs]
    if group == convs and len(convs) == 1:  # e.g. scope="layer": its own target
        return {convs[0]: max(n_pruned, int((~current[convs[0]]).sum()))}
    alive = {n: torch.sort(weights[n].detach().abs()[current[n]].float()).values for n in group}
    already = {n: weights[n].numel() - alive[n].numel() for n in group}
    stands_for = {n: weights[n].numel() / max(1, alive[n].numel()) for n in convs}

    def below(n: str, tau: torch.Tensor | None) -> int:
        return 0 if tau is None else int(torch.searchsorted(alive[n], tau, right=True))

    def budgets(tau: torch.Tensor | None) -> dict[str, int]:
        return {n: max(already[n], round(stands_for[n] * below(n, tau))) for n in convs}

    def pruned(tau: torch.Tensor | None) -> int:
        return sum(budgets(tau).values()) + sum(already[n] + below(n, tau) for n in rest)

    if pruned(None) >= n_pruned:
        return budgets(None)
    # Smallest threshold (among the kept magnitudes) that reaches n_pruned;
    # pruned() is monotone in it. One sort per target update, not per step.
    cand = torch.sort(torch.cat([alive[n] for n in group])).values
    lo, hi = 0, cand.numel() - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pruned(cand[mid]) >= n_pruned:
            hi = mid
        else:
            lo = mid + 1
    if not rest:
        # Nothing makes up the total: take the threshold just below when it
        # lands nearer (a convolution's count moves in steps of numel / kept).
        below_tau = cand[lo - 1] if lo > 0 else None
        if n_pruned - pruned(below_tau) <= pruned(cand[lo]) - n_pruned:
            return budgets(below_tau)
    return budgets(cand[lo])


def _prune_filters(weight: torch.Tensor, current: torch.Tensor, n_pruned: int) -> torch.Tensor:
    """Remove whole output filters, smallest mean |kept w| first, to about ``n_pruned`` zeros.

    The number of filters is the one whose pruned count is nearest to
    ``n_pruned`` (ties: fewer), not the next whole filter up: pruning goes in
    small steps (a few weights of a filter per step), and rounding each step
    up compounds, in a measured 50k-step run, into every filter of every
    convolution gone. Rounded to the nearest, a convolution's pruned count
    stays within half a filter of what the ranking assigns it at each step.
    At least one filter is kept: a convolution without any cuts the network
    off its input.
    """
    mask = current.clone()
    missing = n_pruned - int((~mask).sum())
    kept = mask.flatten(1).sum(1)
    live = (kept > 0).nonzero()[:, 0]
    if missing <= 0 or live.numel() <= 1:
        return mask
    mean = torch.where(mask, weight.detach().abs(), 0.0).flatten(1).sum(1).float()
    mean = mean / kept.clamp(min=1)
    order = live[torch.argsort(mean[live], stable=True)][:-1]  # the best filter stays
    cum = torch.cat([kept.new_zeros(1), torch.cumsum(kept[order], 0)])
    n_filters = int(torch.argmin((cum - missing).abs()))  # first minimum: fewer on ties
    mask[order[:n_filters]] = False
    return mask


@torch.no_grad()
def apply_masks_(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (``params[name] *= masks[name]``).

    Shapes broadcast, so an ensemble ``[K, ...]`` weight takes ``[K, ...]``
    masks. ``torch.where`` (not multiplication) keeps NaN/Inf of pruned
    entries from surviving.
    """
    for name, mask in masks.items():
        p = params[name].data
        # In place (no temporary copy of the weight): measured 2.6x faster
        # than copy_(where(...)) on the Nature CNN ensemble.
        torch.where(mask, p, torch.zeros((), dtype=p.dtype, device=p.device), out=p)


def sparsity_stats(
    params: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    *,
    ensemble_dim: bool = False,
) -> dict[str, object]:
    """Sparsity of a masked network (or of every member of an ensemble).

    Args:
        params: *all* parameters by name (prunable and not).
        masks: masks of the prunable ones.
        ensemble_dim: ``True`` when every tensor has a leading member dim;
            then each statistic is a tensor ``[K]``.

    Returns:
        ``{"prunable": s, "overall": s, "per_layer": {name: s},
        "nonzero_params": n, "total_params": n}`` where ``"prunable"`` is the
        pruned fraction of prunable weights and ``"overall"`` the pruned
        fraction of all parameters (biases count as kept).

    Example:
        >>> p = {"w": torch.ones(4), "b": torch.ones(2)}
        >>> s = sparsity_stats(p, {"w": torch.tensor([True, False, False, True])})
        >>> float(s["prunable"]), round(float(s["overall"]), 3)
        (0.5, 0.333)
    """
    lead = 1 if ensemble_dim else 0

    def count(t: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(lead, t.ndim))
        return t.sum(dims) if dims else t

    def numel(t: torch.Tensor) -> int:
        return int(math.prod(t.shape[lead:]))

    per_layer = {}
    kept_prunable = 0
    total_prunable = 0
    for name, mask in masks.items():
        kept = count(mask.long())
        per_layer[name] = 1.0 - kept.double() / numel(mask)
        kept_prunable = kept_prunable + kept
        total_prunable += numel(mask)
    total = sum(numel(p) for p in params.values())
    kept_all = kept_prunable + (total - total_prunable)
    to_t = torch.as_tensor
    return {
        "prunable": 1.0 - to_t(kept_prunable).double() / max(total_prunable, 1),
        "overall": 1.0 - to_t(kept_all).double() / max(total, 1),
        "per_layer": per_layer,
        "nonzero_params": to_t(kept_all),
        "total_params": total,
    }


def polynomial_sparsity(
    step: int | float,
    final_sparsity: float,
    start: int | float,
    end: int | float,
    *,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
) -> float:
    """Polynomial sparsity schedule (Zhu & Gupta 2017, as in JaxPruner).

    ``s(t) = s_f + (s_i - s_f) * (1 - p)^power`` with
    ``p = clip((t - start) / (end - start), 0, 1)``; with ``s_i = 0`` this is
    ``s_f * (1 - (1 - p)^3)``.

    Example:
        >>> polynomial_sparsity(0, 0.95, 10, 20), polynomial_sparsity(20, 0.95, 10, 20)
        (0.0, 0.95)
        >>> round(polynomial_sparsity(15, 0.95, 10, 20), 6)
        0.83125
    """
    _check_sparsity(final_sparsity, "final_sparsity")
    _check_sparsity(initial_sparsity, "initial_sparsity")
    if end <= start:
        raise ValueError(f"end ({end}) must be greater than start ({start})")
    p = min(max((step - start) / (end - start), 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - p) ** power


@dataclass(frozen=True)
class PolynomialSchedule:
    """When and how far the polynomial baselines prune (steps are optimizer steps).

    Args:
        final_sparsity: sparsity reached at ``end``.
        start: first pruning step.
        end: last pruning step.
        prune_every: steps between mask updates (and a last one at ``end``).
        power: exponent of :func:`polynomial_sparsity`.

    Example:
        >>> sched = PolynomialSchedule(0.5, start=0, end=4, prune_every=2)
        >>> [t for t in range(6) if sched.due(t)], sched.sparsity(4)
        ([0, 2, 4], 0.5)
    """

    final_sparsity: float = 0.95
    start: int = 0
    end: int = 1
    prune_every: int = 1
    power: float = 3.0

    def __post_init__(self) -> None:
        _check_sparsity(self.final_sparsity, "final_sparsity")
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"need 0 <= start < end, got start={self.start}, end={self.end}")
        every = self.prune_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"prune_every must be an int >= 1, got {every!r}")

    def due(self, step: int) -> bool:
        """Whether the mask is recomputed at ``step``."""
        inside = self.start <= step <= self.end
        return inside and ((step - self.start) % self.prune_every == 0 or step == self.end)

    def sparsity(self, step: int | float) -> float:
        """The schedule's sparsity at ``step``."""
        return polynomial_sparsity(
            step, self.final_sparsity, self.start, self.end, power=self.power
        )


class PruningSpeedPolicy(abc.ABC):
    """Chooses each member's pruning speed at a target update.

    Member ``k`` becomes a copy of the winner pruned to
    ``s_k = s_j + v_k * (1 - s_j)``; ``v_0`` is always 0 (the steady member).
    Subclasses return ``[v_0, ..., v_{K-1}]``.
    """

    max_speed: float

    @abc.abstractmethod
    def speeds(self, num_members: int, winner: int | None = None) -> list[float]:
        """Speeds for the next period; ``winner`` is the last winner's index."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - optional hook
        pass


def _check_speed(value: float, name: str) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


class LinearSpeedGrid(PruningSpeedPolicy):
    """Evenly spaced speeds: ``v_k = max_speed * k / (K - 1)`` (this project's default).

    Args:
        max_speed: speed of the fastest member, a fraction of the remaining
            weights pruned per target update (released config: 0.01).

    Example:
        >>> LinearSpeedGrid(0.01).speeds(5)
        [0.0, 0.0025, 0.005, 0.0075, 0.01]
    """

    def __init__(self, max_speed: float = 0.01) -> None:
        self.max_speed = _check_speed(max_speed, "max_speed")

    def speeds(self, num_members: int, winner: int | None = None) -> list[float]:
        if num_members == 1:
            return [0.0]
        return [self.max_speed * k / (num_members - 1) for k in range(num_members)]

    def __repr__(self) -> str:
        return f"LinearSpeedGrid(max_speed={self.max_speed})"


class NoisySpeedPolicy(PruningSpeedPolicy):
    """Speeds drawn around the last winner's speed.

    ``v_k = min(max_speed, max(base, min_speed) * max_noise ** u_k)`` with
    ``u_k ~ U[-1, 1]`` and ``base`` the speed the winner was created with
    (0 for the steady member, hence ``min_speed`` so pruning can restart).
    The released config's ``max_noise: 3.0`` is read this way; the authors'
    exact rule is unpublished.

    Args:
        max_speed: upper cap of every speed.
        max_noise: multiplicative spread, factor in ``[1/max_noise, max_noise]``.
        min_speed: floor of the base speed.
        seed: seed of the policy's own generator (saved in ``state_dict``).

    Example:
        >>> p = NoisySpeedPolicy(0.01, 3.0, seed=0)
        >>> v = p.speeds(5, winner=None)
        >>> v[0], all(0 < x <= 0.01 for x in v[1:])
        (0.0, True)
    """

    def __init__(
        self,
        max_speed: float = 0.01,
        max_noise: float = 3.0,
        min_speed: float | None = None,
        seed: int = 0,
    ) -> None:
        self.max_speed = _check_speed(max_speed, "max_speed")
        if not max_noise >= 1.0:
            raise ValueError(f"max_noise must be >= 1, got {max_noise}")
        self.max_noise = float(max_noise)
        self.min_speed = _check_speed(
            max_speed / max_noise if min_speed is None else min_speed, "min_speed"
        )
        self._gen = torch.Generator().manual_seed(seed)
        self._last: list[float] | None = None

    def speeds(self, num_members: int, winner: int | None = None) -> list[float]:
        base = 0.0
        if self._last is not None and winner is not None and winner < len(self._last):
            base = self._last[winner]
        base = max(base, self.min_speed)
        u = torch.rand(num_members - 1, generator=self._gen, dtype=torch.float64) * 2 - 1
        out = [0.0] + [min(self.max_speed, base * self.max_noise ** float(x)) for x in u]
        self._last = out
        return out

    def state_dict(self) -> dict:
        return {"generator": self._gen.get_state(), "last": self._last}

    def load_state_dict(self, state: dict) -> None:
        self._gen.set_state(state["generator"])
        self._last = state["last"]

    def __repr__(self) -> str:
        return (
            f"NoisySpeedPolicy(max_speed={self.max_speed}, max_noise={self.max_noise}, "
            f"min_speed={self.min_speed})"
        )


def make_speed_policy(name: str, **kwargs: float) -> PruningSpeedPolicy:
    """Build a speed policy by name: ``"grid"`` or ``"noisy"``.

    Example:
        >>> make_speed_policy("grid", max_speed=0.02).speeds(3)
        [0.0, 0.01, 0.02]
    """
    policies = {"grid": LinearSpeedGrid, "noisy": NoisySpeedPolicy}
    if name not in policies:
        raise ValueError(f"speed policy must be one of {sorted(policies)}, got {name!r}")
    return policies[name](**kwargs)
