import copy

import pytest
import torch
from conftest import make_batch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchrl.data import OneHot
from torchrl.modules import QValueActor
from torchrl.objectives import DQNLoss, HardUpdate

from torchrl_eaudeqn import (
    EauDeQNLoss,
    LinearSpeedGrid,
    MaskedEnsembleQValueActor,
    NoisySpeedPolicy,
    PolyPruneUpdater,
    TargetSelectionUpdater,
    mlp,
)


def _setup(k=3, max_speed=0.5, period=2, hidden=(16,), scope="global", **kw):
    # 3*16 + 16*2 = 80 prunable weights: speeds 0.25/0.5 give exact counts.
    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=hidden), k, action_spec=OneHot(2))
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=0.9)
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    up = TargetSelectionUpdater(
        loss, opt, period=period, speed_policy=LinearSpeedGrid(max_speed), scope=scope, **kw
    )
    return actor, loss, opt, up


def _train_step(loss, opt, up, batch):
    out = loss(batch)
    out["loss"].backward()
    opt.step()
    opt.zero_grad()
    up.step(out)
    return out


def _target_flat(loss):
    return dict(loss.target_value_network_params.flatten_keys(".").items())


def test_initial_members_are_pruned_copies_and_target_is_member_0():
    actor, loss, _, _ = _setup()
    assert actor.sparsity().tolist() == [0.0, 0.25, 0.5]
    for name, p in _target_flat(loss).items():
        torch.testing.assert_close(p, actor.flat_params()[name][0])


def test_selection_copy_steady_prune_and_reset_closed_form():
    actor, loss, opt, up = _setup()
    batch = make_batch(8, 3, 2)
    _train_step(loss, opt, up, batch)  # fills optimizer state
    assert len(opt.state) > 0
    winner_w = {n: p[2].detach().clone() for n, p in actor.flat_params().items()}
    winner_m = {n: m[2].clone() for n, m in actor.flat_masks().items()}
    up.step(torch.tensor([5.0, 4.0, 1.0]))  # member 2 (sparsity 0.5) wins: sums 5+l0, 4+l1, 1+l2
    # The step() above re-applied masks; the winner's weights are those at selection time.
    h = up.history[-1]
    assert h["selected"] == 2 and h["step"] == 2 and up.loss_sums.tolist() == [0, 0, 0]
    # target == winner (weights and mask)
    for n, p in _target_flat(loss).items():
        torch.testing.assert_close(p, winner_w[n])
    for n, m in loss.target_masks.flatten_keys(".").items():
        assert torch.equal(m, winner_m[n])
    # steady member 0 == winner, same sparsity; pruned members exactly at s_j + v(1 - s_j)
    assert actor.sparsity().tolist() == [0.5, 0.5 + 0.25 * 0.5, 0.5 + 0.5 * 0.5]
    for n in winner_w:
        torch.testing.assert_close(actor.flat_params()[n][0], winner_w[n])
    for k in (1, 2):
        kept, dropped = [], []
        for n, m in winner_m.items():
            mk = actor.flat_masks()[n][k]
            assert not (mk & ~m).any()  # subset of the winner's mask
            w = winner_w[n].abs()
            kept.append(w[mk])
            dropped.append(w[m & ~mk])
            torch.testing.assert_close(actor.flat_params()[n][k], winner_w[n] * mk)
        assert torch.cat(kept).min() >= torch.cat(dropped).max()
    assert actor.selected == 0
    assert len(opt.state) == 0  # optimizer state reset


def test_ties_prefer_less_sparse_then_lower_index():
    actor, _, _, up = _setup(k=3)
    up.step(torch.tensor([1.0, 1.0, 1.0]))
    up.step(torch.tensor([1.0, 1.0, 1.0]))
    assert up.history[-1]["selected"] == 0
    actor2, _, _, up2 = _setup(k=3, max_speed=0.0)  # all equally sparse
    up2.step(torch.tensor([2.0, 1.0, 1.0]))
    up2.step(torch.tensor([2.0, 1.0, 1.0]))
    assert up2.history[-1]["selected"] == 1


def test_nan_member_never_wins_and_all_nan_raises():
    _, _, _, up = _setup(k=3)
    up.step(torch.tensor([float("nan"), 3.0, 2.0]))
    up.step(torch.tensor([1.0, 1.0, 1.0]))
    assert up.history[-1]["selected"] == 2
    up.step(torch.tensor([float("nan")] * 3))
    with pytest.raises(FloatingPointError, match="NaN"):
        up.step(torch.tensor([float("nan")] * 3))


