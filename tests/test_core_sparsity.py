import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchrl_eaudeqn import (
    LinearSpeedGrid,
    NoisySpeedPolicy,
    apply_masks_,
    magnitude_masks,
    make_speed_policy,
    nature_cnn,
    polynomial_sparsity,
    prunable_parameter_names,
    sparsity_stats,
)


def test_prunable_names_are_linear_and_conv_weights_only():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    assert prunable_parameter_names(net) == ["0.weight", "3.weight"]


def test_global_masks_keep_largest_magnitudes_across_layers():
    w = {"a": torch.tensor([0.1, -5.0, 0.2]), "b": torch.tensor([[3.0, -0.05], [0.3, 4.0]])}
    m = magnitude_masks(w, 4 / 7)  # prune 4 of 7
    assert m["a"].tolist() == [False, True, False]
    assert m["b"].tolist() == [[True, False], [False, True]]


def test_layer_masks_prune_each_layer_to_its_fraction():
    w = {"a": torch.arange(1.0, 5.0), "b": torch.arange(1.0, 11.0)}
    m = magnitude_masks(w, 0.5, scope="layer")
    assert m["a"].tolist() == [False, False, True, True]
    assert int(m["b"].sum()) == 5 and m["b"][5:].all()


def test_masks_never_regrow_and_lower_target_keeps_current():
    w = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    current = {"a": torch.tensor([True, True, False, True])}  # 3.0 already pruned
    m = magnitude_masks(w, 0.5, masks=current)
    assert m["a"].tolist() == [False, True, False, True]
    assert magnitude_masks(w, 0.0, masks=current)["a"].tolist() == current["a"].tolist()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity_is_rejected_with_its_name(bad):
    with pytest.raises(ValueError, match="sparsity must be in"):
        magnitude_masks({"a": torch.ones(3)}, bad)


def test_apply_masks_zeroes_nan_too():
    p = {"w": torch.tensor([float("nan"), 1.0, float("inf")])}
    apply_masks_(p, {"w": torch.tensor([False, True, False])})
    assert p["w"].tolist() == [0.0, 1.0, 0.0]


def test_sparsity_stats_closed_form_ensemble():
    params = {"w": torch.ones(2, 4), "b": torch.ones(2, 2)}
    masks = {"w": torch.tensor([[True, True, True, True], [True, False, False, False]])}
    s = sparsity_stats(params, masks, ensemble_dim=True)
    assert s["prunable"].tolist() == [0.0, 0.75]
    assert torch.allclose(s["overall"], torch.tensor([0.0, 0.5], dtype=torch.float64))
    assert s["per_layer"]["w"].tolist() == [0.0, 0.75]
    assert s["total_params"] == 6 and s["nonzero_params"].tolist() == [6, 3]


def test_polynomial_schedule_closed_form():
    assert polynomial_sparsity(5, 0.95, 10, 20) == 0.0
    assert polynomial_sparsity(30, 0.95, 10, 20) == pytest.approx(0.95)
    for t in range(10, 21):
        p = (t - 10) / 10
        assert polynomial_sparsity(t, 0.95, 10, 20) == pytest.approx(0.95 * (1 - (1 - p) ** 3))
    with pytest.raises(ValueError, match="end"):
        polynomial_sparsity(0, 0.9, 10, 10)


