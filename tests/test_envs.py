"""Env factories: real ALE games with Dopamine preprocessing, and small control tasks."""

from __future__ import annotations

import functools

import pytest
import torch
from torchrl.envs import ParallelEnv, SerialEnv, TransformedEnv

from torchrl_eaudeqn.envs import atari as atari_envs
from torchrl_eaudeqn.envs import (
    atari_game_ids,
    make_atari_env,
    make_control_env,
    resolve_atari_game,
)

PAPER_GAMES = [
    "BeamRider",
    "MsPacman",
    "Qbert",
    "Pong",
    "Enduro",
    "SpaceInvaders",
    "Assault",
    "CrazyClimber",
    "Boxing",
    "VideoPinball",
]


def gym_env(env):
    """The gymnasium env under a single TorchRL Atari env."""
    return env.base_env._env


def test_game_ids_cover_the_paper_games():
    ids = atari_game_ids()
    assert ids == sorted(ids)
    assert set(PAPER_GAMES) <= set(ids)


@pytest.mark.parametrize(
    "given, expected",
    [("Pong", "Pong"), ("pong", "Pong"), ("ALE/Pong-v5", "Pong"), ("ms_pacman", "MsPacman")],
)
def test_game_name_forms(given, expected):
    assert resolve_atari_game(given) == expected


def test_atari_reset_and_step_shapes():
    env = make_atari_env("Pong", seed=0)
    td = env.reset()
    obs = td["observation"]
    assert obs.shape == (4, 84, 84) and obs.dtype == torch.uint8
    # Zero padding before the episode start, a real frame last.
    assert not obs[:3].any() and obs[3].any()
    assert env.action_spec.shape == (6,)  # Pong's minimal action set, one-hot

    roll = env.rollout(6)
    nxt = roll["next"]
    assert nxt["observation"].shape == (6, 4, 84, 84)
    assert nxt["observation"].dtype == torch.uint8
    for key in ("reward", "score_reward", "episode_reward", "episode_score"):
        assert nxt[key].shape == (6, 1) and nxt[key].dtype == torch.float32, key
    for key in ("done", "terminated", "truncated"):
        assert nxt[key].shape == (6, 1) and nxt[key].dtype == torch.bool, key
    assert nxt["step_count"].squeeze(-1).tolist() == [1, 2, 3, 4, 5, 6]
    # Stacks shift by one frame per step.
    assert torch.equal(nxt["observation"][:, :-1], roll["observation"][:, 1:])
    assert torch.equal(roll["observation"][1:], nxt["observation"][:-1])


@pytest.mark.parametrize("frame_skip, sticky", [(4, 0.25), (2, 0.0)])
def test_sticky_actions_and_frame_skip_are_applied(frame_skip, sticky):
    env = make_atari_env(
        "Breakout", seed=1, frame_skip=frame_skip, sticky_actions=sticky, noop_max=0
    )
    g = gym_env(env)
    ale = g.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == pytest.approx(sticky)
    assert g.unwrapped._frameskip == 1  # skipping is done by AtariPreprocessing only
    env.rollout(5)
    assert ale.getEpisodeFrameNumber() == 5 * frame_skip


def test_agent_step_cap_truncates():
    env = make_atari_env("Pong", seed=0, max_episode_steps=7)
    roll = env.rollout(16, break_when_any_done=False)
    truncated = roll["next", "truncated"].squeeze(-1)
    assert truncated.nonzero().squeeze(-1).tolist() == [6, 13]
    assert not roll["next", "terminated"].any()
    # After the cap the env resets: zero-padded stack again.
    assert not roll["observation"][7, :3].any()


def test_raw_score_is_kept_beside_the_clipped_reward():
    # Space Invaders pays 5-30 points per alien, so random play soon shows |raw| > 1.
    env = make_atari_env("SpaceInvaders", seed=0)
    torch.manual_seed(0)
    roll = env.rollout(300)
    raw = roll["next", "score_reward"]
    assert raw.max() > 1
    assert torch.equal(roll["next", "reward"], raw.clamp(-1, 1))
    assert torch.allclose(roll["next", "episode_score"], raw.cumsum(0))
    assert torch.allclose(roll["next", "episode_reward"], raw.clamp(-1, 1).cumsum(0))

    env = make_atari_env("SpaceInvaders", seed=0, clip_rewards=False)
    torch.manual_seed(0)
    roll = env.rollout(300)
    assert torch.equal(roll["next", "reward"], roll["next", "score_reward"])


def test_same_seed_same_frames():
    actions = torch.nn.functional.one_hot(torch.arange(40) % 4, 4)

    def play(seed):
        env = make_atari_env("Breakout", seed=seed)
        td, frames = env.reset(), []
        for a in actions:
            td["action"] = a
            td = env.step(td)["next"]
            frames.append(td["observation"][-1])
        return torch.stack(frames)

    assert torch.equal(play(3), play(3))


def test_noop_starts_and_index_actions():
    env = make_atari_env("Pong", seed=0, noop_max=30, categorical_action_encoding=True)
    assert gym_env(env).env.noop_max == 30
    roll = env.rollout(3)
    assert roll["action"].shape == (3,)


