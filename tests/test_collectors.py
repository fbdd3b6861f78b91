"""The lean threaded Atari collector: same transitions as the TorchRL env, same RNG streams."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.data import OneHot

from torchrl_eaudeqn import AtariCollector, linear_epsilon, make_atari_env, make_atari_gym_env
from torchrl_eaudeqn.collectors import aliased_member_network
from torchrl_eaudeqn.modules import MaskedEnsembleQValueActor, mlp, nature_cnn


def test_linear_epsilon_closed_form():
    kw = dict(start=1.0, end=0.1, decay_steps=100, warmup=50)
    assert linear_epsilon(0, **kw) == 1.0 and linear_epsilon(49, **kw) == 1.0
    assert linear_epsilon(50, **kw) == 1.0
    assert linear_epsilon(75, **kw) == pytest.approx(0.775)
    assert linear_epsilon(150, **kw) == pytest.approx(0.1)
    assert linear_epsilon(10**7, **kw) == pytest.approx(0.1)


def _collector(cap=40, seed=3, threaded=True, net=None):
    env_fn = functools.partial(
        make_atari_gym_env, "Breakout", sticky_actions=0.0, max_episode_steps=cap
    )
    net = net or nature_cnn(4, "small")
    return AtariCollector([env_fn], lambda: net, 4, seed=seed, threaded=threaded)


def test_matches_the_torchrl_env_transition_for_transition():
    """Same actions -> the same stacks, rewards, scores and episode ends as make_atari_env.

    Sticky actions off, so both envs are deterministic whatever their seeds;
    the 40-step cap makes episodes end (truncated) and restart inside the run.
    """
    col = _collector(cap=40)
    steps = col.collect(100, epsilon=1.0)
    col.close()
    actions = steps.action[0]

    env = make_atari_env("Breakout", seed=3, sticky_actions=0.0, max_episode_steps=40)
    it = iter(actions.tolist())

    def replay_actions(obs):
        return torch.nn.functional.one_hot(torch.tensor(next(it)), 4)

    policy = TensorDictModule(replay_actions, in_keys=["observation"], out_keys=["action"])
    td = env.rollout(100, policy, break_when_any_done=False)
    np.testing.assert_array_equal(steps.observation[0], td["observation"].numpy())
    np.testing.assert_array_equal(steps.next_observation[0], td["next", "observation"].numpy())
    np.testing.assert_array_equal(steps.reward[0], td["next", "reward"].squeeze(-1).numpy())
    np.testing.assert_array_equal(
        steps.score_reward[0], td["next", "score_reward"].squeeze(-1).numpy()
    )
    np.testing.assert_array_equal(steps.terminated[0], td["next", "terminated"].squeeze(-1))
    np.testing.assert_array_equal(steps.truncated[0], td["next", "truncated"].squeeze(-1))
    assert steps.truncated[0].sum() == 2  # episodes of 40 steps: ends at steps 40 and 80
    done = td["next", "done"].squeeze(-1)
    expected = td["next", "episode_score"].squeeze(-1)[done].tolist()
    assert [score for _, score, _ in steps.episodes] == expected
    assert [length for _, _, length in steps.episodes] == [40, 40]


def test_threaded_equals_inline_and_rng_state_round_trips():
    net = nature_cnn(4, "small")
    a, b = _collector(threaded=True, net=net), _collector(threaded=False, net=net)
    a.submit(30, 0.5)
    b.submit(30, 0.5)
    sa, sb = a.result(), b.result()
    np.testing.assert_array_equal(sa.action, sb.action)
    np.testing.assert_array_equal(sa.next_observation, sb.next_observation)
    state = a.state_dict()
    first = a.rng.random(5)
    a.load_state_dict(state)
    np.testing.assert_array_equal(a.rng.random(5), first)
    for c in (a, b):
        c.close()


def test_greedy_steps_follow_the_network_and_explore_steps_skip_it():
    calls = []

    class Fixed(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return torch.tensor([[0.0, 0.0, 5.0, 0.0]]).expand(x.shape[0], 4)

    col = _collector(net=Fixed())
    greedy = col.collect(20, epsilon=0.0)
    assert (greedy.action == 2).all() and len(calls) == 20
    calls.clear()
    random = col.collect(50, epsilon=1.0)
    assert calls == [] and len(set(random.action[0].tolist())) > 1
    # A per-step schedule: explore for the first 10 steps, then act greedily.
    mixed = col.collect(20, epsilon=lambda t: 1.0 if t < 10 else 0.0)
    assert (mixed.action[0, 10:] == 2).all() and len(calls) == 10
    col.close()


def test_submit_result_protocol_errors():
    col = _collector()
    with pytest.raises(RuntimeError, match="no collection is running"):
        col.result()
    col.submit(2, 1.0)
    with pytest.raises(RuntimeError, match="already running"):
        col.submit(2, 1.0)
    assert col.result().num_steps == 2
    col.close()
    with pytest.raises(ValueError, match="env_fns"):
        AtariCollector([], lambda: None, 4)


def test_aliased_member_network_shares_the_ensemble_parameters():
    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(8,)), 3, action_spec=OneHot(2))
    with torch.no_grad():
        for p in actor.params.values(True, True):
            p.add_(torch.randn_like(p))  # members differ
    net = aliased_member_network(actor, 1)
    x = torch.randn(5, 3)
    torch.testing.assert_close(net(x), actor.member_values(1, x))
    with torch.no_grad():
        for p in actor.params.values(True, True):
            p.mul_(2.0)  # an in-place update (as the optimizer does) shows through
    torch.testing.assert_close(net(x), actor.member_values(1, x))
    assert not torch.allclose(net(x), actor.member_values(0, x))
    assert all(not p.requires_grad for p in net.parameters())


def test_acting_network_is_cached_follows_the_selection_and_acts_like_the_ensemble():
    from tensordict import TensorDict

    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(8,)), 3, action_spec=OneHot(2))
    with torch.no_grad():
        for p in actor.params.values(True, True):
            p.add_(torch.randn_like(p))  # members differ
    x = torch.randn(5, 3)
    assert actor.acting_network() is actor.acting_network()  # built once per member
    for k in range(3):
        actor.selected = k
        net = actor.acting_network()
        assert torch.equal(net(x), actor.member_values(k, x))  # the same arithmetic, bit for bit
        with torch.no_grad():
            fast = actor.policy(TensorDict(observation=x, batch_size=[5]))
        slow = actor.policy(TensorDict(observation=x, batch_size=[5]))  # gradients on: no cache
        assert slow["action_value"].requires_grad and not fast["action_value"].requires_grad
        assert torch.equal(fast["action_value"], slow["action_value"].detach())
        assert torch.equal(fast["action"], slow["action"])
    # a copy of the ensemble has its own storage: its cached network is rebuilt for it
    clone = copy.deepcopy(actor)
    with torch.no_grad():
        for p in clone.params.values(True, True):
            p.mul_(-1.0)
    assert torch.equal(clone.acting_network()(x), clone.member_values(clone.selected, x))
    assert not torch.equal(clone.acting_network()(x), actor.acting_network()(x))


def test_state_dict_with_envs_resumes_bit_for_bit(tmp_path):
    """Save mid-episode (sticky actions on), continue; a fresh collector loaded from the
    saved state (through torch.save/load weights_only) produces the same transitions.

    Twelve save points: ALE's state misses the sticky action when it changed on
    the newest frame (about one restore in three diverged before the collector
    put it back), so a single save point passes by luck too often.
    """
    net = nature_cnn(4, "small")
    env_fn = functools.partial(make_atari_gym_env, "Breakout", max_episode_steps=60)
    a = AtariCollector([env_fn, env_fn], lambda: net, 4, seed=5, threaded=False)
    a.collect(37, epsilon=0.5)
    seen_episodes = 0
    for point in range(12):
        torch.save(a.state_dict(), tmp_path / "c.pt")
        after_a = a.collect(25, epsilon=0.5)
        ram_a = [env.unwrapped.ale.getRAM().copy() for env in a.envs]
        b = AtariCollector([env_fn, env_fn], lambda: net, 4, seed=99, threaded=False)
        b.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
        after_b = b.collect(25, epsilon=0.5)
        np.testing.assert_array_equal(after_a.action, after_b.action, err_msg=str(point))
        np.testing.assert_array_equal(after_a.next_observation, after_b.next_observation)
        np.testing.assert_array_equal(after_a.reward, after_b.reward)
        np.testing.assert_array_equal(after_a.truncated, after_b.truncated)
        for x, env in zip(ram_a, b.envs, strict=True):
            np.testing.assert_array_equal(x, env.unwrapped.ale.getRAM(), err_msg=str(point))
        assert after_a.episodes == after_b.episodes
        seen_episodes += len(after_a.episodes)
        b.close()
    assert seen_episodes > 0
    a.close()


def test_terminal_on_life_loss_marks_lost_lives_and_the_replay_keeps_the_stacks():
    """A lost life is a learning terminal; the game, its score and its stacks go on.

    Same seed with and without the option: identical transitions and episodes
    (reading the lives consumes no randomness), ``terminated`` differs exactly
    at the steps where ALE's lives dropped. In the frame replay, the stack
    after a life-loss terminal is the continuing one the agent saw (not a
    zero-padded episode start).
    """
    from torchrl_eaudeqn.replay import FrameReplayBuffer

    def run(option):
        env_fn = functools.partial(make_atari_gym_env, "Breakout", max_episode_steps=400)
        net = nature_cnn(4, "small")
        col = AtariCollector(
            [env_fn], lambda: net, 4, seed=7, threaded=False, terminal_on_life_loss=option
        )
        lives = []
        steps = []
        for _ in range(300):
            lives.append(col.envs[0].unwrapped.ale.lives() if col._stacks is not None else 5)
            steps.append(col.collect(1, epsilon=1.0))
        col.close()
        cat = {
            k: np.concatenate([getattr(s, k) for s in steps], axis=1)
            for k in ("observation", "next_observation", "action", "terminated", "truncated")
        }
        return cat, [e for s in steps for e in s.episodes], lives

    plain, plain_eps, _ = run(False)
    lost, lost_eps, lives = run(True)
    assert plain_eps == lost_eps and len(plain_eps) >= 1  # whole games, same scores
    for k in ("observation", "next_observation", "action", "truncated"):
        np.testing.assert_array_equal(plain[k], lost[k])
    extra = lost["terminated"][0] & ~plain["terminated"][0]
    assert not (plain["terminated"][0] & ~lost["terminated"][0]).any()
    assert extra.sum() >= 4  # Breakout has 5 lives; random play loses several
    # Every extra terminal is a step after which the next step starts with fewer lives
    # and the same game (no reset: the next observation continues the stack).
    for t in np.flatnonzero(extra):
        assert t + 1 < len(lives) and lives[t + 1] < lives[t]
        np.testing.assert_array_equal(lost["observation"][0, t + 1], lost["next_observation"][0, t])
        assert lost["observation"][0, t + 1, :-1].any()  # not a zero-padded start

    rb = FrameReplayBuffer(1000, frame_shape=(84, 84), stack=4, seed=0)
    rb.extend_stream(
        0,
        lost["observation"][0],
        lost["action"][0],
        np.zeros(300, np.float32),
        lost["next_observation"][0],
        lost["terminated"][0],
        lost["truncated"][0],
    )
    seen = {
        (o.tobytes(), n.tobytes()): bool(te)
        for o, n, te in zip(
            lost["observation"][0],
            lost["next_observation"][0],
            lost["terminated"][0],
            strict=True,
        )
    }
    batch = rb.sample(600)
    terms = 0
    for o, n, te in zip(
        batch["observation"].numpy(),
        batch["next", "observation"].numpy(),
        batch["next", "terminated"].reshape(-1).tolist(),
        strict=True,
    ):
        assert seen[(o.tobytes(), n.tobytes())] == te
        terms += te
    assert terms > 0


def test_make_atari_env_end_of_life_flags_lost_lives():
    for n in (1, 2):
        torch.manual_seed(0)
        env = make_atari_env("Breakout", seed=0, end_of_life=True, num_envs=n)
        td = env.rollout(300, break_when_any_done=False)
        env.close()
        eol = td["next", "end-of-life"].reshape(n, -1)
        done = td["next", "done"].reshape(n, -1)
        # Every env loses lives on its own; a game over is also a lost life.
        assert (eol.sum(-1) > done.sum(-1)).all()
        assert (eol | ~done).all()
    with pytest.raises(ValueError, match="end_of_life"):
        make_atari_env("Breakout", end_of_life="yes")
