import copy

import pytest
import torch
from conftest import make_batch
from torch import nn
from torchrl.data import Categorical, OneHot
from torchrl.modules import QValueActor
from torchrl.objectives import DQNLoss, ValueEstimators

from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor


def _ensemble(k=2, spec=None):
    net = nn.Linear(3, 4)
    actor = MaskedEnsembleQValueActor(net, k, action_spec=spec or OneHot(4))
    with torch.no_grad():
        for m in range(k):  # members differ
            actor.params["weight"][m].add_(0.3 * m)
    return net, actor


@pytest.mark.parametrize("loss_function", ["l2", "smooth_l1"])
def test_closed_form_target_and_member_losses(loss_function):
    net, actor = _ensemble(k=3)
    loss = EauDeQNLoss(actor, loss_function=loss_function)
    loss.make_value_estimator(gamma=0.9)
    with torch.no_grad():
        loss.target_value_network_params["weight"].copy_(torch.randn(4, 3))
    batch = make_batch(6, 3, 4)
    out = loss(batch)

    wt, bt = loss.target_value_network_params["weight"], loss.target_value_network_params["bias"]
    next_q = batch["next", "observation"] @ wt.T + bt
    not_term = 1.0 - batch["next", "terminated"].float().squeeze(-1)
    y = batch["next", "reward"].squeeze(-1) + 0.9 * not_term * next_q.max(-1).values
    a = batch["action"].argmax(-1)
    expected = []
    for k in range(3):
        q = batch["observation"] @ actor.params["weight"][k].T + actor.params["bias"][k]
        pred = q.gather(-1, a[:, None]).squeeze(-1)
        diff = pred - y
        if loss_function == "l2":
            expected.append((diff**2).mean())
        else:
            expected.append(torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5).mean())
    expected = torch.stack(expected)
    torch.testing.assert_close(out["loss_per_member"], expected.detach())
    torch.testing.assert_close(out["loss"], expected.sum())
    assert not out["loss_per_member"].requires_grad and out["loss"].requires_grad
    # td_error in place: selected member's squared TD error.
    q0 = batch["observation"] @ actor.params["weight"][0].T + actor.params["bias"][0]
    td0 = (q0.gather(-1, a[:, None]).squeeze(-1) - y) ** 2
    torch.testing.assert_close(batch["td_error"].squeeze(-1), td0.detach())


def test_truncated_bootstraps_terminated_does_not():
    _, actor = _ensemble(k=1)
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=0.5)
    batch = make_batch(4, 3, 4)
    batch["next", "terminated"] = torch.tensor([[True], [False], [False], [False]])
    batch["next", "truncated"] = torch.tensor([[False], [True], [False], [False]])
    batch["next", "done"] = batch["next", "terminated"] | batch["next", "truncated"]
    target = loss.value_estimator.value_estimate(
        batch.clone(False), next_value=loss.target_values(batch["next", "observation"])
    ).squeeze(-1)
    r = batch["next", "reward"].squeeze(-1)
    assert target[0] == r[0]
    assert target[1] != r[1]


def test_member_gradient_depends_only_on_its_own_loss():
    _, actor = _ensemble(k=3)
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=0.99)
    batch = make_batch(8, 3, 4)
    loss(batch)["loss"].backward()
    g_all = actor.params["weight"].grad.clone()
    for k in range(3):
        actor.zero_grad()
        values = actor.ensemble_values(batch["observation"])
        target = loss.value_estimator.value_estimate(
            batch.clone(False), next_value=loss.target_values(batch["next", "observation"])
        ).squeeze(-1)
        pred = loss._chosen(values, batch["action"])
        ((pred[:, k] - target) ** 2).mean().backward()
        torch.testing.assert_close(actor.params["weight"].grad[k], g_all[k])


@pytest.mark.parametrize("spec", [OneHot(4), Categorical(4)])
def test_k1_equals_torchrl_dqn_loss_values_and_gradients(spec):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 4))
    actor = MaskedEnsembleQValueActor(net, 1, action_spec=spec)
    ours = EauDeQNLoss(actor)
    ours.make_value_estimator(gamma=0.97)
    ref_actor = QValueActor(copy.deepcopy(net), spec=spec, in_keys=["observation"])
    ref = DQNLoss(ref_actor, delay_value=True)
    ref.make_value_estimator(gamma=0.97)
    batch = make_batch(16, 3, 4, one_hot=isinstance(spec, OneHot))
    a, b = ours(batch.clone()), ref(batch.clone())
    torch.testing.assert_close(a["loss"], b["loss"])
    a["loss"].backward()
    b["loss"].backward()
    ref_params = dict(ref.value_network_params.flatten_keys(".").items())
    for name, p in actor.flat_params().items():
        ref_name = f"module.0.module.{name}"
        torch.testing.assert_close(p.grad[0], ref_params[ref_name].grad, msg=name)


def test_set_keys_and_value_estimators():
    _, actor = _ensemble(k=2)
    loss = EauDeQNLoss(actor)
    loss.set_keys(reward="r2")
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.95)
    assert ("next", "r2") in loss.in_keys
    batch = make_batch(4, 3, 4)
    batch["next", "r2"] = batch["next"].pop("reward")
    out = loss(batch)
    assert out["loss_per_member"].shape == (2,)
    with pytest.raises(NotImplementedError):
        loss.make_value_estimator(ValueEstimators.GAE)


def test_prioritized_weights_weight_the_mean():
    _, actor = _ensemble(k=2)
    loss = EauDeQNLoss(actor)
    batch = make_batch(4, 3, 4)
    plain = loss(batch.clone())["loss_per_member"]
    weighted = batch.clone()
    weighted["priority_weight"] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(loss(weighted)["loss_per_member"], plain)
    weighted["priority_weight"] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    single = loss(weighted[:1].clone())["loss_per_member"]
    torch.testing.assert_close(loss(weighted)["loss_per_member"], single)


def test_bad_inputs():
    with pytest.raises(TypeError, match="value_network must be a MaskedEnsembleQValueActor"):
        EauDeQNLoss(nn.Linear(3, 4))
    _, actor = _ensemble()
    with pytest.raises(ValueError, match="loss_function"):
        EauDeQNLoss(actor, loss_function="huber2")
    with pytest.raises(ValueError, match="reduction"):
        EauDeQNLoss(actor, reduction="max")
