import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Categorical, OneHot
from torchrl.envs import GymEnv
from torchrl.modules import EGreedyModule

from torchrl_eaudeqn import MaskedEnsembleQValueActor, mlp, nature_cnn


def _actor(k=3, spec=None, **kw):
    return MaskedEnsembleQValueActor(mlp(4, 2, hidden=(8,)), k, action_spec=spec or OneHot(2), **kw)


def test_members_start_identical_and_equal_the_given_network():
    net = mlp(4, 2, hidden=(8,))
    actor = MaskedEnsembleQValueActor(net, 4, action_spec=OneHot(2))
    x = torch.randn(5, 4)
    q = actor.ensemble_values(x)
    assert q.shape == (5, 4, 2)
    for name, p in actor.flat_params().items():  # identical copies, bit for bit
        for k in range(4):
            assert torch.equal(p[k], dict(net.named_parameters())[name])
    for k in range(4):  # vmap'd matmuls may round differently from the plain call
        torch.testing.assert_close(q[:, k], net(x))


def test_forward_writes_training_and_acting_keys_one_hot_and_categorical():
    for spec, action_shape in ((OneHot(2), (5, 2)), (Categorical(2), (5,))):
        actor = _actor(spec=spec)
        with torch.no_grad():
            actor.params["2", "bias"][1] += torch.tensor([10.0, -10.0])  # member 1 prefers action 0
            actor.params["2", "bias"][0] += torch.tensor([-10.0, 10.0])  # member 0 prefers action 1
        td = actor(TensorDict(observation=torch.randn(5, 4), batch_size=[5]))
        assert td["action_value"].shape == (5, 3, 2)
        assert td["action"].shape == action_shape
        idx = td["action"].argmax(-1) if isinstance(spec, OneHot) else td["action"]
        assert (idx == 1).all()  # selected = member 0
        actor.selected = 1
        td = actor(TensorDict(observation=torch.randn(5, 4), batch_size=[5]))
        idx = td["action"].argmax(-1) if isinstance(spec, OneHot) else td["action"]
        assert (idx == 0).all()
        torch.testing.assert_close(
            td["chosen_action_value"].squeeze(-1), td["action_value"][:, 1].max(-1).values
        )


@pytest.mark.parametrize(
    "net_fn,shape",
    [
        (lambda: mlp(6, 3, hidden=(16, 16)), (7, 6)),
        (lambda: nature_cnn(3, 32, in_channels=2, frame_size=36), (2, 2, 36, 36)),
    ],
)
def test_vmap_and_loop_paths_match_outputs_and_gradients(net_fn, shape):
    net = net_fn()
    vm = MaskedEnsembleQValueActor(net, 3, action_spec=OneHot(3), use_vmap=True)
    lp = MaskedEnsembleQValueActor(net, 3, action_spec=OneHot(3), use_vmap=False)
    with torch.no_grad():  # make members differ
        for a in (vm, lp):
            for k in range(3):
                for p in a.params.values(True, True):
                    p[k].mul_(1 + 0.1 * k)
    x = torch.randint(0, 255, shape, dtype=torch.uint8) if len(shape) == 4 else torch.randn(shape)
    qv, ql = vm.ensemble_values(x), lp.ensemble_values(x)
    torch.testing.assert_close(qv, ql)
    w = torch.randn_like(qv)
    (qv * w).sum().backward()
    (ql * w).sum().backward()
    for (name, pv), (_, pl) in zip(vm.named_parameters(), lp.named_parameters(), strict=True):
        torch.testing.assert_close(pv.grad, pl.grad, msg=name)


def test_masks_are_state_and_member_network_applies_them():
    actor = _actor()
    sd = actor.state_dict()
    assert {"masks.0.weight", "masks.2.weight", "_selected"} <= set(sd)
    with torch.no_grad():
        actor.masks["0", "weight"][2, 0, :4] = False
    actor.apply_masks_()
    assert (actor.params["0", "weight"][2, 0, :4] == 0).all()
    assert actor.sparsity()[2] == pytest.approx(4 / (32 + 16))
    other = _actor()
    other.load_state_dict(actor.state_dict())
    assert torch.equal(other.masks["0", "weight"], actor.masks["0", "weight"])
    net = actor.member_network(2)
    assert isinstance(net, nn.Sequential) and not any(p.requires_grad for p in net.parameters())
    x = torch.randn(3, 4)
    torch.testing.assert_close(net(x), actor.ensemble_values(x)[:, 2])


def test_policy_runs_only_selected_member_and_matches():
    actor = _actor()
    actor.selected = 2
    td = TensorDict(observation=torch.randn(5, 4), batch_size=[5])
    full = actor(td.clone())
    sel = actor.policy(td.clone())
    torch.testing.assert_close(sel["action_value"], full["action_value"][:, 2])
    assert torch.equal(sel["action"], full["action"])


def test_works_with_egreedy_rollout_and_collector():
    env = GymEnv("CartPole-v1")
    env.set_seed(0)
    actor = MaskedEnsembleQValueActor(mlp(4, 2, hidden=(8,)), 3, action_spec=env.action_spec)
    explore = EGreedyModule(env.action_spec, eps_init=1.0, eps_end=0.1, annealing_num_steps=10)
    rollout = env.rollout(20, TensorDictSequential(actor, explore))
    assert rollout["action_value"].shape[-2:] == (3, 2)
    assert env.action_spec.is_in(rollout["action"][0])
    collector = Collector(
        env, TensorDictSequential(actor.policy, explore), frames_per_batch=16, total_frames=32
    )
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2 and batches[0]["action"].shape == (16, 2)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="num_members"):
        _actor(k=0)
    with pytest.raises(ValueError, match="num_members"):
        _actor(k=2.5)
    with pytest.raises(ValueError, match="action_spec has 3 actions"):
        MaskedEnsembleQValueActor(mlp(4, 2), 2, action_spec=OneHot(3))
    with pytest.raises(ValueError, match="action_spec must be a discrete"):
        from torchrl.data import Bounded

        MaskedEnsembleQValueActor(mlp(4, 2), 2, action_spec=Bounded(-1, 1, (2,)))
    with pytest.raises(ValueError, match="selected"):
        _actor(selected=3)
    with pytest.raises(ValueError, match="buffers"):
        MaskedEnsembleQValueActor(
            nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2)), 2, action_spec=OneHot(2)
        )


def test_output_check_for_networks_without_trailing_linear():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 6)

        def forward(self, x):
            return self.lin(x)[..., :3]

    actor = MaskedEnsembleQValueActor(Odd(), 2, action_spec=OneHot(6))
    with pytest.raises(ValueError, match="network outputs 3 action values"):
        actor(TensorDict(observation=torch.randn(2, 4), batch_size=[2]))


def test_nature_cnn_widths():
    for width, hidden in (("small", 32), ("medium", 512), ("large", 2048)):
        net = nature_cnn(6, width)
        assert net[-1].in_features == hidden and net[-3].in_features == 3136
    with pytest.raises(ValueError, match="width"):
        nature_cnn(6, "huge")
