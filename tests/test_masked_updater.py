"""The one masked-updater base: DQN and SAC updaters share checks, options, sums and history."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, OneHot

from torchrl_eaudeqn import (
    EauDeQNLoss,
    EauDeSACLoss,
    LinearSpeedGrid,
    MaskedEnsembleQValueActor,
    MaskedEnsembleTanhGaussianActor,
    MaskedEnsembleTwinQ,
    MaskedUpdater,
    PolyPruneSACUpdater,
    PolyPruneUpdater,
    SACTargetSelectionUpdater,
    TargetSelectionUpdater,
    UpdateEvent,
    mlp,
)
from torchrl_eaudeqn.console import count_selections

K = 3


def _dqn_loss(k=K):
    torch.manual_seed(0)
    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(16,)), k, action_spec=OneHot(2))
    return EauDeQNLoss(actor)


def _sac_loss(k=K):
    torch.manual_seed(0)
    actor = MaskedEnsembleTanhGaussianActor(3, Bounded(-1.0, 1.0, shape=(2,)), k, hidden=(8,))
    return EauDeSACLoss(actor, MaskedEnsembleTwinQ(3, 2, k, hidden=(8,)))


def _selecting(kind, optimizer="one", **kw):
    loss = _dqn_loss() if kind == "dqn" else _sac_loss()
    opt = torch.optim.Adam(loss.parameters())
    opt = {"one": opt, "list": [opt], "none": None}[optimizer]
    cls = TargetSelectionUpdater if kind == "dqn" else SACTargetSelectionUpdater
    kw.setdefault("speed_policy", LinearSpeedGrid(0.5))
    return cls(loss, opt, **kw)


def _losses(kind, values):
    v = torch.tensor(values)
    if kind == "dqn":
        return v
    return TensorDict(loss_actor_per_member=v.flip(0), loss_qvalue_per_member=v)


@pytest.mark.parametrize("kind", ["dqn", "sac"])
def test_both_families_are_masked_updaters_with_the_same_options(kind):
    up = _selecting(kind, optimizer="list", period=2, structure="filters")
    assert isinstance(up, MaskedUpdater)
    assert up.structure == "filters" and up.period == 2 and len(up.optimizers) == 1
    assert up.optimizer is up.optimizers[0]
    assert up.roles == (("value",) if kind == "dqn" else ("critic", "actor"))


@pytest.mark.parametrize("kind", ["dqn", "sac"])
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"period": 0}, ValueError, "period must be"),
        ({"scope": "row"}, ValueError, "scope must be 'global' or 'layer', got 'row'"),
        ({"structure": "rows"}, ValueError, "structure must be 'weights' or 'filters'"),
        ({"speed_policy": 0.1}, TypeError, "speed_policy must be a PruningSpeedPolicy"),
    ],
)
def test_both_families_refuse_the_same_bad_options_alike(kind, kwargs, error, message):
    with pytest.raises(error, match=message):
        _selecting(kind, **kwargs)


@pytest.mark.parametrize("kind", ["dqn", "sac"])
def test_an_optimizer_is_required_to_reset_and_must_hold_the_members(kind):
    with pytest.raises(ValueError, match="optimizer is required"):
        _selecting(kind, optimizer="none")
    loss = _dqn_loss() if kind == "dqn" else _sac_loss()
    stranger = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    cls = TargetSelectionUpdater if kind == "dqn" else SACTargetSelectionUpdater
    with pytest.raises(ValueError, match="optimizer does not hold the"):
        cls(loss, stranger)


@pytest.mark.parametrize("kind", ["dqn", "sac"])
def test_loss_sums_stay_float64_on_the_losses_device_until_the_period_ends(kind):
    up = _selecting(kind, period=3)
    up.step(_losses(kind, [1.0, 2.0, 3.0]))
    up.step(_losses(kind, [0.5, 0.25, 0.125]))
    for role in up.roles:
        sums = up._sums[role]
        assert sums._device is not None and sums._device.dtype == torch.float64
    want = {"value": [1.5, 2.25, 3.125], "critic": [1.5, 2.25, 3.125]}
    want["actor"] = want["critic"][::-1]
    for role in up.roles:
        assert up._sums[role].value().tolist() == want[role]
    # The reading is a copy: changing it leaves the sums alone.
    up._sums[up.roles[0]].value().zero_()
    assert up._sums[up.roles[0]].value().tolist() == want[up.roles[0]]


@pytest.mark.parametrize("kind", ["dqn", "sac"])
def test_one_history_entry_type_with_the_same_keys_per_role(kind):
    up = _selecting(kind, period=2)
    for _ in range(2):
        up.step(_losses(kind, [3.0, 1.0, 2.0]))
    (entry,) = up.history
    assert type(entry) is UpdateEvent and entry.event == "selection" and entry.step == 2
    per_role = {"selected", "selected_sparsity", "loss_sums", "sparsity_before",
                "speeds_before", "sparsity"}  # fmt: skip
    prefixes = {"value": ""} if kind == "dqn" else {"critic": "critic_", "actor": "actor_"}
    assert set(entry) == {"step", "event"} | {p + k for p in prefixes.values() for k in per_role}
    assert set(entry.roles) == set(up.roles)
    winners = {"value": 1, "critic": 1, "actor": 1}  # the actor losses are [2, 1, 3]
    for role in up.roles:
        assert entry.selected(role) == winners[role]
        assert entry.get_role(role, "loss_sums")[winners[role]] == 2.0
        assert entry.pruned_win(role) is True  # the winners had speed 0.25 / 0.5
        assert entry.get_role(role, "sparsity")[0] == entry.get_role(role, "selected_sparsity")
    assert up.last_selection() is entry
    assert up.selected_members() == {r: 0 for r in up.roles}  # member 0 is the winner's copy
    # Checkpoints hold plain dicts; restoring gives the entry type back.
    state = up.state_dict()
    assert type(state["history"][0]) is dict
    again = _selecting(kind, period=2)
    again.load_state_dict(state)
    assert type(again.history[0]) is UpdateEvent and again.history == up.history


def test_entries_of_older_versions_read_as_selections():
    old_dqn = {"step": 4, "selected": 1, "speeds_before": [0.0, 0.0, 0.2], "sparsity": [0.1]}
    speeds = [0.0, 0.1, 0.2]
    old_sac = {"step": 4, "critic_selected": 2, "actor_selected": 0,
               "critic_speeds_before": speeds, "actor_speeds_before": speeds}  # fmt: skip
    dqn, sac = UpdateEvent(old_dqn), UpdateEvent(old_sac)
    assert dqn.event == sac.event == "selection" and dqn.updates_target
    assert dqn.pruned_win() is False and dqn.roles == ("value",)
    assert sac.roles == ("actor", "critic") and sac.selected("value") is None
    assert sac.pruned_win("critic") is True and sac.pruned_win("actor") is False
    prune = UpdateEvent(step=8, event="prune", sparsity=[0.5])
    assert not prune.updates_target and prune.roles == () and prune.pruned_win() is None


def test_baselines_share_the_base_and_their_events_are_typed():
    dqn = PolyPruneUpdater(_dqn_loss(1), period=2, final_sparsity=0.5, start=0, end=4,
                           prune_every=2)  # fmt: skip
    sac = PolyPruneSACUpdater(_sac_loss(1), final_sparsity=0.5, start=0, end=4, prune_every=2,
                              structure="filters")  # fmt: skip
    for up in (dqn, sac):
        assert isinstance(up, MaskedUpdater)
        for _ in range(4):
            up.step()
        assert all(type(h) is UpdateEvent for h in up.history)
    assert [h.event for h in dqn.history] == ["prune", "target", "prune", "target"]
    assert [h.event for h in sac.history] == ["prune", "prune"]
    assert sac.last_selection() is None and dqn.last_selection().selected() == 0
    (counts,) = count_selections(dqn.history, dqn.history_total)
    assert (counts.name, counts.total, counts.pruned_wins) == ("target updates", 2, None)
