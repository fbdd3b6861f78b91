"""The control recipe's lean path: same transitions, batches and losses as the TorchRL path.

Where the two paths differ by design (each episode's reset seed, the
exploration RNG, epsilon annealed per env step instead of per batch), the
tests say so and check each side on its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchrl.data import LazyTensorStorage, OneHot, ReplayBuffer
from torchrl.data.replay_buffers import RandomSampler

from torchrl_eaudeqn import EauDeQNLoss, MaskedEnsembleQValueActor, TransitionReplay, mlp
from torchrl_eaudeqn.collectors import ControlCollector, linear_epsilon
from torchrl_eaudeqn.config import ControlConfig
from torchrl_eaudeqn.envs import make_task_env, make_task_gym_env
from torchrl_eaudeqn.modules.dqn import minatar_cnn

TASKS = ["CartPole-v1", "minatar:breakout"]


def _cfg(env: str, **kw) -> ControlConfig:
    return ControlConfig(env=env, width=16, progress_bar=False, **kw)


@pytest.mark.parametrize("env", TASKS)
def test_first_episode_matches_the_torchrl_env_transition_for_transition(env):
    """Same start, same actions -> the same observations, rewards and ends as make_task_env.

    The seeding differs on purpose: the lean collector resets episode i with
    seed + i (so a checkpoint can replay the running one), TorchRL's env seeds
    its generator once. So the TorchRL env's Gymnasium env is reset with the
    lean collector's first seed, and both are stepped with the same actions.
    """
    cfg = _cfg(env, max_episode_steps=60)
    genv = make_task_gym_env(cfg)
    n = int(genv.action_space.n)
    col = ControlCollector(lambda: genv, lambda: None, n, seed=7)
    steps = col.collect(60, epsilon=1.0)  # random actions; the TorchRL env replays them
    taken = steps.action[0]
    tenv = make_task_env(cfg, seed=7)
    td = tenv.reset()
    obs, _ = tenv.base_env._env.reset(seed=7)
    td["observation"] = torch.as_tensor(np.asarray(obs, dtype=np.float32))
    ends = np.flatnonzero(steps.terminated[0] | steps.truncated[0])
    end = int(ends[0]) + 1 if ends.size else 60
    assert end > 5
    for t in range(end):
        td["action"] = torch.nn.functional.one_hot(torch.tensor(int(taken[t])), n)
        assert np.array_equal(td["observation"].numpy(), steps.observation[0, t]), t
        out = tenv.step(td)
        nxt = out["next"]
        assert np.array_equal(nxt["observation"].numpy(), steps.next_observation[0, t]), t
        assert float(nxt["reward"]) == steps.reward[0, t]
        assert bool(nxt["terminated"]) == steps.terminated[0, t]
        assert bool(nxt["truncated"]) == steps.truncated[0, t]
        td = out["next"].clone()
    col.close()


def test_greedy_steps_follow_the_network_and_episode_sums_are_whole():
    net = mlp(4, 2, hidden=(8,))
    col = ControlCollector(lambda: make_task_gym_env(_cfg("CartPole-v1")), lambda: net, 2, seed=1)
    steps = col.collect(300, epsilon=0.0)
    with torch.no_grad():
        want = net(torch.from_numpy(steps.observation[0])).argmax(-1).numpy()
    assert np.array_equal(steps.action[0], want)
    ends = np.flatnonzero(steps.terminated[0] | steps.truncated[0])
    assert len(steps.episodes) == len(ends) >= 1
    first = ends[0] + 1
    assert steps.episodes[0] == (0, float(steps.reward[0, :first].sum()), int(first))
    col.close()


@pytest.mark.parametrize("env", TASKS)
def test_state_dict_restores_the_running_episode_bit_for_bit(env):
    """A collector restored from a checkpointed state produces the same transitions."""
    cfg = _cfg(env)
    net = mlp(4, 2, hidden=(8,)) if env == "CartPole-v1" else minatar_cnn(4, 3, 8)
    n = 2 if env == "CartPole-v1" else 3

    def make(seed):
        return ControlCollector(lambda: make_task_gym_env(cfg), lambda: net, n, seed=seed)

    a = make(5)
    a.collect(137, epsilon=0.3)
    state = a.state_dict()
    assert len(state["actions"]) > 0  # mid-episode
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = make(999)  # another seed: everything comes from the state
    b.load_state_dict(state)
    sa, sb = a.collect(400, epsilon=0.3), b.collect(400, epsilon=0.3)
    for field in ("observation", "action", "reward", "next_observation", "terminated"):
        assert np.array_equal(getattr(sa, field), getattr(sb, field)), field
    assert sa.episodes == sb.episodes and len(sa.episodes) >= 1
    a.close()
    b.close()


def test_a_nondeterministic_env_warns_and_starts_a_fresh_episode():
    import gymnasium as gym

    class Drifting(gym.Wrapper):
        calls = 0

        def step(self, action):
            obs, r, te, tr, info = self.env.step(action)
            Drifting.calls += 1
            return obs + Drifting.calls, r, te, tr, info

    def make():
        return ControlCollector(lambda: Drifting(gym.make("CartPole-v1")), lambda: None, 2)

    a = make()
    a.collect(5, epsilon=1.0)
    b = make()
    with pytest.warns(RuntimeWarning, match="did not replay its running episode"):
        b.load_state_dict(a.state_dict())
    assert b._actions == [] and b._score == 0.0


# --------------------------------------------------------------------------- replay
def test_transition_replay_draws_the_same_batches_as_torchrl_random_sampler():
    g = torch.Generator().manual_seed(0)
    n = 70
    obs, nxt = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    act = torch.randint(2, (n,), generator=g)
    rew, term = torch.randn(n, generator=g), torch.rand(n, generator=g) < 0.2
    lean = TransitionReplay(50, (4,))
    for i in range(0, n, 7):  # the recipe extends in chunks
        sl = slice(i, i + 7)
        lean.extend(
            obs[sl].numpy(), act[sl].numpy(), rew[sl].numpy(), nxt[sl].numpy(), term[sl].numpy()
        )
    rb = ReplayBuffer(storage=LazyTensorStorage(50), sampler=RandomSampler(), batch_size=16)
    rb.extend(TransitionReplay.as_tensordict(
        {"observation": obs, "action": act, "reward": rew, "next_observation": nxt,
         "terminated": term}, n_actions=2))  # fmt: skip
    for seed in range(3):
        torch.manual_seed(seed)
        want = rb.sample()
        torch.manual_seed(seed)
        got = TransitionReplay.as_tensordict(lean.sample(16), n_actions=2)
        for key in want.keys(True, True):
            assert torch.equal(got[key], want[key]), key


def test_transition_replay_stores_minatar_observations_as_exact_uint8():
    rb = TransitionReplay(10, (4, 10, 10), obs_dtype=torch.uint8)
    obs = (np.random.default_rng(0).random((3, 4, 10, 10)) < 0.3).astype(np.float32)
    rb.extend(obs, np.zeros(3, np.int64), np.ones(3), obs, np.zeros(3, bool))
    assert rb.observation.dtype == torch.uint8 and rb.observation.element_size() == 1
    batch = rb.sample(5)
    assert batch["observation"].dtype == torch.float32
    assert all(any(np.array_equal(row, o) for o in obs) for row in batch["observation"].numpy())


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("members,use_vmap", [(1, None), (3, False), (3, True)])
def test_td_losses_equal_forward_bit_for_bit(members, use_vmap):
    torch.manual_seed(0)
    actor = MaskedEnsembleQValueActor(
        mlp(4, 3, hidden=(16,)), members, action_spec=OneHot(3), use_vmap=use_vmap
    )
    with torch.no_grad():
        for p in actor.params.values(True, True):
            p.add_(torch.randn_like(p) * 0.1)  # members differ
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=0.97)
    b = {"observation": torch.randn(32, 4), "action": torch.randint(3, (32,)),
         "reward": torch.randn(32), "next_observation": torch.randn(32, 4),
         "terminated": torch.rand(32) < 0.3}  # fmt: skip
    td = TransitionReplay.as_tensordict(b, n_actions=3)
    want = loss(td)
    total, per_member = loss.td_losses(
        b["observation"], b["action"], b["reward"], b["next_observation"], b["terminated"]
    )
    assert torch.equal(per_member, want["loss_per_member"]) and torch.equal(total, want["loss"])
    grads = torch.autograd.grad(total, list(actor.params.values(True, True)))
    want_grads = torch.autograd.grad(loss(td)["loss"], list(actor.params.values(True, True)))
    assert all(torch.equal(a, b) for a, b in zip(grads, want_grads, strict=True))
    assert torch.equal(loss.last_losses["loss_per_member"], want["loss_per_member"])


def test_td_losses_refuse_another_value_estimator():
    actor = MaskedEnsembleQValueActor(mlp(4, 2, hidden=()), 1, action_spec=OneHot(2))
    loss = EauDeQNLoss(actor)
    from torchrl.objectives.utils import ValueEstimators

    loss.make_value_estimator(ValueEstimators.TD1, gamma=0.9)
    with pytest.raises(ValueError, match="TD\\(0\\) value estimator"):
        loss.td_losses(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2),
                       torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool))  # fmt: skip


# --------------------------------------------------------------------------- module
def test_lean_epsilon_is_the_torchrl_schedule_per_env_step():
    """The TorchRL path anneals per collected batch; the lean one per env step, same line."""
    from torchrl_eaudeqn.trainers import ControlDQNModule

    cfg = _cfg("CartPole-v1", learning_starts=100, eps_decay_steps=1000, eps_end=0.05)
    lean = ControlDQNModule(cfg)
    torchrl = ControlDQNModule(dataclasses.replace(cfg, collector="torchrl"))
    for step in (100, 350, 1100, 5000):
        torchrl.explore.eps.fill_(cfg.eps_start)
        torchrl.explore.step(step - cfg.learning_starts)
        want = linear_epsilon(step, start=1.0, end=0.05, decay_steps=1000, warmup=100)
        assert lean.epsilon_at(step) == pytest.approx(want)
        assert torchrl.epsilon_now() == pytest.approx(want, abs=1e-5)  # float32 buffer
    assert lean.epsilon_at(99) == 1.0  # random acting before learning_starts, as init_random_frames
    assert isinstance(lean.replay, TransitionReplay)
    assert not isinstance(torchrl.replay, TransitionReplay)


def test_a_torchrl_env_fn_selects_the_torchrl_path():
    import functools

    from torchrl_eaudeqn.trainers import ControlDQNModule

    cfg = _cfg("CartPole-v1")
    module = ControlDQNModule(cfg, env_fn=functools.partial(make_task_env, cfg))
    assert not module._uses_lean() and not isinstance(module.replay, TransitionReplay)


# --------------------------------------------------------------------------- resume
def _final_state(ckpt_dir):
    from torchrl_eaudeqn.checkpointing import latest_checkpoint

    ckpt = torch.load(latest_checkpoint(ckpt_dir), map_location="cpu", weights_only=True)
    cb = next(v for k, v in ckpt["callbacks"].items() if "TargetSelection" in k)
    return ckpt["eaudeqn"]["env_steps"], ckpt["state_dict"], cb["history"]


def test_lean_resume_with_the_replay_is_bit_exact(tmp_path, capsys, monkeypatch):
    """Stop at 120 and resume to 240 = one run to 240: weights, selections, loss sums.

    ``use_vmap=auto``: before the resume the process's remembered calibrations
    are flipped, so only the path stored in the checkpoint keeps it bit-exact.
    """
    from scripts import load_script, run_dir

    from torchrl_eaudeqn.modules import ensemble as ensemble_mod

    monkeypatch.setattr(ensemble_mod, "_VMAP_CALIBRATIONS", {})

    main = load_script("recipes/control_dqn.py", "control_dqn_lean_resume").main
    args = [
        "env=CartPole-v1", "width=8", "num_members=3", "progress_bar=false", "threads=1",
        "learning_starts=40", "target_period=20", "buffer_size=200", "batch_size=8",
        "eval_episodes=1", "eval_max_steps=30", "eval_random_baseline=false", "log_every=40",
        "checkpoint_every=120", "checkpoint_replay=true", "max_speed=0.2",
    ]  # fmt: skip

    def run(where, *more):
        where.mkdir(exist_ok=True)
        code = main([*args, f"tracking_uri=sqlite:///{where}/mlflow.db",
                     f"checkpoint_dir={where}/ckpt", *more])  # fmt: skip
        assert code == 0, capsys.readouterr().err[-2000:]
        return run_dir(where / "ckpt", "CartPole-v1-eaudeqn-w8-seed0")

    straight = run(tmp_path / "a", "env_steps=240")
    half = run(tmp_path / "b", "env_steps=120")
    from torchrl_eaudeqn.checkpointing import latest_checkpoint

    saved = torch.load(latest_checkpoint(half), map_location="cpu", weights_only=True)
    (chosen,) = saved["eaudeqn"]["vmap_paths"].values()
    assert isinstance(chosen, bool)
    assert ensemble_mod._VMAP_CALIBRATIONS
    for cal in ensemble_mod._VMAP_CALIBRATIONS.values():
        cal["vmap"] = not cal["vmap"]
    resumed = run(tmp_path / "b", "env_steps=240", "--resume", "last")
    (sa, wa, ha), (sb, wb, hb) = _final_state(straight), _final_state(resumed)
    assert sa == sb == 240 and len(ha) == len(hb) >= 10
    assert [h.get("selected") for h in ha] == [h.get("selected") for h in hb]
    assert [h["loss_sums"] for h in ha] == [h["loss_sums"] for h in hb]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [
        k for k in wa if not torch.equal(wa[k], wb[k])
    ]


def test_transition_replay_wraps_and_casts_like_the_storage_dtypes():
    """Rows land at cursor..cursor+n modulo capacity, cast to each field's dtype."""
    rb = TransitionReplay(5, (2,), obs_dtype=torch.uint8)
    for start, n in ((0, 3), (3, 4), (7, 1)):
        rows = np.arange(start, start + n)
        obs = np.stack([rows % 2 == 0, rows % 3 == 0], axis=1)  # bool, as MinAtar's
        rb.extend(obs, rows, rows * 0.1, ~obs, rows % 2 == 1)
    # Eight rows into five slots: slot i holds the newest row r with r % 5 == i.
    newest = np.array([5, 6, 7, 3, 4])
    assert rb.action.tolist() == newest.tolist() and len(rb) == 5
    assert rb.observation.dtype == torch.uint8 and rb.reward.dtype == torch.float32
    assert torch.equal(rb.observation[:, 0], torch.from_numpy(newest % 2 == 0).to(torch.uint8))
    assert torch.equal(rb.next_observation[:, 1], torch.from_numpy(newest % 3 != 0).to(torch.uint8))
    assert torch.equal(rb.reward, torch.from_numpy(newest * 0.1).float())
    assert rb.terminated.tolist() == (newest % 2 == 1).tolist()