def test_speed_policies():
    assert LinearSpeedGrid(0.01).speeds(5) == pytest.approx([0, 0.0025, 0.005, 0.0075, 0.01])
    assert LinearSpeedGrid(0.01).speeds(1) == [0.0]
    p = NoisySpeedPolicy(0.01, 3.0, seed=1)
    first = p.speeds(5)
    assert first[0] == 0.0 and all(0.01 / 9 - 1e-12 <= v <= 0.01 for v in first[1:])
    state = p.state_dict()
    a = p.speeds(5, winner=2)
    p.load_state_dict(state)
    assert p.speeds(5, winner=2) == a
    # Around the winner's speed: within [v/3, 3v], capped at max_speed.
    assert all(first[2] / 3 - 1e-12 <= v <= min(0.01, first[2] * 3) + 1e-12 for v in a[1:])
    with pytest.raises(ValueError, match="max_speed"):
        LinearSpeedGrid(-0.1)
    with pytest.raises(ValueError, match="max_speed"):
        NoisySpeedPolicy(1.5)
    with pytest.raises(ValueError, match="speed policy"):
        make_speed_policy("fast")


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    s1=st.floats(0, 0.95),
    s2=st.floats(0, 0.95),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 2**16),
)
def test_pruning_is_exact_monotone_and_keeps_largest(sizes, s1, s2, scope, seed):
    g = torch.Generator().manual_seed(seed)
    w = {f"l{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
    m1 = magnitude_masks(w, s1, scope=scope)
    m2 = magnitude_masks(w, s2, scope=scope, masks=m1)
    for name in w:
        assert not (m2[name] & ~m1[name]).any()  # never regrows
    groups = [list(w)] if scope == "global" else [[n] for n in w]
    for group in groups:
        total = sum(w[n].numel() for n in group)
        pruned1 = sum(int((~m1[n]).sum()) for n in group)
        pruned2 = sum(int((~m2[n]).sum()) for n in group)
        assert pruned1 == round(s1 * total)
        assert pruned2 == max(pruned1, round(s2 * total))
        kept = torch.cat([w[n][m2[n]].abs() for n in group])
        dropped = torch.cat([w[n][~m2[n] & m1[n]].abs() for n in group])
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max()
    assert not math.isnan(s1)


@settings(max_examples=80, deadline=None)
@given(
    convs=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 3)), min_size=1, max_size=3),
    linears=st.lists(st.integers(1, 60), max_size=2),
    s1=st.floats(0, 0.95),
    s2=st.floats(0, 0.95),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 2**16),
)
def test_filter_pruning_removes_whole_filters_smallest_first(convs, linears, s1, s2, scope, seed):
    """structure='filters': every conv filter is kept or pruned whole, at least one
    stays, pruning never regrows, each conv loses the unstructured ranking's count
    rounded to the nearest whole filter (from already filter-pruned masks: the
    ranking's fraction of the kept weights, times the conv's size), pruned filters
    have the smallest mean |w|, and the other tensors make up the exact total when
    they can."""
    g = torch.Generator().manual_seed(seed)
    w = {f"c{i}": torch.randn(o, c, 2, 2, generator=g) for i, (o, c) in enumerate(convs)}
    w |= {f"l{i}": torch.randn(n, generator=g) for i, n in enumerate(linears)}
    m1 = magnitude_masks(w, s1, scope=scope, structure="filters")
    m2 = magnitude_masks(w, s2, scope=scope, masks=m1, structure="filters")
    plain = magnitude_masks(w, s1, scope=scope)
    groups = [list(w)] if scope == "global" else [[n] for n in w]
    for m, s in ((m1, s1), (m2, max(s1, s2))):
        for n in w:
            assert not (m2[n] & ~m1[n]).any()
            if n.startswith("c"):
                rows = m[n].flatten(1)
                assert bool((rows.all(1) | ~rows.any(1)).all())  # whole filters
                assert bool(rows.any(1).any())  # one filter at least stays
        for group in groups:
            total = sum(w[n].numel() for n in group)
            pruned = sum(int((~m[n]).sum()) for n in group)
            rest = [n for n in group if not n.startswith("c")]
            rest_room = sum(int(m[n].sum()) for n in rest)  # what the rest could still lose
            if rest and rest_room and pruned != round(s * total):
                # Only when the convs' rounding overshot what the rest had already lost.
                assert pruned > round(s * total)
            slack = sum(w[n][0].numel() for n in group if n.startswith("c"))
            assert abs(pruned - round(s * total)) <= slack
    for n in w:
        if n.startswith("c"):
            rows = m1[n].flatten(1)
            filter_size = rows.shape[1]
            want = int((~plain[n]).sum())
            got = int((~m1[n]).sum())
            if rows.shape[0] > 1 and want < (rows.shape[0] - 1) * filter_size:
                assert abs(got - want) * 2 <= filter_size
            means = w[n].abs().flatten(1).mean(1)
            if (~rows.any(1)).any():
                assert means[~rows.any(1)].max() <= means[rows.all(1)].min()
    # Asking again for the sparsity it has takes nothing more (a group whose
    # whole filters missed the total does not have it yet).
    again = magnitude_masks(w, s1, scope=scope, masks=m1, structure="filters")
    for group in groups:
        total = sum(w[n].numel() for n in group)
        if sum(int((~m1[n]).sum()) for n in group) == round(s1 * total):
            assert all(torch.equal(again[n], m1[n]) for n in group)