def test_vectorised_atari():
    env = make_atari_env("Pong", seed=0, num_envs=2, parallel=False)
    assert isinstance(env.base_env, SerialEnv)
    roll = env.rollout(3)
    assert roll["next", "observation"].shape == (2, 3, 4, 84, 84)
    assert roll["next", "score_reward"].shape == (2, 3, 1)


def test_batched_stacks_reset_per_env():
    """Stacking runs on the batched env: an env that resets alone gets a fresh stack."""
    cpu = torch.device("cpu")
    bases = [
        functools.partial(atari_envs._atari_base, "Pong", 4, 0.25, cap, 0, False, cpu)
        for cap in (3, 5)
    ]
    env = TransformedEnv(SerialEnv(2, bases), atari_envs._atari_transforms(4, True))
    env.set_seed(0)
    roll = env.rollout(8, break_when_any_done=False)
    trunc = roll["next", "truncated"].squeeze(-1)
    assert trunc[0].nonzero().squeeze(-1).tolist() == [2, 5]
    assert trunc[1].nonzero().squeeze(-1).tolist() == [4]
    # Right after its own reset, an env's stack is zero-padded; the other's is not.
    assert not roll["observation"][0, 3, :3].any()
    assert roll["observation"][1, 3, :3].any()
    assert not roll["observation"][1, 5, :3].any()
    assert roll["observation"][0, 5, :3].any()
    assert torch.equal(
        roll["next", "step_count"][0].squeeze(-1), torch.tensor([1, 2, 3, 1, 2, 3, 1, 2])
    )


def test_parallel_atari():
    env = make_atari_env("Pong", seed=0, num_envs=2, parallel=True)
    try:
        assert isinstance(env.base_env, ParallelEnv)
        roll = env.rollout(2)
        assert roll["next", "observation"].shape == (2, 2, 4, 84, 84)
    finally:
        env.close()


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"game": "Pongg"}, ["'Pongg'", "'Pong'"]),
        ({"game": "SpaceInvader"}, ["'SpaceInvader'", "'SpaceInvaders'"]),
        ({"game": "ALE/Pong-v4"}, ["ALE/Pong-v4", "v5"]),
        ({"game": ""}, ["game"]),
        ({"game": "Pong", "frame_skip": 0}, ["frame_skip", "0"]),
        ({"game": "Pong", "frame_skip": -2}, ["frame_skip"]),
        ({"game": "Pong", "frame_skip": 2.0}, ["frame_skip"]),
        ({"game": "Pong", "sticky_actions": 1.5}, ["sticky_actions", "1.5"]),
        ({"game": "Pong", "sticky_actions": -0.1}, ["sticky_actions"]),
        ({"game": "Pong", "frame_stack": 0}, ["frame_stack"]),
        ({"game": "Pong", "max_episode_steps": 0}, ["max_episode_steps"]),
        ({"game": "Pong", "noop_max": -1}, ["noop_max"]),
        ({"game": "Pong", "num_envs": 0}, ["num_envs"]),
        ({"game": "Pong", "seed": -1}, ["seed"]),
        ({"game": "Pong", "clip_rewards": "yes"}, ["clip_rewards"]),
        ({"game": "Pong", "device": "nodevice"}, ["device"]),
    ],
)
def test_atari_bad_input_fails_before_building(monkeypatch, kwargs, names):
    def no_build(*args, **kw):
        raise AssertionError("an env was built before the arguments were checked")

    monkeypatch.setattr(atari_envs, "_atari_base", no_build)
    monkeypatch.setattr(atari_envs, "_batched", no_build)
    game = kwargs.pop("game")
    with pytest.raises(ValueError) as info:
        make_atari_env(game, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg


def test_missing_rom_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ALE_ROMS_DIR", str(tmp_path))  # a ROM directory without Pong
    with pytest.raises(FileNotFoundError, match="'Pong'.*pong.bin"):
        make_atari_env("Pong")


def test_control_env():
    env = make_control_env("CartPole-v1", seed=0)
    td = env.reset()
    assert td["observation"].shape == (4,)
    roll = env.rollout(5)
    assert roll["action"].shape == (5, 2)
    assert roll["next", "episode_reward"].squeeze(-1).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert roll["next", "step_count"].squeeze(-1).tolist() == [1, 2, 3, 4, 5]

    env = make_control_env("CartPole-v1", seed=0, max_episode_steps=3, num_envs=2, parallel=False)
    roll = env.rollout(3, break_when_any_done=False)
    assert roll.shape == (2, 3)
    assert roll["next", "truncated"][:, -1].all()

    env = make_control_env("Acrobot-v1", categorical_action_encoding=True)
    assert env.rollout(2)["action"].shape == (2,)


@pytest.mark.parametrize(
    "env_id, names",
    [
        ("CartPol-v1", ["'CartPol-v1'", "'CartPole-v1'"]),
        ("Pendulum-v1", ["env_id", "'Pendulum-v1'", "discrete"]),
        ("ALE/Pong-v5", ["env_id", "make_atari_env"]),
        ("", ["env_id"]),
    ],
)
def test_control_bad_input(env_id, names):
    with pytest.raises(ValueError) as info:
        make_control_env(env_id)
    msg = str(info.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg
