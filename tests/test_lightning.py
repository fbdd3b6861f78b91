"""DQNLightningModule on a real ALE game with both collectors: counts, ratio, replay contents.

Also (CartPole, a real Lightning fit): nothing in the module, the updater or
the callbacks grows with the number of episodes or target updates.
"""

from __future__ import annotations

import functools
from collections import deque

import lightning as L
import pytest
import torch

from torchrl_eaudeqn.config import AtariConfig, load_config
from torchrl_eaudeqn.envs import make_atari_env
from torchrl_eaudeqn.lightning import DQNLightningModule, TargetSelectionCallback

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _fit(overrides, before_fit=None):
    cfg = load_config(
        AtariConfig,
        ROOT / "configs" / "atari" / "quick.yaml",
        [
            "env_steps=300", "learning_starts=100", "buffer_size=1000", "target_period=80",
            "log_every=100", "progress_bar=false", "eval_random_baseline=false",
            "eval_episodes=1", "eval_max_steps=50", "batch_size=8", *overrides,
        ],
    )  # fmt: skip

    def env_fn(seed, num_envs, eval):
        return make_atari_env(
            cfg.game,
            seed=seed,
            num_envs=num_envs,
            max_episode_steps=60,
            end_of_life=cfg.terminal_on_life_loss and not eval,
        )

    module = DQNLightningModule(cfg, env_fn)
    if before_fit is not None:
        before_fit(module)
    trainer = L.Trainer(
        max_epochs=-1, accelerator="cpu", devices=1, logger=False,
        callbacks=[TargetSelectionCallback(module.updater)], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module)
    return module


@pytest.mark.parametrize(
    "collector, num_envs, updates, overlap",
    [
        # Overlapped, a call learns when the steps *before* its collection reach
        # learning_starts (100 -> 296: 50 calls); sequential collectors collect
        # first (51 calls).
        ("lean", 1, 51, "false"),
        ("lean", 1, 50, "true"),
        ("lean", 2, 50, "true"),
        ("torchrl", 1, 51, "auto"),
    ],
)
def test_one_gradient_step_per_train_freq_env_steps(collector, num_envs, updates, overlap):
    module = _fit(
        ["method=dqn", f"collector={collector}", f"num_envs={num_envs}", f"overlap={overlap}"]
    )
    assert module.env_steps == 300
    assert len(module.replay) == 300
    # DQN keeps its Adam state across target updates: its step count is the update count.
    steps = {int(s["step"]) for s in module.optimizer.state.values()}
    assert steps == {updates}
    # Target updates every 80 env steps = 20 gradient steps.
    assert len(module.updater.history) == updates // 20
    batch = module.replay.sample(4)
    assert batch["observation"].dtype == torch.uint8
    assert batch["action"].shape == (4, module.n_actions)
    assert batch["action"].sum(-1).eq(1).all()


def test_lr_end_fraction_decays_the_rate_linearly_by_env_step():
    seen = []

    def record(module):
        def hook(opt, args, kwargs):
            seen.append((module.env_steps, opt.param_groups[0]["lr"]))

        module.optimizer.register_step_pre_hook(hook)

    module = _fit(["method=eaudeqn", "lr=1e-3", "lr_end_fraction=0.1"], before_fit=record)
    # 1e-3 at learning_starts (100), 1e-4 at env_steps (300), linear between.
    assert module.lr_now(0) == module.lr_now(100) == pytest.approx(1e-3)
    assert module.lr_now(200) == pytest.approx(5.5e-4)
    assert module.lr_now(300) == module.lr_now(10_000) == pytest.approx(1e-4)
    assert len(seen) >= 40
    # Each gradient step ran at the rate of the env step its call started from
    # (sequential collection: the call's train_freq steps come first).
    for steps, lr in seen:
        assert lr == pytest.approx(module.lr_now(steps - module.cfg.train_freq))
    assert seen[0][1] > seen[-1][1] > 1e-4 - 1e-12