def test_rounds_per_training_step_do_not_change_the_run(tmp_path, capsys):
    """``steps_per_call`` 1 and 7: the same checkpoints, evaluations, weights and selections.

    Periods chosen so that logs (every 30), evaluations (every 50), checkpoints
    (every 70) and target updates (every 10) fall inside a call of 7 rounds of
    2 env steps; each call must end there, as one round per call would.
    """
    from scripts import load_script, run_dir

    main = load_script("recipes/control_dqn.py", "control_dqn_rounds").main
    args = [
        "env=CartPole-v1", "width=8", "num_members=3", "progress_bar=false", "threads=1",
        "learning_starts=24", "train_freq=2", "target_period=10", "buffer_size=300",
        "batch_size=8", "eval_episodes=1", "eval_max_steps=20", "eval_every=50",
        "eval_random_baseline=false", "log_every=30", "checkpoint_every=70",
        "keep_checkpoints=10", "env_steps=300", "use_vmap=false",
    ]  # fmt: skip

    def run(where, rounds):
        where.mkdir()
        code = main([*args, f"steps_per_call={rounds}", f"checkpoint_dir={where}/ckpt",
                     f"tracking_uri=sqlite:///{where}/mlflow.db"])  # fmt: skip
        assert code == 0, capsys.readouterr().err[-2000:]
        ckpts = run_dir(where / "ckpt", "CartPole-v1-eaudeqn-w8-seed0")
        states = {
            p.name: torch.load(p, map_location="cpu", weights_only=True)
            for p in sorted(ckpts.glob("step*.ckpt"))
        }
        return ckpts.name, states

    name_one, one = run(tmp_path / "one", 1)
    name_seven, seven = run(tmp_path / "seven", 7)
    assert name_one == name_seven  # steps_per_call may change on resume: not in the fingerprint
    assert list(one) == list(seven) == [f"step{s:012d}.ckpt" for s in (70, 140, 210, 280, 300)]
    for a, b in zip(one.values(), seven.values(), strict=True):
        assert a["eaudeqn"]["eval_results"] == b["eaudeqn"]["eval_results"]
        assert a["eaudeqn"]["last_log"] == b["eaudeqn"]["last_log"]
        (ha,) = [v["history"] for k, v in a["callbacks"].items() if "TargetSelection" in k]
        (hb,) = [v["history"] for k, v in b["callbacks"].items() if "TargetSelection" in k]
        assert len(ha) == len(hb) > 0
        assert [h["loss_sums"] for h in ha] == [h["loss_sums"] for h in hb]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    evals = [r["env_steps"] for r in seven["step000000000300.ckpt"]["eaudeqn"]["eval_results"]]
    assert evals == [50, 100, 150, 200, 250]


def test_a_training_step_without_a_trainer_takes_one_round():
    from torchrl_eaudeqn.trainers import ControlDQNModule

    module = ControlDQNModule(
        _cfg(
            "CartPole-v1",
            train_freq=2,
            steps_per_call=8,
            learning_starts=100,
            eval_random_baseline=False,
        )  # fmt: skip
    )
    module._start_collection()
    try:
        assert module.training_step(None, 0) is None  # still collecting at random
        assert module.env_steps == 2
    finally:
        module._stop_collection()
