import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, OneHot
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import SACLoss

from torchrl_eaudeqn.sac import (
    EauDeSACLoss,
    MaskedEnsembleTanhGaussianActor,
    MaskedEnsembleTwinQ,
    PolyPruneSACUpdater,
    SACTargetSelectionUpdater,
)
from torchrl_eaudeqn.sparsity import LinearSpeedGrid, NoisySpeedPolicy

OBS, ACT = 3, 2


def _spec(low=-2.0, high=2.0):
    return Bounded(low, high, shape=(ACT,))


def _batch(b=2, seed=0, terminated=(False, True)):
    g = torch.Generator().manual_seed(seed)
    term = torch.tensor(list(terminated) * (b // len(terminated)))[:, None]
    return TensorDict(
        {
            "observation": torch.randn(b, OBS, generator=g),
            "action": torch.rand(b, ACT, generator=g) * 4 - 2,
            "next": {
                "observation": torch.randn(b, OBS, generator=g),
                "reward": torch.randn(b, 1, generator=g),
                "terminated": term,
                "truncated": torch.zeros(b, 1, dtype=torch.bool),
                "done": term.clone(),
            },
        },
        batch_size=[b],
    )


def _build(k=2, hidden=(4,), use_vmap=None, members_differ=True, **loss_kwargs):
    actor = MaskedEnsembleTanhGaussianActor(OBS, _spec(), k, hidden=hidden, use_vmap=use_vmap)
    critic = MaskedEnsembleTwinQ(OBS, ACT, k, hidden=hidden, use_vmap=use_vmap)
    if members_differ:
        with torch.no_grad():
            for ens in (actor, critic):
                for _, p in ens.params.items(True, True):
                    p.add_(0.1 * torch.arange(k).view(-1, *[1] * (p.ndim - 1)))
    loss = EauDeSACLoss(actor, critic, **loss_kwargs)
    loss.make_value_estimator(gamma=0.9)
    return actor, critic, loss


# ---------------------------------------------------------------- by hand
def _mlp(p, x):
    h = torch.relu(x @ p["0", "weight"].T + p["0", "bias"])
    return h @ p["2", "weight"].T + p["2", "bias"]


def _loc_scale(p, obs):
    out = _mlp(p["0"], obs)
    loc, raw = out.chunk(2, -1)
    bias = math.log(math.expm1(1.0 - 0.01))  # biased_softplus_1.0, min 0.01
    return loc, (F.softplus(raw + bias) + 0.01).clamp_min(0.1)


def _tanh_sample(loc, scale, eps, low=-2.0, high=2.0):
    pre = loc + scale * eps
    a = (high + low) / 2 + (high - low) / 2 * torch.tanh(pre)
    normal = -0.5 * eps**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    jac = torch.log((high - low) / 2 * (1 - torch.tanh(pre) ** 2))
    return a, (normal - jac).sum(-1)


def _twin_q(p, obs, act):
    x = torch.cat([obs, act], -1)
    return torch.stack([_mlp(p["q1"], x)[..., 0], _mlp(p["q2"], x)[..., 0]], -1)


def test_closed_form_member_losses():
    k = 2
    actor, critic, loss = _build(k=k, alpha_init=0.5)
    actor.selected, critic.selected = 1, 1  # selected members differ from member 0
    with torch.no_grad():
        loss.target_qvalue_network_params.apply_(lambda t: t.mul_(0.7))
    batch = _batch()
    torch.manual_seed(3)
    eps_next = torch.randn(2, ACT)
    eps = torch.randn(2, k, ACT)
    torch.manual_seed(3)
    out = loss(batch)

    alpha, gamma = 0.5, 0.9
    pa, pc, pt = actor.params.data, critic.params.data, loss.target_qvalue_network_params.data
    loc, scale = _loc_scale(pa[1], batch["next", "observation"])
    a_next, lp_next = _tanh_sample(loc, scale, eps_next)
    v_next = _twin_q(pt, batch["next", "observation"], a_next).min(-1).values - alpha * lp_next
    not_term = 1.0 - batch["next", "terminated"].float().squeeze(-1)
    y = batch["next", "reward"].squeeze(-1) + gamma * not_term * v_next

    critic_pm, actor_pm = [], []
    for m in range(k):
        q = _twin_q(pc[m], batch["observation"], batch["action"])
        critic_pm.append(((q - y[:, None]) ** 2).sum(-1).mean())
        loc, scale = _loc_scale(pa[m], batch["observation"])
        a, lp = _tanh_sample(loc, scale, eps[:, m])
        q_sel = _twin_q(pc[1], batch["observation"], a).min(-1).values
        actor_pm.append((alpha * lp - q_sel).mean())
        if m == 1:
            lp_sel = lp
    critic_pm, actor_pm = torch.stack(critic_pm), torch.stack(actor_pm)
    torch.testing.assert_close(out["loss_qvalue_per_member"], critic_pm)
    torch.testing.assert_close(out["loss_actor_per_member"], actor_pm)
    torch.testing.assert_close(out["loss_qvalue"], critic_pm.sum())
    torch.testing.assert_close(out["loss_actor"], actor_pm.sum())
    expected_alpha = (-math.log(0.5) * (lp_sel + (-ACT))).mean()
    torch.testing.assert_close(out["loss_alpha"], expected_alpha)
    torch.testing.assert_close(out["entropy"], -lp_sel.mean())
    assert not out["loss_qvalue_per_member"].requires_grad
    assert not out["loss_actor_per_member"].requires_grad
    q_sel = _twin_q(pc[1], batch["observation"], batch["action"])
    torch.testing.assert_close(batch["td_error"], (q_sel - y[:, None]).abs().max(-1).values)


def test_gradients_stay_in_their_losses():
    actor, critic, loss = _build(k=2)
    batch = _batch(4)
    out = loss(batch)
    out["loss_actor"].backward()
    assert all(p.grad is None for p in critic.parameters())
    assert loss.log_alpha.grad is None
    out = loss(batch)
    grads = torch.autograd.grad(
        out["loss_qvalue"], [loss.log_alpha, *actor.parameters()], allow_unused=True
    )
    assert all(g is None or g.abs().sum() == 0 for g in grads)

    # Member 0's actor gradient does not depend on member 1's weights.
    def grad_member0():
        torch.manual_seed(5)
        out = loss(batch)
        return torch.autograd.grad(out["loss_actor"], actor.params["0", "0", "weight"])[0]

    g = grad_member0()
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0
    with torch.no_grad():
        actor.params["0", "2", "weight"][1].mul_(3.0)
        critic.params["q1", "0", "weight"][1].mul_(3.0)  # a non-selected critic member
    torch.testing.assert_close(grad_member0()[0], g[0])


def test_register_on_trainer_restricts_loss_keys():
    actor, critic, loss = _build(k=2)
    up = SACTargetSelectionUpdater(loss, reset_optimizer=False)

    class Stepper:
        loss_components = None

    class FakeTrainer:
        clip_grad_norm, clip_norm = False, None

        def __init__(self):
            self._modules = {"optim": Stepper()}
            self.ops, self.registered = [], {}

        def register_op(self, name, op):
            self.ops.append((name, op))

        def register_module(self, name, module):
            self.registered[name] = module

    trainer = FakeTrainer()
    up.register(trainer)
    assert set(trainer._modules["optim"].loss_components) == {
        "loss_actor",
        "loss_qvalue",
        "loss_alpha",
    }
    assert trainer.ops[0][0] == "post_optim" and trainer.registered["target_net_updater"] is up
    trainer.clip_grad_norm, trainer.clip_norm = True, 1.0
    with pytest.raises(ValueError, match="jointly"):
        up.register(trainer)


# ------------------------------------------------------------ vs SACLoss
@pytest.mark.parametrize("loss_function", ["l2", "smooth_l1"])
@pytest.mark.parametrize("weighted", [False, True])
def test_k1_equals_torchrl_sacloss(loss_function, weighted):
    actor, critic, loss = _build(k=1, hidden=(8,), loss_function=loss_function)
    ref = SACLoss(
        actor.member_actor(0),
        critic.member_qvalue_modules(0),
        loss_function=loss_function,
        action_spec=_spec(),
    )
    ref.make_value_estimator(gamma=0.9)
    batch = _batch(6, terminated=(False, True, False))
    if weighted:  # prioritized replay importance weights
        batch["priority_weight"] = torch.tensor([0.5, 1.0, 2.0, 0.1, 1.0, 3.0])
    b_ref = batch.clone()
    torch.manual_seed(7)
    out_ref = ref(b_ref)
    torch.manual_seed(7)
    out = loss(batch)
    for key in ("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"):
        torch.testing.assert_close(out[key], out_ref[key], msg=key)
    torch.testing.assert_close(batch["td_error"], b_ref["td_error"])
    # and the gradients on the actor and critic weights
    torch.manual_seed(7)
    sum(ref(batch.clone())[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha")).backward()
    torch.manual_seed(7)
    sum(loss(batch.clone())[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha")).backward()
    torch.testing.assert_close(
        actor.params["0", "0", "weight"].grad[0],
        ref.actor_network_params["module", "0", "module", "0", "0", "weight"].grad,
    )
    torch.testing.assert_close(
        critic.params["q1", "0", "weight"].grad[0],
        ref.qvalue_network_params["module", "net", "0", "weight"].grad[0],
    )
    torch.testing.assert_close(loss.log_alpha.grad, ref.log_alpha.grad)


# ------------------------------------------------------------ vmap / loop
def test_vmap_and_loop_agree():
    outs, grads = [], []
    for use_vmap in (True, False):
        torch.manual_seed(0)
        actor, critic, loss = _build(k=3, hidden=(8,), use_vmap=use_vmap)
        torch.manual_seed(1)
        out = loss(_batch(4))
        sum(out[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha")).backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in loss.parameters()])
    for key in ("loss_actor_per_member", "loss_qvalue_per_member", "loss_alpha"):
        torch.testing.assert_close(outs[0][key], outs[1][key])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- updaters
def test_selection_copies_prunes_and_polyak():
    actor, critic, loss = _build(k=3, hidden=(16,))
    opt = torch.optim.Adam(loss.parameters())
    up = SACTargetSelectionUpdater(loss, opt, period=2, tau=0.5, speed_policy=LinearSpeedGrid(0.5))
    assert [round(float(s), 3) for s in critic.sparsity()] == [0.0, 0.25, 0.5]
    target0 = loss.target_qvalue_network_params.data.clone()
    member0 = critic.params[0].data.clone()
    losses = TensorDict(
        loss_actor_per_member=torch.tensor([3.0, 1.0, 2.0]),
        loss_qvalue_per_member=torch.tensor([5.0, 4.0, 1.0]),
    )
    up.step(losses)
    expected = target0.apply(lambda t, m: 0.5 * t + 0.5 * m, member0)
    torch.testing.assert_close(loss.target_qvalue_network_params.data, expected)
    before_c = critic.params[2].data.clone()
    up.step(losses)
    h = up.history[-1]
    assert (h["critic_selected"], h["actor_selected"]) == (2, 1)
    torch.testing.assert_close(critic.params[0].data, before_c)
    s_c, s_a = 0.5, 0.25
    assert [round(x, 4) for x in h["critic_sparsity"]] == [
        round(s_c + v * (1 - s_c), 4) for v in (0.0, 0.25, 0.5)
    ]
    assert [round(x, 4) for x in h["actor_sparsity"]] == [
        round(s_a + v * (1 - s_a), 4) for v in (0.0, 0.25, 0.5)
    ]
    assert critic.selected == 0 and actor.selected == 0
    assert len(opt.state) == 0  # members' state reset, log_alpha never stepped


def test_hard_copy_on_selection():
    _, critic, loss = _build(k=2, hidden=(8,))
    up = SACTargetSelectionUpdater(
        loss, torch.optim.Adam(loss.parameters()), period=1, hard_copy_on_selection=True
    )
    up.step(TensorDict(loss_actor_per_member=torch.ones(2), loss_qvalue_per_member=torch.ones(2)))
    torch.testing.assert_close(loss.target_qvalue_network_params.data, critic.params[0].data)


def test_dense_sac_k1_keeps_weights_dense():
    actor, critic, loss = _build(k=1, hidden=(8,))
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    up = SACTargetSelectionUpdater(loss, opt, period=2, reset_optimizer=False)
    for i in range(5):
        out = loss(_batch(4, seed=i))
        opt.zero_grad()
        sum(out[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha")).backward()
        opt.step()
        up.step()
    assert float(actor.sparsity()[0]) == 0.0 and float(critic.sparsity()[0]) == 0.0
    assert len(up.history) == 2 and len(opt.state) > 0


def _train_steps(loss, opt, up, seeds):
    for s in seeds:
        torch.manual_seed(1000 + s)
        out = loss(_batch(4, seed=s))
        opt.zero_grad()
        sum(out[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha")).backward()
        opt.step()
        up.step(out)


def _check_masks(ens):
    for key, mask in ens.masks.items(True, True):
        assert (ens.params.get(key).data[~mask] == 0).all()


@settings(max_examples=8, deadline=None)
@given(
    steps=st.integers(1, 9),
    period=st.integers(1, 4),
    speed=st.floats(0.05, 0.6),
    scope=st.sampled_from(["global", "layer"]),
    noisy=st.booleans(),
)
def test_masks_hold_property(steps, period, speed, scope, noisy):
    torch.manual_seed(0)
    actor, critic, loss = _build(k=3, hidden=(8,))
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    pol = NoisySpeedPolicy(speed, 2.0, seed=1) if noisy else LinearSpeedGrid(speed)
    up = SACTargetSelectionUpdater(loss, opt, period=period, speed_policy=pol, scope=scope)
    for i in range(steps):
        _train_steps(loss, opt, up, [i])
        _check_masks(actor)
        _check_masks(critic)
    assert len(up.history) == steps // period
    if up.history:
        assert float(actor.sparsity().max()) > 0 and float(critic.sparsity().max()) > 0


def test_state_dict_round_trip_mid_period():
    def make():
        torch.manual_seed(0)
        actor, critic, loss = _build(k=3, hidden=(8,))
        opt = torch.optim.Adam(loss.parameters(), lr=0.01)
        pol = NoisySpeedPolicy(0.3, 2.0, seed=3)
        up = SACTargetSelectionUpdater(loss, opt, period=3, speed_policy=pol)
        return loss, opt, up

    loss, opt, up = make()
    _train_steps(loss, opt, up, range(4))  # one selection, then 1 step into period 2
    state = copy.deepcopy(
        {"loss": loss.state_dict(), "opt": opt.state_dict(), "up": up.state_dict()}
    )
    loss2, opt2, up2 = make()
    loss2.load_state_dict(state["loss"])
    opt2.load_state_dict(state["opt"])
    up2.load_state_dict(state["up"])
    assert loss2.actor_network.selected == loss.actor_network.selected
    _train_steps(loss, opt, up, range(4, 9))
    _train_steps(loss2, opt2, up2, range(4, 9))
    torch.testing.assert_close(loss2.state_dict(), loss.state_dict())
    assert up2.history == up.history and len(up.history) == 3


def test_polyprune_sac_schedule():
    actor, critic, loss = _build(k=1, hidden=(16,))
    up = PolyPruneSACUpdater(loss, tau=1.0, final_sparsity=0.9, start=2, end=6, prune_every=2)
    for _ in range(6):
        up.step()
        _check_masks(actor)
        _check_masks(critic)
    assert round(float(actor.sparsity()[0]), 2) == 0.9
    assert round(float(critic.sparsity()[0]), 2) == 0.9
    torch.testing.assert_close(loss.target_qvalue_network_params.data, critic.params[0].data)


# -------------------------------------------------------------- bad input
def test_bad_inputs():
    with pytest.raises(ValueError, match="continuous Box action spec required"):
        MaskedEnsembleTanhGaussianActor(OBS, OneHot(3), 2)
    with pytest.raises(ValueError, match="continuous Box action spec required"):
        MaskedEnsembleTanhGaussianActor(OBS, Categorical(3), 2)
    with pytest.raises(ValueError, match="num_members"):
        MaskedEnsembleTanhGaussianActor(OBS, _spec(), 0)
    with pytest.raises(ValueError, match="num_members"):
        MaskedEnsembleTwinQ(OBS, ACT, 0)
    actor, critic, loss = _build(k=2)
    with pytest.raises(TypeError, match="MaskedEnsembleTwinQ"):
        EauDeSACLoss(actor, actor)
    with pytest.raises(ValueError, match="loss_function"):
        EauDeSACLoss(actor, critic, loss_function="huber")
    for tau in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
            SACTargetSelectionUpdater(loss, reset_optimizer=False, tau=tau)
    with pytest.raises(ValueError, match="optimizer is required"):
        SACTargetSelectionUpdater(loss)
    with pytest.raises(ValueError, match="period"):
        SACTargetSelectionUpdater(loss, reset_optimizer=False, period=0)
    pol = LinearSpeedGrid(0.1)
    with pytest.raises(ValueError, match="different object"):
        SACTargetSelectionUpdater(
            loss, reset_optimizer=False, speed_policy=pol, actor_speed_policy=pol
        )
    with pytest.raises(ValueError, match="one network each"):
        PolyPruneSACUpdater(loss)
    with pytest.raises(ValueError, match="does not hold"):
        SACTargetSelectionUpdater(loss, torch.optim.Adam([loss.log_alpha]))
    up = SACTargetSelectionUpdater(loss, reset_optimizer=False)
    with pytest.raises(RuntimeError, match="call the loss module first"):
        up.step()
    with pytest.raises(ValueError, match="shapes"):
        up.step(
            TensorDict(loss_actor_per_member=torch.ones(3), loss_qvalue_per_member=torch.ones(2))
        )


# ---------------------------------------------------------------- acting
def test_acting_modes_and_member_network():
    actor, _, _ = _build(k=3, hidden=(8,))
    actor.selected = 2
    td = TensorDict(observation=torch.randn(5, OBS), batch_size=[5])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        det = actor(td.clone())["action"]
    torch.testing.assert_close(det, actor.member_network()(td["observation"]))
    torch.testing.assert_close(det, actor.member_network(2)(td["observation"]))
    assert not torch.allclose(det, actor.member_network(0)(td["observation"]))
    with set_exploration_type(ExplorationType.RANDOM):
        a1 = actor(td.clone())["action"]
    assert not torch.allclose(a1, det)
    assert (a1.abs() <= 2.0).all()
    # batched-env specs ([N, A]) with identical rows are accepted
    batched = MaskedEnsembleTanhGaussianActor(
        OBS, Bounded(-1.0, 1.0, shape=(4, ACT)), 2, hidden=(4,)
    )
    assert batched.low.shape == (ACT,)
    assert batched(TensorDict(observation=torch.randn(4, OBS), batch_size=[4]))["action"].shape == (
        4,
        ACT,
    )


def test_halfcheetah_rollout():
    pytest.importorskip("mujoco")
    from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv

    env = TransformedEnv(GymEnv("HalfCheetah-v5"), DoubleToFloat())
    env.set_seed(0)
    obs_dim = env.observation_spec["observation"].shape[-1]
    actor = MaskedEnsembleTanhGaussianActor(obs_dim, env.action_spec, 3, hidden=(16, 16))
    td = env.rollout(4, policy=actor)
    assert td["action"].shape == (4, env.action_spec.shape[-1])
    assert env.action_spec.is_in(td["action"][0])
    env.close()