def test_rmsprop_is_centered_with_the_config_values_and_reset_at_each_selection():
    steps = []

    def record(module):
        module.optimizer.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))

    module = _fit(
        [
            "method=eaudeqn",
            "optimizer=rmsprop",
            "lr=2.5e-4",
            "lr_end_fraction=1",
            "rmsprop_alpha=0.9",
        ],
        before_fit=record,
    )
    opt = module.optimizer
    assert isinstance(opt, torch.optim.RMSprop)
    group = opt.param_groups[0]
    assert (group["lr"], group["alpha"], group["eps"], group["centered"]) == (
        2.5e-4,
        0.9,
        0.01,
        True,
    )
    assert {id(p) for p in module.loss_module.parameters()} == {id(p) for p in group["params"]}
    # Selections every 80 env steps = 20 gradient steps: each one cleared the
    # members' RMSprop state, so no member has been stepped since the start.
    assert module.updater.history_total >= 2 and len(steps) >= 40
    members = list(module.actor.parameters())
    counts = [int(opt.state[p]["step"]) for p in members if p in opt.state]
    assert counts and max(counts) < len(steps)
    assert all("grad_avg" in opt.state[p] for p in members if p in opt.state)  # centered


def test_the_plain_tensor_loss_trains_exactly_as_the_tensordict_loss():
    """The Atari module's loss on the replay's plain tensors (``sample_tensors`` +
    ``td_losses``) against the base module's TensorDict loss on the same seeded run:
    the same selections, member losses, optimizer state and weights, bit for bit."""
    from torchrl_eaudeqn.trainers.base import OnlineRLModule

    def tensordict_loss(module):
        module._forward_backward = functools.partial(OnlineRLModule._forward_backward, module)

    runs = []
    for before_fit in (None, tensordict_loss):
        L.seed_everything(0, verbose=False)
        module = _fit(
            ["method=eaudeqn", "collector=lean", "overlap=false", "max_speed=0.3",
             "use_vmap=false"],
            before_fit,
        )  # fmt: skip
        runs.append(module)
    plain, td = runs
    assert plain.updater.history, "no target update: the run proves nothing"
    assert [e.get("selected") for e in plain.updater.history] == [
        e.get("selected") for e in td.updater.history
    ]
    for a, b in zip(plain.updater.history, td.updater.history, strict=True):
        assert torch.equal(torch.as_tensor(a["loss_sums"]), torch.as_tensor(b["loss_sums"]))
    for (name, p), q in zip(
        plain.loss_module.named_parameters(), td.loss_module.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    assert plain.actor.sparsity().max() > 0


def test_lean_collector_prunes_and_acts_with_the_selected_member():
    module = _fit(["collector=lean", "overlap=true", "max_speed=0.3"])
    sparsity = module.actor.sparsity()
    assert module.updater.history and sparsity.max() > 0.0
    # The acting network aliases the selected member, masks included.
    net = module._acting_network()
    x = torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(net(x), module.actor.member_values(module.actor.selected, x))
    assert module.epsilon_now() == module.epsilon_at() < 1.0


@pytest.mark.parametrize("collector", ["lean", "torchrl"])
def test_terminal_on_life_loss_reaches_the_replay(collector):
    """RoadRunner under random play loses lives within tens of steps: with the option the
    replay holds more terminals than games ended; without it, exactly one per game."""

    def terminals(module):
        arrays = module.replay._arrays
        return int((arrays["terminated"] & arrays["valid"]).sum())

    plain = _fit(
        ["method=dqn", f"collector={collector}", "max_episode_steps=400",
         "terminal_on_life_loss=false"]  # the quick preset turns it on
    )  # fmt: skip
    lost = _fit(
        ["method=dqn", f"collector={collector}", "max_episode_steps=400",
         "terminal_on_life_loss=true"]
    )  # fmt: skip
    assert terminals(plain) <= plain.episodes
    assert terminals(lost) > lost.episodes


def test_periodic_evaluation_sees_the_masked_network_and_skips_the_last_step(monkeypatch):
    """eval_every evaluates during training, with every pruned weight exactly 0 (the
    evaluation runs inside training_step, after the optimizer step and before the
    updater callback re-applies the masks), and not at the final step (the recipe's
    final evaluation logs that one)."""
    seen = []

    def fake_evaluate(self, episodes, **kw):
        params = self.actor.flat_params()
        revived = sum(int((params[n][~m] != 0).sum()) for n, m in self.actor.flat_masks().items())
        seen.append((self.env_steps, float(self.actor.sparsity().max()), revived))

    monkeypatch.setattr(DQNLightningModule, "evaluate", fake_evaluate)
    _fit(["eval_every=100", "max_speed=0.3"])
    assert [s for s, _, _ in seen] == [100, 200]
    assert seen[-1][1] > 0.0  # members are pruned by then
    assert [r for _, _, r in seen] == [0, 0]


def test_learning_starts_beyond_the_buffer_and_no_replay_scan_per_step(monkeypatch):
    """learning_starts > buffer_size: learning waits for a full buffer, then starts (it
    used to wait on len(replay), which stays a few slots below capacity once the buffer
    wraps, so it never started). The loop never calls len(replay), an O(capacity) scan
    (13 ms at 1M slots)."""
    from torchrl_eaudeqn.replay import FrameReplayBuffer

    def no_scan(self):
        raise AssertionError("len(FrameReplayBuffer) called in the training loop")

    monkeypatch.setattr(FrameReplayBuffer, "__len__", no_scan)
    module = _fit(["method=dqn", "collector=lean", "buffer_size=64", "learning_starts=100"])
    assert module.replay.num_stored == 64
    steps = {int(s["step"]) for s in module.optimizer.state.values()}
    assert steps == {51}  # env steps 100..300, one update per 4


def test_prune_structure_filters_from_the_config_to_the_compact_agent():
    """prune_structure=filters in a real run: the members lose whole conv filters and
    the compact form of the sparsest member drops those channels, same outputs."""
    from torchrl_eaudeqn.export import compact

    module = _fit(["collector=lean", "max_speed=0.3", "prune_structure=filters"])
    assert module.updater.structure == "filters"
    masks = module.actor.flat_masks()
    convs = {n: m for n, m in masks.items() if m.dim() == 5}  # [K, out, in, kh, kw]
    for m in convs.values():
        rows = m.flatten(2)
        assert bool((rows.all(-1) | ~rows.any(-1)).all())
    net = module.actor.member_network(int(module.actor.sparsity().argmax()))
    small = compact(net)
    assert small.removed_channels
    x = torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-5)