@pytest.mark.parametrize("period", [1, 3, 5])
def test_exact_period(period):
    _, _, _, up = _setup(period=period)
    for _ in range(3 * period):
        up.step(torch.tensor([1.0, 2.0, 3.0]))
    assert [h["step"] for h in up.history] == [period, 2 * period, 3 * period]


def test_k1_no_pruning_matches_dqn_with_hard_update():
    period = 3
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
    actor = MaskedEnsembleQValueActor(net, 1, action_spec=OneHot(2))
    ours = EauDeQNLoss(actor)
    ours.make_value_estimator(gamma=0.9)
    opt_a = torch.optim.Adam(ours.parameters(), lr=1e-2)
    up = TargetSelectionUpdater(
        ours, opt_a, period=period, speed_policy=LinearSpeedGrid(0.0), reset_optimizer=False
    )
    ref = DQNLoss(QValueActor(copy.deepcopy(net), spec=OneHot(2), in_keys=["observation"]))
    ref.make_value_estimator(gamma=0.9)
    opt_b = torch.optim.Adam(ref.parameters(), lr=1e-2)
    hard = HardUpdate(ref, value_network_update_interval=period - 1)  # copies every interval+1
    for i in range(10):
        batch = make_batch(8, 3, 2, seed=i)
        a = _train_step(ours, opt_a, up, batch.clone())
        b = ref(batch.clone())
        b["loss"].backward()
        opt_b.step()
        opt_b.zero_grad()
        hard.step()
        torch.testing.assert_close(a["loss"], b["loss"])
        ref_target = dict(ref.target_value_network_params.flatten_keys(".").items())
        for name, p in _target_flat(ours).items():
            torch.testing.assert_close(p, ref_target[f"module.0.module.{name}"])
    assert len(up.history) == 10 // period


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(st.sampled_from(["train", "update", "loss"]), min_size=1, max_size=25),
    k=st.integers(1, 4),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 1000),
)
def test_property_pruned_weights_stay_zero_and_sparsity_never_drops(ops, k, scope, seed):
    torch.manual_seed(seed)
    actor, loss, opt, up = _setup(k=k, max_speed=0.3, period=10_000, scope=scope)
    created = actor.sparsity().clone()
    g = torch.Generator().manual_seed(seed)
    for i, op in enumerate(ops):
        if op == "train":
            _train_step(loss, opt, up, make_batch(4, 3, 2, seed=seed + i))
        elif op == "loss":
            up.step(torch.rand(k, generator=g))
        else:
            winner_sparsity = float(actor.sparsity()[up.select()])
            up.update_target()
            created = actor.sparsity().clone()
            assert (created >= winner_sparsity - 1e-12).all()
        for name, m in actor.flat_masks().items():
            assert (actor.flat_params()[name][~m] == 0).all()
        for name, m in loss.target_masks.flatten_keys(".").items():
            assert (_target_flat(loss)[name][~m] == 0).all()
        assert (actor.sparsity() >= created - 1e-12).all()


def test_state_dict_round_trip_mid_period():
    torch.manual_seed(0)
    a1, l1, o1, u1 = _setup(period=4)
    for i in range(6):  # 1.5 periods
        _train_step(l1, o1, u1, make_batch(8, 3, 2, seed=i))
    # deepcopy, as a checkpoint on disk would: Optimizer.load_state_dict keeps
    # same-device tensors by reference.
    state = copy.deepcopy({"loss": l1.state_dict(), "opt": o1.state_dict(), "up": u1.state_dict()})
    a2, l2, o2, u2 = _setup(period=4)
    l2.load_state_dict(state["loss"])
    o2.load_state_dict(state["opt"])
    u2.load_state_dict(state["up"])
    assert u2.steps_in_period == 2 and u2.num_steps == 6 and u2.history == u1.history
    for i in range(6, 12):
        b = make_batch(8, 3, 2, seed=i)
        x, y = _train_step(l1, o1, u1, b.clone()), _train_step(l2, o2, u2, b.clone())
        torch.testing.assert_close(x["loss_per_member"], y["loss_per_member"], rtol=0, atol=0)
    assert u1.history == u2.history
    for (n, p), (_, q) in zip(l1.state_dict().items(), l2.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_noisy_policy_state_round_trips_through_updater():
    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(16,)), 4, action_spec=OneHot(2))
    loss = EauDeQNLoss(actor)
    up = TargetSelectionUpdater(
        loss, period=2, speed_policy=NoisySpeedPolicy(0.2, seed=3), reset_optimizer=False
    )
    state = up.state_dict()
    speeds = up.speed_policy.speeds(4, winner=1)
    up.load_state_dict(state)
    assert up.speed_policy.speeds(4, winner=1) == speeds


