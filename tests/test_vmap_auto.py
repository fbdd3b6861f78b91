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
