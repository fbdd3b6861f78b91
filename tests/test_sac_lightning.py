"""SACLightningModule on a real env: step ratio, selections, masks, acting, checkpoint state."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type

from torchrl_eaudeqn.config import SACConfig, load_config
from torchrl_eaudeqn.envs import make_continuous_env
from torchrl_eaudeqn.lightning import (
    OnlineRLModule,
    SACLightningModule,
    TargetSelectionCallback,
    build_sac_updater,
)
from torchrl_eaudeqn.sac import PolyPruneSACUpdater, SACTargetSelectionUpdater


def _module(overrides):
    cfg = load_config(
        SACConfig,
        overrides=[
            "env=Pendulum-v1", "env_steps=240", "learning_starts=60", "buffer_size=1000",
            "batch_size=16", "hidden=16", "selection_period=40", "train_freq=2",
            "max_episode_steps=50", "log_every=100", "eval_every=0", "eval_episodes=1",
            "eval_max_steps=20", "progress_bar=false", "max_speed=0.3", *overrides,
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    return SACLightningModule(
        cfg, lambda seed, eval: make_continuous_env(cfg.env, seed=seed, max_episode_steps=50)
    )


def _fit(module):
    trainer = L.Trainer(
        max_epochs=-1, accelerator="cpu", devices=1, logger=False,
        callbacks=[TargetSelectionCallback(module.updater)], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module)
    return trainer


def _masks_hold(ens):
    for key, mask in ens.masks.items(True, True):
        assert (ens.params.get(key).data[~mask] == 0).all()


def test_eaudesac_module_trains_selects_and_prunes():
    module = _module(["num_members=3"])
    assert isinstance(module, OnlineRLModule)
    _fit(module)
    assert module.env_steps == 240 and len(module.replay) == 240
    assert module.episodes == 240 // 50
    # Calls 30..119 collect first, then learn (from 60 env steps on): 91 gradient
    # steps; a selection every 40 / 2 = 20 of them.
    assert module.updater.num_steps == 91 and len(module.updater.history) == 4
    for ens in (module.actor, module.critic):
        _masks_hold(ens)
        assert float(ens.sparsity().max()) > 0.0
    # Acting and evaluation use the selected actor member, deterministically.
    obs = torch.randn(4, 3)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        acted = module.actor(TensorDict(observation=obs, batch_size=[4]))["action"]
    torch.testing.assert_close(acted, module.acting_policy()(obs))
    result = module.evaluate(1)
    assert result["eval/episode_length"] == 20.0 and module.eval_results[-1]["env_steps"] == 240


def test_checkpoint_state_round_trip():
    module = _module(["num_members=2", "env_steps=100"])
    trainer = _fit(module)
    ckpt = {}
    module.on_save_checkpoint(ckpt)
    state = ckpt["eaudeqn"]
    assert state["config"]["env"] == "Pendulum-v1" and state["env_steps"] == 100
    fresh = _module(["num_members=2", "env_steps=100"])
    fresh.on_load_checkpoint(ckpt)
    assert (fresh.env_steps, fresh.episodes) == (module.env_steps, module.episodes)
    assert trainer.callbacks[0].state_dict()["num_steps"] == module.updater.num_steps


@pytest.mark.parametrize(
    "method, updater, members",
    [("polyprune", PolyPruneSACUpdater, 1), ("sac", SACTargetSelectionUpdater, 1)],
)
def test_baselines_from_the_same_parts(method, updater, members):
    module = _module([f"method={method}", "num_members=4", "prune_start=60", "prune_end=200",
                      "prune_every=20", "final_sparsity=0.5"])  # fmt: skip
    assert isinstance(module.updater, updater)
    assert module.actor.num_members == members and module.critic.num_members == members
    _fit(module)
    sparsity = (float(module.actor.sparsity()[0]), float(module.critic.sparsity()[0]))
    if method == "sac":
        assert sparsity == (0.0, 0.0) and len(module.optimizer.state) > 0
    else:
        # The schedule ends at (200 - 60) / 2 = 70 gradient steps (of 91): 0.5 reached.
        assert sparsity == pytest.approx((0.5, 0.5), abs=0.01)
        _masks_hold(module.actor)
        _masks_hold(module.critic)


def test_build_sac_updater_converts_env_steps_to_gradient_steps():
    module = _module(["num_members=2", "selection_period=40", "train_freq=4", "tau=0.02"])
    up = build_sac_updater(module.cfg, module.loss_module, module.optimizer)
    assert (up.period, up.tau) == (10, 0.02)
    assert up.actor_speed_policy is not up.speed_policy
