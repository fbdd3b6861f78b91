"""The gradient step without Lightning's wrappers: the same hooks, steps and weights as with them.

``OnlineRLModule`` calls the callbacks' gradient-step hooks, ``backward`` and
``optimizer.step`` itself when Lightning would do nothing else
(``trainers.base._DirectStep``). Real Lightning fits on CartPole, one with
the direct path and one forced through Lightning's ``manual_backward`` and
``LightningOptimizer.step``.
"""

from __future__ import annotations

import lightning as L
import torch

from torchrl_eaudeqn.config import ControlConfig
from torchrl_eaudeqn.trainers import ControlDQNModule, TargetSelectionCallback
from torchrl_eaudeqn.trainers import base as trainer_base


class Recorder(L.Callback):
    """Every gradient-step hook call, with the step count and what the hook can see."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls.append(("before_backward", trainer.global_step, float(loss.detach())))

    def on_after_backward(self, trainer, pl_module):
        grads = [p.grad for p in pl_module.loss_module.parameters() if p.grad is not None]
        self.calls.append(
            ("after_backward", trainer.global_step, float(sum(g.sum() for g in grads)))
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        assert isinstance(optimizer, torch.optim.Optimizer)
        self.calls.append(("before_optimizer_step", trainer.global_step, pl_module._direct is None))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls.append(("batch_end", trainer.global_step, None))


def _fit(module_cls=ControlDQNModule):
    L.seed_everything(0, verbose=False)
    cfg = ControlConfig(
        env="CartPole-v1", width=8, num_members=2, progress_bar=False, env_steps=120,
        learning_starts=40, train_freq=2, target_period=20, buffer_size=200, batch_size=8,
        eval_episodes=1, eval_max_steps=20, eval_random_baseline=False, use_vmap="false",
        steps_per_call=4,
    )  # fmt: skip
    module = module_cls(cfg)
    rec = Recorder()
    trainer = L.Trainer(
        max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        callbacks=[TargetSelectionCallback(module.updater), rec], enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module)
    return module, trainer, rec


def test_direct_and_lightning_steps_call_the_same_hooks_and_train_the_same(monkeypatch):
    direct, d_trainer, d_rec = _fit()
    with monkeypatch.context() as m:
        m.setattr(trainer_base._DirectStep, "resolve", classmethod(lambda cls, module: None))
        via, v_trainer, v_rec = _fit()
    steps = v_trainer.global_step  # Lightning's count: one per optimizer step
    assert steps >= (120 - 40) // 2
    assert d_trainer.global_step == steps

    def progress(trainer):  # what a checkpoint saves of the step counts
        return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.state_dict()

    assert progress(d_trainer) == progress(v_trainer)
    kinds = [c[0] for c in d_rec.calls]
    assert kinds.count("before_backward") == kinds.count("before_optimizer_step") == steps
    # Same hooks, order, step counts, losses and gradients; only the path flag differs.
    strip = [c[:2] if c[0] == "before_optimizer_step" else c for c in d_rec.calls]
    assert strip == [c[:2] if c[0] == "before_optimizer_step" else c for c in v_rec.calls]
    assert all(c[2] is False for c in d_rec.calls if c[0] == "before_optimizer_step")
    assert all(c[2] is True for c in v_rec.calls if c[0] == "before_optimizer_step")
    for p, q in zip(direct.loss_module.parameters(), via.loss_module.parameters(), strict=True):
        assert torch.equal(p, q)
    assert direct.updater.history, "no target update: the weights compare too little"


class OwnHook(ControlDQNModule):
    """A module with its own after-backward hook: Lightning must run it, so no direct path."""

    seen = 0

    def on_after_backward(self):
        OwnHook.seen += 1


def test_a_module_with_its_own_gradient_hooks_goes_through_lightning():
    OwnHook.seen = 0
    _, trainer, rec = _fit(OwnHook)
    assert OwnHook.seen == trainer.global_step >= 40
    assert all(c[2] is True for c in rec.calls if c[0] == "before_optimizer_step")
