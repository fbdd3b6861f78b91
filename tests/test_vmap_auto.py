"""``use_vmap=None`` (auto): the faster path by measurement, kept across a resume."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torchrl.data import OneHot

from torchrl_eaudeqn import MaskedEnsembleQValueActor, mlp
from torchrl_eaudeqn.modules import ensemble as ensemble_mod
from torchrl_eaudeqn.modules.ensemble import MaskedEnsemble


@pytest.fixture(autouse=True)
def _fresh_calibrations(monkeypatch):
    monkeypatch.setattr(ensemble_mod, "_VMAP_CALIBRATIONS", {})


class _SlowPath(MaskedEnsemble):
    """An ensemble whose ``slow`` path sleeps: the calibration must pick the other."""

    slow = True

    def _ensemble(self, params, vmap, *inputs):
        if vmap == self.slow:
            time.sleep(0.004)
        return super()._ensemble(params, vmap, *inputs)


@pytest.mark.parametrize("slow", [True, False])
def test_auto_picks_the_path_that_measures_faster(slow):
    ens = _SlowPath(nn.Linear(3, 2), 3)
    ens.slow = slow
    ens.ensemble_call(torch.zeros(4, 3))
    assert ens.auto_vmap is (not slow)
    assert ens.resolve_vmap() is (not slow)
    cal = ens.vmap_calibration
    slow_ms, fast_ms = (cal["vmap_ms"], cal["loop_ms"])[:: 1 if slow else -1]
    assert slow_ms > fast_ms + 3.0


def test_calibration_leaves_parameters_gradients_and_rng_alone():
    torch.manual_seed(0)
    actor = MaskedEnsembleQValueActor(mlp(4, 2, (8,)), 3, action_spec=OneHot(2))
    before = {k: v.clone() for k, v in actor.flat_params().items()}
    x = torch.randn(5, 4)
    rng = torch.get_rng_state()
    out = actor.ensemble_call(x)
    assert actor.auto_vmap is not None and not actor.vmap_calibration["cached"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in actor.flat_params().items())
    assert all(p.grad is None for p in actor.parameters())
    # The call's output is the chosen path's, with a graph to the real parameters.
    actor.use_vmap = actor.auto_vmap
    assert torch.equal(out, actor.ensemble_call(x))
    out.sum().backward()
    assert all(p.grad is not None for p in actor.params.values(True, True))


def test_same_shape_decides_once_per_process_and_k1_never_calibrates():
    a = MaskedEnsemble(nn.Linear(3, 2), 2)
    b = MaskedEnsemble(nn.Linear(3, 2), 2)
    a.ensemble_call(torch.zeros(4, 3))
    b.ensemble_call(torch.zeros(4, 3))
    assert b.vmap_calibration["cached"] and b.auto_vmap == a.auto_vmap
    other_batch = MaskedEnsemble(nn.Linear(3, 2), 2)
    other_batch.ensemble_call(torch.zeros(9, 3))
    assert not other_batch.vmap_calibration["cached"]
    one = MaskedEnsemble(nn.Linear(3, 2), 1)
    one.ensemble_call(torch.zeros(4, 3))
    assert one.auto_vmap is None and one.vmap_calibration is None and not one.resolve_vmap()


def test_an_explicit_path_or_a_functorch_transform_skips_the_calibration():
    fixed = MaskedEnsemble(nn.Linear(3, 2), 2, use_vmap=False)
    fixed.ensemble_call(torch.zeros(4, 3))
    assert fixed.vmap_calibration is None and not fixed.resolve_vmap()
    ens = MaskedEnsemble(nn.Linear(3, 2), 2)
    torch.vmap(lambda x: ens.ensemble_call(x))(torch.zeros(5, 4, 3))
    assert ens.auto_vmap is None and ens.resolve_vmap()  # undecided: vmap, as before


def test_checkpoints_keep_the_choice_and_old_ones_mean_vmap():
    from torchrl_eaudeqn.control import ControlConfig, ControlDQNModule

    module = ControlDQNModule(
        ControlConfig(env="CartPole-v1", width=8, num_members=3, progress_bar=False)
    )
    assert module._vmap_paths() == {"actor": None}
    module.actor.auto_vmap = False
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert ckpt["eaudeqn"]["vmap_paths"] == {"actor": False}

    fresh = ControlDQNModule(module.cfg)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.actor.auto_vmap is False
    legacy = {"eaudeqn": {k: v for k, v in ckpt["eaudeqn"].items() if k != "vmap_paths"}}
    old = ControlDQNModule(module.cfg)
    old.on_load_checkpoint(legacy)
    assert old.actor.auto_vmap is True  # before the calibration, auto meant vmap for K > 1


def _loss_and_batch(k: int = 3):
    from torchrl_eaudeqn import EauDeQNLoss

    torch.manual_seed(0)
    actor = MaskedEnsembleQValueActor(mlp(4, 2, (8,)), k, action_spec=OneHot(2))
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=0.9)
    x, a = torch.randn(8, 4), torch.randint(2, (8,))
    r, done = torch.randn(8), torch.zeros(8, dtype=torch.bool)
    return actor, loss, (x, a, r, x, done)


@pytest.mark.parametrize("slow", [True, False])
def test_the_whole_step_calibration_sees_costs_outside_the_members_forward(slow):
    """The loss is slow on one path only after the members' forward: only whole steps see it."""
    from torchrl_eaudeqn.modules.ensemble import calibrate_vmap_by_step

    actor, loss, batch = _loss_and_batch()
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)

    def loss_fn(lm):
        out = lm.td_losses(*batch)[0]
        if lm.value_network.use_vmap == slow:
            time.sleep(0.004)
        return out

    cal = calibrate_vmap_by_step(loss, opt, loss_fn)
    assert cal["whole_step"] and not cal["cached"]
    assert actor.auto_vmap is (not slow) and actor.vmap_calibration["whole_step"]
    slow_ms, fast_ms = (cal["vmap_ms"], cal["loop_ms"])[:: 1 if slow else -1]
    assert slow_ms > fast_ms + 3.0
    # Decided: the members' own forward-and-backward calibration does not run.
    actor.ensemble_call(batch[0])
    assert actor.vmap_calibration["whole_step"]