def test_filter_pruned_conv_counts_each_weight_once_closed_form():
    """A conv with half its filters gone: its 4 kept weights stand for all 8. At
    50% of 16 the threshold 3.5 takes the dense layer's 4 smallest; 2 of the conv's
    kept weights (1, 2) are below it, standing for 4 = what it has already lost, so
    it keeps both filters. The first version counted its 4 zeros plus 1 and 2 and
    removed the filter [1, 2]."""
    conv = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [5.0, 6.0]]).view(4, 1, 1, 2)
    fc = torch.tensor([0.5, 1.5, 2.5, 3.5, 7.0, 8.0, 9.0, 10.0])
    current = {"conv": conv != 0, "fc": torch.ones(8, dtype=torch.bool)}
    m = magnitude_masks({"conv": conv, "fc": fc}, 0.5, masks=current, structure="filters")
    assert m["conv"].flatten(1).any(1).tolist() == [False, True, False, True]
    assert m["fc"].tolist() == [False] * 4 + [True] * 4


def test_filter_pruning_in_small_steps_does_not_compound():
    """Pruning a fixed Nature CNN to 90% in 90 steps of 1% keeps about the filters
    one step keeps. Counting the removed filters' zeros again at every step (the
    first version) left 2/32, 1/64, 1/64 filters after such a schedule."""
    torch.manual_seed(0)
    net = nature_cnn(6, 256)  # the dense layer is large enough to make up the total
    w = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("weight")}
    one = magnitude_masks(w, 0.9, structure="filters")
    masks = None
    for i in range(1, 91):
        masks = magnitude_masks(w, i / 100, masks=masks, structure="filters")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    for n in w:
        if w[n].dim() == 4:
            kept_one = int(one[n].flatten(1).any(1).sum())
            kept_steps = int(masks[n].flatten(1).any(1).sum())
            assert kept_one < w[n].shape[0]  # the test prunes filters at all
            assert abs(kept_steps - kept_one) <= 0.15 * w[n].shape[0], (n, kept_steps, kept_one)


def test_ensemble_skips_dense_masks_but_sees_every_in_place_mask_write():
    """apply_masks_ skips a mask that keeps every weight, and notices when one stops doing so."""
    from torchrl_eaudeqn.modules.ensemble import MaskedEnsemble, prune_member_to

    ens = MaskedEnsemble(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), 2)
    weight = ens.params.get(("0", "weight"))
    mask = ens.masks.get(("0", "weight"))
    with torch.no_grad():
        weight.fill_(1.0)
    ens.apply_masks_()
    assert bool((weight == 1.0).all())  # dense: nothing to zero
    mask[1, 0, 0] = False  # an in-place write: the next call must apply it
    ens.apply_masks_()
    assert weight[1, 0, 0] == 0.0 and int((weight == 0).sum()) == 1
    with torch.no_grad():
        weight.fill_(2.0)
    ens.apply_masks_()  # the same mask version, not dense: still applied every call
    assert weight[1, 0, 0] == 0.0
    mask.fill_(True)
    prune_member_to(ens, 0, 0.5)  # the library's own pruning writes the masks in place
    with torch.no_grad():
        weight.fill_(3.0)
    ens.apply_masks_()
    assert float(ens.sparsity()[0]) == pytest.approx(0.5, abs=0.1)
    state = ens.state_dict()
    fresh = MaskedEnsemble(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), 2)
    fresh.apply_masks_()  # remembers "dense" for its masks...
    fresh.load_state_dict(state)  # ...which loading pruned ones overwrites in place
    with torch.no_grad():
        fresh.params.get(("0", "weight")).fill_(1.0)
    fresh.apply_masks_()
    assert torch.equal(fresh.params.get(("0", "weight")) != 0, fresh.masks.get(("0", "weight")))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    keep=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_ensemble_apply_masks_equals_where_bit_for_bit(seed, keep, dtype):
    """The bit-mask AND gives torch.where's result: kept weights untouched, pruned ones +0.0."""
    from torchrl_eaudeqn.modules.ensemble import MaskedEnsemble

    gen = torch.Generator().manual_seed(seed)
    ens = MaskedEnsemble(nn.Linear(6, 5), 3).to(dtype)
    weight = ens.params.get("weight")
    mask = ens.masks.get("weight")
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=gen).to(dtype))
        weight.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -0.0], dtype=dtype)
    mask.copy_(torch.rand(mask.shape, generator=gen) < keep)
    want = torch.where(mask, weight.detach(), torch.zeros((), dtype=dtype))
    ens.apply_masks_()
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[weight.element_size()]
    assert torch.equal(weight.detach().view(bits), want.view(bits).masked_fill(~mask, 0))
