"""Where a small-task recipe env step goes: timers around the module's methods, and parts alone.

One CartPole run (K = 1 and 5 by default) of the control recipe with wall-clock
timers wrapped around ``ControlDQNModule``'s collect / learn methods, then, in
isolation, a TorchRL env step of the control env, the acting policy with and
without gradients, the plain member network, and Lightning's own cost per
``training_step`` (a bare ``OnlineRLModule`` whose step does nothing). Prints
microseconds per env step or per call; writes nothing (the numbers are quoted
in docs/benchmarks.md under the small-task table).

    python benchmarks/profile_small_tasks.py            # ~2 min on 2 cores
"""

from __future__ import annotations

import collections
import time

import torch
from bench_small_tasks import config, recipe_rate
from tensordict.nn import TensorDictSequential

from torchrl_eaudeqn.trainers import ControlDQNModule

# The lean path's methods (the default); collector=torchrl goes through
# _store_batch / _sample / loss_module.forward instead.
PARTS = {
    "_begin_collect": "collect (total)",
    "_extend_replay": "  replay extend",
    "_forward_backward": "gradient step (total)",
}


def breakdown(k: int, steps: int = 4000, warm: int = 1000) -> None:
    times, calls = collections.defaultdict(float), collections.Counter()

    def timed(f, label):
        def g(*a, **kw):
            t = time.perf_counter()
            out = f(*a, **kw)
            times[label] += time.perf_counter() - t
            calls[label] += 1
            return out

        return g

    original = ControlDQNModule.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        for name, label in PARTS.items():
            setattr(self, name, timed(getattr(self, name), label))
        self.loss_module.td_losses = timed(self.loss_module.td_losses, "  loss forward")
        self.optimizer.step = timed(self.optimizer.step, "optimizer.step")
        self.updater.step = timed(self.updater.step, "updater.step")

    ControlDQNModule.__init__ = init
    try:
        cfg = config("cartpole", k, warm, steps, 256)
        rate = recipe_rate(cfg)
    finally:
        ControlDQNModule.__init__ = original
    print(f"K={k}: {rate:.0f} env steps/s in the learning phase ({1e6 / rate:.0f} us/env step)")
    for label, seconds in times.items():
        print(
            f"  {label:24s} {1e6 * seconds / cfg.env_steps:7.0f} us/env step ({calls[label]} calls)"
        )


def alone(n: int = 500) -> None:
    cfg = config("cartpole", 1, 1000, 4000, 256)
    module = ControlDQNModule(cfg)
    env = module.env_fn(seed=0, eval=False)
    td = env.reset()
    policy = TensorDictSequential(module.actor.policy, module.explore)
    net = module.actor.member_network(0)
    x = td["observation"].unsqueeze(0)

    def per_call(fn) -> float:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e6 * (time.perf_counter() - t) / n

    print(
        f"  TorchRL env step (GymEnv + RewardSum + StepCounter): "
        f"{per_call(lambda: env.step_and_maybe_reset(policy(td))[1]):.0f} us (policy included)"
    )
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            print(
                f"  acting policy + epsilon-greedy, grad {'on ' if grad else 'off'}: "
                f"{per_call(lambda: policy(td)):.0f} us"
            )
    with torch.no_grad():
        print(f"  plain member network, batch 1: {per_call(lambda: net(x)):.0f} us")
    env.close()


def lightning_floor(steps: int = 20_000) -> None:
    import dataclasses

    from _report import fit

    from torchrl_eaudeqn.trainers.base import OnlineRLModule

    @dataclasses.dataclass
    class Cfg:
        env_steps: int = steps
        train_freq: int = 1
        learning_starts: int = 0
        batch_size: int = 1
        buffer_size: int = 1
        log_every: int = 10**9
        eval_every: int = 0
        eval_episodes: int = 1
        eval_random_baseline: bool = False

    class Noop(OnlineRLModule):
        def __init__(self) -> None:
            super().__init__(Cfg(), None)
            self.optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), 0.0)

        def collect_and_learn(self) -> None:
            self.env_steps += self._credit
            self._credit = 0

    t = time.perf_counter()
    fit(Noop(), [])
    print(f"  Lightning, no-op training_step: {1e6 * (time.perf_counter() - t) / steps:.0f} us")


if __name__ == "__main__":
    torch.set_num_threads(2)
    for k in (1, 5):
        breakdown(k)
    alone()
    lightning_floor()