def test_memory_does_not_grow_per_episode_or_per_target_update(monkeypatch):
    from torchrl_eaudeqn.control import ControlConfig, ControlDQNModule
    from torchrl_eaudeqn.updaters.common import TrainerHooks

    monkeypatch.setattr(TrainerHooks, "history_len", 16)  # default 1000; a run passes 16 fast
    cfg = load_config(ControlConfig, overrides=[
        "task=CartPole-v1", "width=8", "num_members=2", "env_steps=600", "learning_starts=20",
        "target_period=2", "buffer_size=200", "batch_size=8", "log_every=5",
        "eval_random_baseline=false", "progress_bar=false", "threads=1",
    ])  # fmt: skip
    module = ControlDQNModule(cfg)
    seen = []
    callback = TargetSelectionCallback(module.updater, on_update=seen.append)
    trainer = L.Trainer(
        max_epochs=-1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module)
    updater = module.updater
    assert module.episodes >= 20 and updater.history_total >= 150
    # Every target update reached the callback (and MLflow in the recipes); 16 are kept.
    assert len(seen) == updater.history_total
    assert len(updater.history) == 16 and list(updater.history) == seen[-16:]
    assert len(updater.state_dict()["history"]) == 16  # what a checkpoint holds
    # Nothing else grows with episodes or target updates.
    bound = min(module.episodes, updater.history_total)
    for owner in (module, updater, callback):
        for name, value in vars(owner).items():
            if isinstance(value, (list, deque, dict, set, tuple)):
                assert len(value) < bound, (type(owner).__name__, name, len(value))
    # A checkpoint of an older version (the whole history) loads bounded.
    old = {**updater.state_dict(), "history": [{"step": i} for i in range(40)]}
    del old["history_total"]
    updater.load_state_dict(old)
    assert [h["step"] for h in updater.history] == list(range(24, 40))
    assert updater.history_total == 40


def test_every_family_runs_the_one_collect_and_learn_loop():
    from torchrl_eaudeqn.trainers import ControlDQNModule, DQNLightningModule, SACLightningModule
    from torchrl_eaudeqn.trainers.base import OnlineRLModule

    for cls in (DQNLightningModule, SACLightningModule, ControlDQNModule):
        assert cls.collect_and_learn is OnlineRLModule.collect_and_learn, cls.__name__