def test_the_whole_step_calibration_leaves_the_run_alone():
    from torchrl_eaudeqn.modules.ensemble import calibrate_vmap_by_step

    actor, loss, batch = _loss_and_batch()
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    loss.td_losses(*batch)[0].backward()
    opt.step()  # the optimizer has state, the parameters have gradients
    params = {k: v.clone() for k, v in loss.state_dict().items()}
    grads = [p.grad.clone() for p in loss.parameters() if p.grad is not None]
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state.items()}
    rng = torch.get_rng_state()
    calibrate_vmap_by_step(loss, opt, lambda lm: lm.td_losses(*batch)[0], key="b8")
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(params[k], v) for k, v in loss.state_dict().items())
    now = [p.grad for p in loss.parameters() if p.grad is not None]
    assert all(torch.equal(g, h) for g, h in zip(grads, now, strict=True))
    assert all(torch.equal(state[k][n], t) for k, v in opt.state.items() for n, t in v.items())
    # Remembered under its key; one member or an explicit path: nothing to decide.
    _, again, _ = _loss_and_batch()
    cal = calibrate_vmap_by_step(again, opt, lambda lm: lm.td_losses(*batch)[0], key="b8")
    assert cal["cached"] and again.value_network.auto_vmap == actor.auto_vmap
    _, one, _ = _loss_and_batch(k=1)
    assert calibrate_vmap_by_step(one, opt, lambda lm: lm.td_losses(*batch)[0]) is None


def test_the_recipes_decide_by_whole_steps_before_the_first_gradient_step():
    import lightning as L

    from torchrl_eaudeqn.control import ControlConfig, ControlDQNModule
    from torchrl_eaudeqn.trainers import TargetSelectionCallback

    for collector in ("lean", "torchrl"):
        cfg = ControlConfig(env="CartPole-v1", width=8, num_members=3, progress_bar=False,
                            env_steps=60, learning_starts=40, batch_size=8, buffer_size=100,
                            eval_random_baseline=False, collector=collector)  # fmt: skip
        module = ControlDQNModule(cfg)
        L.Trainer(max_epochs=-1, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False,
                  callbacks=[TargetSelectionCallback(module.updater)]).fit(module)  # fmt: skip
        assert module.actor.vmap_calibration["whole_step"], collector
        assert module._vmap_paths() == {"actor": module.actor.vmap_calibration["vmap"]}