def test_bad_inputs_name_the_argument():
    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(4,)), 2, action_spec=OneHot(2))
    loss = EauDeQNLoss(actor)
    other = torch.optim.Adam(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="optimizer does not hold the members' parameters"):
        TargetSelectionUpdater(loss, other)
    with pytest.raises(ValueError, match="optimizer is required"):
        TargetSelectionUpdater(loss, None)
    with pytest.raises(ValueError, match="period"):
        TargetSelectionUpdater(loss, torch.optim.Adam(loss.parameters()), period=0)
    with pytest.raises(ValueError, match="scope"):
        TargetSelectionUpdater(loss, torch.optim.Adam(loss.parameters()), scope="row")
    with pytest.raises(ValueError, match="structure must be 'weights' or 'filters'"):
        TargetSelectionUpdater(loss, torch.optim.Adam(loss.parameters()), structure="rows")
    with pytest.raises(TypeError, match="loss_module"):
        TargetSelectionUpdater(DQNLoss(nn.Linear(3, 2), action_space="one-hot"))
    up = TargetSelectionUpdater(loss, torch.optim.Adam(loss.parameters()))
    with pytest.raises(ValueError, match="losses must have shape"):
        up.step(torch.ones(3))
    with pytest.raises(ValueError, match="PolyPruneUpdater trains one network"):
        PolyPruneUpdater(loss)


def test_polyprune_follows_schedule_and_hard_updates():
    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(16,)), 1, action_spec=OneHot(2))
    loss = EauDeQNLoss(actor)
    up = PolyPruneUpdater(loss, period=4, final_sparsity=0.95, start=2, end=10, prune_every=4)
    seen = []
    for _ in range(12):
        up.step()
        seen.append(float(actor.sparsity()[0]))
    expected = {t: round(0.95 * (1 - (1 - (t - 2) / 8) ** 3) * 80) / 80 for t in (2, 6, 10)}
    assert seen[1] == pytest.approx(expected[2]) and seen[5] == pytest.approx(expected[6])
    assert seen[9] == pytest.approx(expected[10]) and seen[11] == pytest.approx(76 / 80)
    assert seen == sorted(seen)
    events = [(h["step"], h["event"]) for h in up.history]
    assert (4, "target") in events and (8, "target") in events and (12, "target") in events
    for name, m in loss.target_masks.flatten_keys(".").items():
        assert torch.equal(m, actor.flat_masks()[name][0])


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_filter_structure_prunes_whole_conv_filters_in_every_member(scope):
    """structure='filters' through the updaters: each member's and the target's conv
    masks are whole filters after selections and rebuilds (EauDeQN) and after the
    schedule's mask updates (PolyPrune); the Linear layers stay unstructured."""
    from torchrl_eaudeqn.modules import nature_cnn

    def whole_filters(masks):
        for name, m in masks.items():
            if m.dim() >= 4:  # [K, out, in, kh, kw]
                rows = m.flatten(2)
                assert bool((rows.all(-1) | ~rows.any(-1)).all()), name

    torch.manual_seed(0)
    actor = MaskedEnsembleQValueActor(nature_cnn(4, "small"), 3, action_spec=OneHot(4))
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=0.9)
    opt = torch.optim.Adam(loss.parameters())
    up = TargetSelectionUpdater(
        loss, opt, period=2, speed_policy=LinearSpeedGrid(0.6), scope=scope, structure="filters"
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        up.step(torch.rand(3, generator=g))
        up.step(torch.rand(3, generator=g))
        masks = actor.flat_masks()
        whole_filters(masks)
        whole_filters({n: m.unsqueeze(0) for n, m in loss.target_masks.flatten_keys(".").items()})
        convs = [n for n, m in masks.items() if m.dim() >= 4]
        assert any(bool((~m[2].flatten(1).any(1)).any()) for n, m in masks.items() if n in convs)
    assert actor.sparsity()[2] > actor.sparsity()[0]

    actor1 = MaskedEnsembleQValueActor(nature_cnn(4, "small"), 1, action_spec=OneHot(4))
    poly = PolyPruneUpdater(
        EauDeQNLoss(actor1), period=4, final_sparsity=0.9, start=0, end=4, prune_every=2,
        scope=scope, structure="filters",
    )  # fmt: skip
    for _ in range(4):
        poly.step()
    whole_filters(actor1.flat_masks())
    assert float(actor1.sparsity()[0]) >= 0.9
