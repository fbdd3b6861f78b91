"""Gradient-step time: EauDeQN (K masked members, one shared target) vs K dense DQN steps.

What is timed (batch 32, Adam):

* ``eaudeqn`` (one EauDeQN gradient step): ``loss_td = loss(batch)``,
  ``loss_td["loss"].backward()``, ``opt.step()``, ``opt.zero_grad()``,
  ``updater.step(loss_td)`` (masks re-applied, member losses summed). The
  updater's period is larger than the number of timed steps, so no target
  update happens while timing; target updates are timed on their own.
  The loss is called as the recipes call it: on plain tensors
  (``loss.td_losses``; the Atari recipe since 62dcfd3, the control recipe
  before); ``NetSpec.loss_call="tensordict"`` times the TensorDict loss.
  Every member is pruned to 50% first: ``apply_masks_`` skips a mask that
  keeps every weight, and a run's members are pruned after the first updates.
* ``eaudeqn`` without masks: the same step without ``updater.step`` (the
  ratio of the two is the mask overhead).
* ``updater_step``: ``updater.step(loss_td)`` alone (mask re-application and
  loss sums), a steadier measure of what the masks add than the difference
  of two whole steps.
* ``dense``: TorchRL's own ``DQNLoss`` (``delay_value=True``, TD(0), gamma
  0.99, l2) on a ``QValueActor`` over the same network, with a ``HardUpdate``
  that never fires. K independent dense DQN steps cost K times one step.
* ``floor`` (per K): the least a K-member step can cost, in plain PyTorch:
  one shared target forward (no grad) and K online steps of K separate
  copies of the network (forward, TD loss, one backward of their sum, one
  fused Adam step over all of them, ``zero_grad``). No masks, no ensemble.

Networks: an MLP 8 -> 256 -> 256 -> 4 (float observations), the Nature
CNN with a dense layer of width 512 (uint8 frames ``[4, 84, 84]``, 6 actions)
and the MinAtar CNN with the paper's dense layer of 128 (``[4, 10, 10]``
observations, 6 actions). Members K = 1, 2, 5, each with ``use_vmap=True``
and ``use_vmap=False``; ``use_vmap=None`` (auto) is calibrated once per K on
the same batch (``MaskedEnsemble.calibrate_vmap``) and its choice reported
beside the path that the timing found faster.

Method: every variant is warmed up, then timed in blocks of several steps
(block length calibrated per variant); the variants are visited round-robin,
in a freshly shuffled order at every repeat (a step with masks and the same
step without run back to back), so that machine noise hits them alike.
Reported: the median over repeats of ms per step. Ratios between two
variants are medians of the per-repeat ratios (paired, same repeat). The
project machines are shared: the run first waits (up to 120 s) for other
processes to go idle, and a block during which this process's threads waited
for a CPU (run-queue delay, ``--max-wait``) is re-run, then set aside.

Writes ``benchmarks/results/grad_step_<device>.json`` and refreshes the
``## Gradient step (<DEVICE>)`` section of ``docs/benchmarks.md`` (only the
text between its ``<!-- grad_step:<device>:start/end -->`` markers). A
``--quick`` run writes ``grad_step_<device>_quick.json`` and leaves the docs
alone unless ``--docs`` is given.

Usage::

    python benchmarks/bench_grad_step.py                 # full run (~4-5 min on 2 CPU cores)
    python benchmarks/bench_grad_step.py --quick         # < 1 min, noisier
    python benchmarks/bench_grad_step.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# TorchRL warns on every call of a loss whose target has no updater; silence it.
os.environ.setdefault("RL_WARNINGS", "False")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import tensordict  # noqa: E402
import torch  # noqa: E402
import torchrl  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import OneHot  # noqa: E402
from torchrl.modules import QValueActor  # noqa: E402
from torchrl.objectives import DQNLoss, HardUpdate, ValueEstimators  # noqa: E402

from torchrl_eaudeqn import (  # noqa: E402
    EauDeQNLoss,
    LinearSpeedGrid,
    MaskedEnsembleQValueActor,
    TargetSelectionUpdater,
    mlp,
    nature_cnn,
)
from torchrl_eaudeqn.modules.dqn import minatar_cnn  # noqa: E402
from torchrl_eaudeqn.modules.ensemble import (  # noqa: E402
    VMAP_MARGIN,
    calibrate_vmap_by_step,
    prune_member_to,
)

GAMMA = 0.99
LR = 6.25e-5  # docs/algorithm.md, "Paper settings (Atari)"
ADAM_EPS = 1.5e-4
NEVER = 10**9  # a target period no benchmark reaches
ATARI_PERIOD = 2000  # gradient steps between target updates on Atari
TARGET_K5_VS_DENSE = 0.85
TARGET_MASK_OVERHEAD = 1.10
TARGET_OVER_FLOOR = 1.10  # K = 2, 5 on the CNNs, the auto path (issue: K-member step at its floor)
SECTION_TITLE = {"cpu": "CPU", "cuda": "CUDA"}


# ----------------------------------------------------------------------------- setup
ADAM_IMPLS = ("default", "foreach", "fused")
_ADAM_IMPL = {"impl": "default"}


def make_adam(params) -> torch.optim.Adam:
    """Adam with the Atari settings; ``--adam`` picks torch's implementation (same for all)."""
    impl = _ADAM_IMPL["impl"]
    kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl, {})
    return torch.optim.Adam(params, lr=LR, eps=ADAM_EPS, **kwargs)


@dataclass(frozen=True)
class NetSpec:
    name: str
    label: str
    factory: Callable[[], torch.nn.Module]
    obs_shape: tuple[int, ...]
    obs_dtype: torch.dtype
    n_actions: int
    #: How the recipe for this kind of network calls the loss: on TensorDicts
    #: (the Atari recipe) or on plain tensors (``td_losses``, the control recipe).
    loss_call: str = "tensordict"


NETWORKS = {
    "mlp": NetSpec(
        "mlp", "MLP 8-256-256-4", lambda: mlp(8, 4, (256, 256)), (8,), torch.float32, 4, "tensors"
    ),
    "cnn": NetSpec(
        "cnn",
        "Nature CNN, width 512",
        lambda: nature_cnn(6, 512),
        (4, 84, 84),
        torch.uint8,
        6,
        "tensors",
    ),
    "minatar": NetSpec(
        "minatar",
        "MinAtar CNN, width 128",
        lambda: minatar_cnn(4, 6, 128),
        (4, 10, 10),
        torch.float32,
        6,
        "tensors",
    ),
}


@dataclass
class Variant:
    key: str
    net: str
    kind: str  # "dense" | "eaudeqn" | "updater_step" | "floor"
    k: int
    path: str | None  # "vmap" | "loop" | None
    masks: bool
    step: Callable[[], None]
    n_per_block: int = 1
    warmup_steps: int = 0
    times_ms: list[float] = field(default_factory=list)
    run_queue_wait: list[float | None] = field(default_factory=list)
    max_wait: float = math.inf
    retried: int = 0

    def clean_times(self) -> list[float]:
        """Times of the blocks whose threads waited for a CPU < ``max_wait`` of the time.

        All blocks when fewer than 3 are clean (the summary then says so).
        """
        clean = [
            t
            for t, f in zip(self.times_ms, self.run_queue_wait, strict=True)
            if f is None or f < self.max_wait
        ]
        return clean if len(clean) >= 3 else list(self.times_ms)

    def median(self) -> float:
        return statistics.median(self.clean_times())

    def summary(self) -> dict:
        t = sorted(self.clean_times())
        return {
            "net": self.net,
            "kind": self.kind,
            "k": self.k,
            "path": self.path,
            "masks": self.masks,
            "steps_per_block": self.n_per_block,
            "warmup_steps": self.warmup_steps,
            "median_ms": statistics.median(t),
            "p25_ms": _quantile(t, 0.25),
            "p75_ms": _quantile(t, 0.75),
            "min_ms": t[0],
            "blocks_used": len(t),
            "blocks_timed": len(self.times_ms),
            "blocks_retried": self.retried,
            "median_ms_all_blocks": statistics.median(self.times_ms),
            "ms_per_step_by_repeat": self.times_ms,
            "run_queue_wait_cores_by_repeat": self.run_queue_wait,
        }


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=4, method="inclusive")[int(q * 4) - 1]


def make_batch(spec: NetSpec, batch_size: int, device: torch.device, seed: int) -> TensorDict:
    gen = torch.Generator().manual_seed(seed)

    def obs() -> torch.Tensor:
        shape = (batch_size, *spec.obs_shape)
        if spec.obs_dtype == torch.uint8:
            return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        if spec.name == "minatar":  # binary channels
            return torch.randint(0, 2, shape, generator=gen).float()
        return torch.randn(shape, generator=gen)

    action = torch.randint(0, spec.n_actions, (batch_size,), generator=gen)
    terminated = torch.rand(batch_size, 1, generator=gen) < 0.05
    td = TensorDict(
        {
            "observation": obs(),
            "action": torch.nn.functional.one_hot(action, spec.n_actions),
            "next": {
                "observation": obs(),
                "reward": torch.randn(batch_size, 1, generator=gen).clamp(-1, 1),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        batch_size=[batch_size],
    )
    return td.to(device)


def build_dense(spec: NetSpec, batch: TensorDict, device: torch.device, seed: int):
    torch.manual_seed(seed)
    action_spec = OneHot(spec.n_actions, device=device)
    actor = QValueActor(spec.factory().to(device), spec=action_spec, in_keys=["observation"])
    loss = DQNLoss(actor, delay_value=True, loss_function="l2", action_space=action_spec)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=GAMMA)
    updater = HardUpdate(loss, value_network_update_interval=NEVER)
    opt = make_adam(loss.parameters())
    data = batch.clone()

    def step() -> None:
        loss_td = loss(data)
        loss_td["loss"].backward()
        opt.step()
        opt.zero_grad()
        updater.step()

    return loss, step


def build_floor(spec: NetSpec, k: int, batch: TensorDict, device: torch.device, seed: int):
    """K online steps and one shared target forward, plain PyTorch (the K-member floor)."""
    torch.manual_seed(seed)
    target = spec.factory().to(device).requires_grad_(False)
    nets = [spec.factory().to(device) for _ in range(k)]
    opt = make_adam([p for net in nets for p in net.parameters()])
    obs, next_obs = batch["observation"], batch["next", "observation"]
    action = batch["action"].argmax(-1, keepdim=True)
    reward = batch["next", "reward"].squeeze(-1)
    not_done = (~batch["next", "terminated"]).squeeze(-1).float()

    def step() -> None:
        with torch.no_grad():
            y = reward + GAMMA * not_done * target(next_obs).max(-1).values
        loss = sum((net(obs).gather(-1, action).squeeze(-1) - y).pow(2).mean() for net in nets)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def build_eaudeqn(
    spec: NetSpec,
    k: int,
    use_vmap: bool | None,
    batch: TensorDict,
    device: torch.device,
    seed: int,
    period: int = NEVER,
    prune: bool = True,
):
    torch.manual_seed(seed)
    actor = MaskedEnsembleQValueActor(
        spec.factory().to(device),
        k,
        action_spec=OneHot(spec.n_actions, device=device),
        use_vmap=use_vmap,
    ).to(device)
    # Every member pruned to half: apply_masks_ skips a mask that keeps every weight,
    # and mid-run the masks do prune, so the timing pays what a pruned member costs.
    for k_ in range(k if prune else 0):
        prune_member_to(actor, k_, 0.5)
    loss = EauDeQNLoss(actor)
    loss.make_value_estimator(gamma=GAMMA)
    opt = make_adam(loss.parameters())
    updater = TargetSelectionUpdater(loss, opt, period=period, speed_policy=LinearSpeedGrid(0.01))
    data = batch.clone()
    tensors = (
        data["observation"],
        data["action"].argmax(-1),
        data["next", "reward"].squeeze(-1),
        data["next", "observation"],
        data["next", "terminated"].squeeze(-1),
    )

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        if spec.loss_call == "tensors":
            return loss.td_losses(*tensors)
        loss_td = loss(data)
        return loss_td["loss"], loss_td["loss_per_member"]

    def step_masked() -> None:
        total, per_member = losses()
        total.backward()
        opt.step()
        opt.zero_grad()
        updater.step(per_member)

    def step_unmasked() -> None:
        total, _ = losses()
        total.backward()
        opt.step()
        opt.zero_grad()

    with torch.no_grad():
        fixed_td = loss(data.clone())

    def updater_only() -> None:
        updater.step(fixed_td)

    return loss, updater, step_masked, step_unmasked, updater_only


def _total_loss(spec: NetSpec, batch: TensorDict, loss: EauDeQNLoss) -> torch.Tensor:
    """The summed member losses on ``batch``, called as the recipe for ``spec`` calls them."""
    if spec.loss_call == "tensors":
        return loss.td_losses(
            batch["observation"],
            batch["action"].argmax(-1),
            batch["next", "reward"].squeeze(-1),
            batch["next", "observation"],
            batch["next", "terminated"].squeeze(-1),
        )[0]
    return loss(batch.clone())["loss"]


def build_variants(
    nets: Sequence[str], ks: Sequence[int], batch_size: int, device: torch.device, seed: int
) -> tuple[list[Variant], dict]:
    variants: list[Variant] = []
    sanity: dict = {}
    for net in nets:
        spec = NETWORKS[net]
        batch = make_batch(spec, batch_size, device, seed)
        dense_loss, dense_step = build_dense(spec, batch, device, seed)
        variants.append(Variant(f"{net}/dense", net, "dense", 1, None, False, dense_step))
        with torch.no_grad():
            dense_value = float(dense_loss(batch.clone())["loss"])
        sanity[net] = {"dqnloss_initial_loss": dense_value}
        for k in ks:
            for path in ("vmap", "loop"):
                # One ensemble for both: the two variants differ only in `updater.step`.
                loss, _, masked, unmasked, updater_only = build_eaudeqn(
                    spec, k, path == "vmap", batch, device, seed
                )
                base = f"{net}/eaudeqn/K{k}/{path}"
                variants.append(Variant(f"{base}/masks", net, "eaudeqn", k, path, True, masked))
                variants.append(
                    Variant(f"{base}/no_masks", net, "eaudeqn", k, path, False, unmasked)
                )
                with torch.no_grad():
                    per_member = loss(batch.clone())["loss_per_member"].tolist()
                sanity[net][f"K{k}/{path}/initial_loss_per_member"] = per_member
            # `updater.step` costs the same for both paths: time it once per K.
            variants.append(
                Variant(
                    f"{net}/updater_step/K{k}", net, "updater_step", k, None, True, updater_only
                )
            )
            floor = build_floor(spec, k, batch, device, seed)
            variants.append(Variant(f"{net}/floor/K{k}", net, "floor", k, None, False, floor))
            # What use_vmap=None (auto) chooses for this network, K, batch and device,
            # as the recipes decide it: whole gradient steps timed on both paths.
            auto_loss, auto_updater, *_ = build_eaudeqn(spec, k, None, batch, device, seed)
            calibrate_vmap_by_step(
                auto_loss, auto_updater.optimizers[0], functools.partial(_total_loss, spec, batch)
            )
            actor = auto_loss.value_network
            calib = dict(actor.vmap_calibration or {})
            sanity[net][f"K{k}/auto"] = {"vmap": actor.resolve_vmap(), **calib}
        if 1 in ks:
            dense_k1, *_ = build_eaudeqn(spec, 1, True, batch, device, seed, prune=False)
            with torch.no_grad():
                k1 = dense_k1(batch.clone())["loss_per_member"].tolist()
            # K=1, dense member, same initial weights and batch: both losses must agree.
            rel = abs(k1[0] - dense_value) / max(abs(dense_value), 1e-12)
            sanity[net]["K1_vs_dqnloss_rel_diff"] = rel
            if rel > 1e-4:
                warnings.warn(
                    f"{net}: K=1 EauDeQN loss differs from DQNLoss by {rel:.2e}", stacklevel=2
                )
    return variants, sanity


# ---------------------------------------------------------------------------- timing
class RunQueueWait:
    """How long this process's threads waited for a CPU while a block ran (Linux).

    Sums the run-queue delay of every thread (``/proc/self/task/*/schedstat``,
    nanoseconds): time a thread was ready to run but another process held the
    core. Divided by the block's wall time it reads as "cores' worth of
    waiting"; about 0 on a quiet machine. Blocks with more than
    ``--max-wait`` are set aside, so that other people's jobs on a shared
    machine do not leak into the numbers. ``None`` where unavailable.
    """

    def __init__(self) -> None:
        self.available = self._read() is not None

    @staticmethod
    def _read() -> int | None:
        total = 0
        try:
            tasks = os.listdir("/proc/self/task")
        except OSError:
            return None
        for tid in tasks:
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended meanwhile
        return total

    def start(self) -> tuple[float, int | None]:
        return time.perf_counter(), self._read()

    def stop(self, token: tuple[float, int | None]) -> float | None:
        t0, before = token
        after = self._read()
        if before is None or after is None:
            return None
        elapsed = max(time.perf_counter() - t0, 1e-9)
        return max(after - before, 0) / 1e9 / elapsed


def _cpu_busy_s() -> float | None:
    """CPU seconds all processes but this one have used since boot (Linux)."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    busy = sum(cpu[:8]) - cpu[3] - cpu[4]  # all but idle and iowait
    return (busy - int(own[11]) - int(own[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_s: float, busy_cores: float = 0.1, quiet_s: int = 3) -> float:
    """Wait (at most ``max_s``) until other processes use < ``busy_cores`` for ``quiet_s`` s.

    Returns the seconds waited.
    """
    t0 = time.perf_counter()
    if max_s <= 0 or _cpu_busy_s() is None:
        return 0.0
    quiet = 0
    last = _cpu_busy_s()
    while time.perf_counter() - t0 < max_s:
        time.sleep(1.0)
        now = _cpu_busy_s()
        quiet = quiet + 1 if now - last < busy_cores else 0
        last = now
        if quiet >= quiet_s:
            break
    return time.perf_counter() - t0


def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def time_block(step: Callable[[], None], n: int, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t0) / n * 1e3


def warm_up_and_calibrate(
    v: Variant, sync: Callable[[], None], min_steps: int, min_s: float, block_ms: float
) -> None:
    sync()
    t0 = time.perf_counter()
    steps = 0
    while steps < min_steps or time.perf_counter() - t0 < min_s:
        v.step()
        steps += 1
    sync()
    v.warmup_steps = steps
    est = min(time_block(v.step, max(1, min_steps), sync) for _ in range(3))
    v.n_per_block = max(1, min(1000, round(block_ms / max(est, 1e-3))))


def measure(
    fn: Callable[[], None],
    n: int,
    sync: Callable[[], None],
    monitor: RunQueueWait,
    max_wait: float,
    retries: int,
) -> tuple[float, float | None, int]:
    """Time ``n`` calls of ``fn`` (ms per call); re-run a block disturbed by other processes.

    Returns ``(ms, run-queue wait share, retries used)``; after ``retries``
    disturbed attempts the last one is returned (and later set aside).
    """
    for attempt in range(retries + 1):
        token = monitor.start()
        ms = time_block(fn, n, sync)
        wait = monitor.stop(token)
        if wait is None or wait < max_wait or attempt == retries:
            break
        time.sleep(0.2)
    return ms, wait, attempt


def time_target_updates(
    nets: Sequence[str],
    ks: Sequence[int],
    batch_size: int,
    device: torch.device,
    seed: int,
    repeats: int,
    sync: Callable[[], None],
    monitor: RunQueueWait,
    max_wait: float,
    retries: int,
) -> dict:
    """Time ``updater.update_target()`` (select, copy, magnitude-prune K-1 members)."""
    out: dict = {}
    for net in nets:
        spec = NETWORKS[net]
        batch = make_batch(spec, batch_size, device, seed)
        out[net] = {}
        for k in ks:
            _, updater, step, _, _ = build_eaudeqn(spec, k, True, batch, device, seed)
            step()
            times, waits = [], []
            for _ in range(repeats):
                ms, wait, _ = measure(updater.update_target, 1, sync, monitor, max_wait, retries)
                times.append(ms)
                waits.append(wait)
                step()  # the next period starts with a gradient step
            clean = [t for t, w in zip(times, waits, strict=True) if w is None or w < max_wait]
            med = statistics.median(clean or times)
            out[net][f"K{k}"] = {
                "median_ms": med,
                "times_ms": times,
                "run_queue_wait": waits,
                "amortized_ms_per_step_at_period_2000": med / ATARI_PERIOD,
            }
            print(f"  target update {net} K={k}: {med:.1f} ms", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------- ratios
def _paired(a: Variant, b: Variant, scale: float = 1.0) -> float:
    """Median over repeats of a / (scale * b), both timed in the same repeat.

    Only repeats where both blocks ran on a quiet machine count; with fewer
    than 3 of those, the ratio of the two variants' (clean) medians.
    """
    pairs = [
        x / (scale * y)
        for x, fx, y, fy in zip(
            a.times_ms, a.run_queue_wait, b.times_ms, b.run_queue_wait, strict=True
        )
        if (fx is None or fx < a.max_wait) and (fy is None or fy < b.max_wait)
    ]
    if len(pairs) >= 3:
        return statistics.median(pairs)
    return a.median() / (scale * b.median())


def derive(
    variants: dict[str, Variant], nets: Sequence[str], ks: Sequence[int], auto: dict
) -> dict:
    ratios: dict = {}
    for net in nets:
        dense = variants[f"{net}/dense"]
        r_net: dict = {}
        for k in ks:
            r_k: dict = {}
            for path in ("vmap", "loop"):
                masked = variants[f"{net}/eaudeqn/K{k}/{path}/masks"]
                unmasked = variants[f"{net}/eaudeqn/K{k}/{path}/no_masks"]
                upd = variants[f"{net}/updater_step/K{k}"]
                r_k[path] = {
                    "ours_over_k_dense": _paired(masked, dense, scale=k),
                    "ours_no_masks_over_k_dense": _paired(unmasked, dense, scale=k),
                    # Whole step with `updater.step` / the same step without it.
                    "mask_overhead": _paired(masked, unmasked),
                    # (no-mask step + updater.step timed alone) / no-mask step: steadier,
                    # but a lower bound (in the step, the mask pass also slows what follows).
                    "mask_overhead_direct": 1.0 + _paired(upd, unmasked),
                    "over_floor": _paired(masked, variants[f"{net}/floor/K{k}"]),
                    "no_masks_over_floor": _paired(unmasked, variants[f"{net}/floor/K{k}"]),
                }
            vm = variants[f"{net}/eaudeqn/K{k}/vmap/masks"]
            lp = variants[f"{net}/eaudeqn/K{k}/loop/masks"]
            r_k["vmap_over_loop"] = _paired(vm, lp)
            r_k["faster"] = "vmap" if r_k["vmap_over_loop"] < 1.0 else "loop"
            r_k["auto"] = "vmap" if auto[net][f"K{k}"] else "loop"
            r_k["auto_over_floor"] = r_k[r_k["auto"]]["over_floor"]
            r_net[f"K{k}"] = r_k
        ratios[net] = r_net
    return ratios


def verdicts(ratios: dict, nets: Sequence[str], ks: Sequence[int]) -> dict:
    out: dict = {
        "k5_target": TARGET_K5_VS_DENSE,
        "mask_target": TARGET_MASK_OVERHEAD,
        "floor_target": TARGET_OVER_FLOOR,
    }
    out["over_floor"] = {
        net: {
            f"K{k}": {
                "auto": ratios[net][f"K{k}"]["auto"],
                "ratio": ratios[net][f"K{k}"]["auto_over_floor"],
                "met": ratios[net][f"K{k}"]["auto_over_floor"] <= TARGET_OVER_FLOOR,
            }
            for k in ks
            if k > 1
        }
        for net in nets
        if net in ("cnn", "minatar")
    }
    if 5 in ks:
        out["k5_vs_5_dense"] = {
            net: {
                path: {
                    "ratio": ratios[net]["K5"][path]["ours_over_k_dense"],
                    "met": ratios[net]["K5"][path]["ours_over_k_dense"] <= TARGET_K5_VS_DENSE,
                }
                for path in ("vmap", "loop")
            }
            for net in nets
        }
    out["mask_overhead"] = {
        net: {
            f"K{k}/{path}": {
                "ratio": ratios[net][f"K{k}"][path]["mask_overhead"],
                "met": ratios[net][f"K{k}"][path]["mask_overhead"] <= TARGET_MASK_OVERHEAD,
            }
            for k in ks
            for path in ("vmap", "loop")
        }
        for net in nets
    }
    # Geometric mean of vmap/loop over the networks and the K > 1 settings (K = 1
    # has nothing to vectorise); auto decides per setting, this is the summary.
    logs = [
        math.log(ratios[net][f"K{k}"]["vmap_over_loop"]) for net in nets for k in ks if k > 1
    ] or [math.log(ratios[net][f"K{k}"]["vmap_over_loop"]) for net in nets for k in ks]
    geo = math.exp(sum(logs) / len(logs))
    out["vmap_over_loop_geomean"] = geo
    multi = [ratios[net][f"K{k}"] for net in nets for k in ks if k > 1]
    out["auto_settings"] = len(multi)
    out["auto_matched"] = sum(r["auto"] == r["faster"] for r in multi)
    return out


# --------------------------------------------------------------------------- reports
def environment(device: torch.device, threads: int) -> dict:
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_at_start"] = list(os.getloadavg())
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _fmt(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.1f}"


def markdown_section(result: dict) -> str:
    device = result["device"]
    title = SECTION_TITLE.get(device, device.upper())
    if result["config"]["optimizer"]["impl"] != "default":
        title += f", {result['config']['optimizer']['impl']} Adam"
    env = result["environment"]
    cfg = result["config"]
    meas = result["measurements"]
    ratios = result["ratios"]
    ver = result["verdicts"]
    ks = cfg["ks"]
    lines = [
        f"## Gradient step ({title})",
        "",
        f"Written by `benchmarks/bench_grad_step.py` on {result['timestamp'][:10]}: "
        f"{env.get('gpu', env['cpu_model'])}, {env['cpu_count']} CPU cores, "
        f"{cfg['threads']} torch threads, torch {env['torch']}, torchrl {env['torchrl']}, "
        f"batch {cfg['batch_size']}, Adam ({cfg['optimizer']['impl']} implementation, "
        f"the same for both). Median of {cfg['repeats']} interleaved repeats "
        "(ms per gradient step); blocks during which other processes kept this one waiting "
        f"for a CPU (>= {cfg['max_run_queue_wait']:.0%} of the time) were re-run or set aside "
        f"({result['blocks_set_aside']} of {result['blocks_timed']} set aside); ratios are "
        "medians of per-repeat ratios. "
        f"Raw numbers: `benchmarks/results/{result['json_name']}`. "
        f"Reproduce: `{result['command']}`.",
        "",
        "One EauDeQN step = loss on the batch (one shared target forward, K member "
        "forwards), backward, Adam step, `zero_grad`, `updater.step` (masks re-applied; "
        "every member pruned to 50%, as members are once a run has pruned). "
        "Dense = TorchRL `DQNLoss` (TD(0), `delay_value=True`) on a `QValueActor`, "
        "one step; K dense steps cost K times that. The loss is called as the recipes "
        "call it: on plain tensors (`EauDeQNLoss.td_losses`). "
        "Floor = plain PyTorch, K separate networks: one shared target forward, "
        "K forwards, one backward, one fused Adam step (no masks, no ensemble).",
        "",
    ]
    for net in cfg["nets"]:
        dense = meas[f"{net}/dense"]["median_ms"]
        lines += [
            f"### {NETWORKS[net].label}",
            "",
            f"Dense DQN step (TorchRL `DQNLoss`): **{_fmt(dense)} ms**.",
            "",
            "| K | path | EauDeQN ms/step | without masks | `updater.step` ms | K x dense ms "
            "| EauDeQN / (K x dense) | mask overhead | (`updater.step` alone) | floor ms "
            "| EauDeQN / floor (without masks) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k in ks:
            upd = meas[f"{net}/updater_step/K{k}"]["median_ms"]
            floor = meas[f"{net}/floor/K{k}"]["median_ms"]
            auto = ratios[net][f"K{k}"]["auto"]
            for path in ("vmap", "loop"):
                m = meas[f"{net}/eaudeqn/K{k}/{path}/masks"]["median_ms"]
                nm = meas[f"{net}/eaudeqn/K{k}/{path}/no_masks"]["median_ms"]
                r = ratios[net][f"K{k}"][path]
                label = f"{path} (auto)" if k > 1 and path == auto else path
                lines.append(
                    f"| {k} | {label} | {_fmt(m)} | {_fmt(nm)} | {_fmt(upd)} | {_fmt(k * dense)} "
                    f"| {r['ours_over_k_dense']:.2f}x | {(r['mask_overhead'] - 1) * 100:+.1f}% "
                    f"| {(r['mask_overhead_direct'] - 1) * 100:+.1f}% | {_fmt(floor)} "
                    f"| {r['over_floor']:.2f}x ({r['no_masks_over_floor']:.2f}x) |"
                )
        lines += [
            "",
            "Mask overhead = step with `updater.step` / the same step without it (timed back "
            "to back). The last column adds `updater.step` timed alone to the step without "
            "it: steadier, but a lower bound (inside a step it also slows what follows).",
            "",
        ]
    lines += [
        "### vmap or loop",
        "",
        "| network | K | vmap / loop | faster | auto chose (its calibration: vmap / loop ms) |",
        "|---|---|---:|---|---|",
    ]
    for net in cfg["nets"]:
        for k in ks:
            r = ratios[net][f"K{k}"]
            cal = result["sanity"][net][f"K{k}/auto"]
            chose = (
                f"{r['auto']} ({cal['vmap_ms']:.2f} / {cal['loop_ms']:.2f})"
                if "vmap_ms" in cal
                else f"{r['auto']} (K = 1: always)"
            )
            lines.append(
                f"| {NETWORKS[net].label} | {k} | {r['vmap_over_loop']:.2f} | {r['faster']} "
                f"| {chose} |"
            )
    lines += [
        "",
        f"`use_vmap=None` (auto) picks: {result['library_auto_rule']}. Here it chose the "
        f"path the timing found faster in {ver['auto_matched']} of {ver['auto_settings']} "
        "settings with K > 1 (a miss costs the vmap/loop ratio; near 1.0 the two tie). "
        f"Geometric mean of vmap/loop over the networks at K > 1: "
        f"{ver['vmap_over_loop_geomean']:.2f}.",
        "",
        "### Targets",
        "",
    ]
    for net, by_k in ver["over_floor"].items():
        parts = [
            f"K={key[1:]} {d['ratio']:.2f}x on {d['auto']} ({'met' if d['met'] else 'NOT met'})"
            for key, d in by_k.items()
        ]
        lines.append(
            f"- The auto path's K-member step <= {TARGET_OVER_FLOOR}x its floor, "
            f"{NETWORKS[net].label}: " + "; ".join(parts) + "."
        )
    if "k5_vs_5_dense" in ver:
        for net in cfg["nets"]:
            parts = [
                f"{path} {d['ratio']:.2f}x ({'met' if d['met'] else 'NOT met'})"
                for path, d in ver["k5_vs_5_dense"][net].items()
            ]
            lines.append(
                f"- K=5 EauDeQN <= {TARGET_K5_VS_DENSE}x five dense DQN steps, "
                f"{NETWORKS[net].label}: " + "; ".join(parts) + "."
            )
    for net in cfg["nets"]:
        worst_key, worst = max(ver["mask_overhead"][net].items(), key=lambda kv: kv[1]["ratio"])
        n_met = sum(d["met"] for d in ver["mask_overhead"][net].values())
        lines.append(
            f"- Masks add <= {round((TARGET_MASK_OVERHEAD - 1) * 100)}%, "
            f"{NETWORKS[net].label}: met in {n_met}/{len(ver['mask_overhead'][net])} "
            f"settings (worst {worst_key}: {(worst['ratio'] - 1) * 100:+.1f}%)."
        )
    if result.get("target_update"):
        lines += ["", "### Target update (select, copy, prune K-1 members)", ""]
        lines += ["| network | K | ms per update | per gradient step at period 2000 |"]
        lines += ["|---|---|---:|---:|"]
        for net, by_k in result["target_update"].items():
            for key, d in by_k.items():
                lines.append(
                    f"| {NETWORKS[net].label} | {key[1:]} | {_fmt(d['median_ms'])} "
                    f"| {d['amortized_ms_per_step_at_period_2000'] * 1e3:.1f} us |"
                )
    lines.append("")
    return "\n".join(lines)


def update_markdown(path: Path, tag: str, body: str) -> None:
    """Replace the text between the ``grad_step:<tag>`` markers (append it if absent)."""
    start = f"<!-- grad_step:{tag}:start -->"
    end = f"<!-- grad_step:{tag}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def print_summary(result: dict) -> None:
    meas, ratios = result["measurements"], result["ratios"]
    for net in result["config"]["nets"]:
        dense = meas[f"{net}/dense"]["median_ms"]
        print(f"\n{NETWORKS[net].label}: dense DQNLoss step {dense:.2f} ms")
        print(
            f"{'K':>2} {'path':>5} {'ms':>8} {'no-mask':>8} {'/Kdense':>8} {'mask':>7} "
            f"{'/floor':>7}"
        )
        for k in result["config"]["ks"]:
            for path in ("vmap", "loop"):
                base = f"{net}/eaudeqn/K{k}/{path}"
                r = ratios[net][f"K{k}"][path]
                print(
                    f"{k:>2} {path:>5} {meas[base + '/masks']['median_ms']:8.2f} "
                    f"{meas[base + '/no_masks']['median_ms']:8.2f} "
                    f"{r['ours_over_k_dense']:8.2f} {(r['mask_overhead'] - 1) * 100:+6.1f}% "
                    f"{r['over_floor']:7.2f}"
                )
            r = ratios[net][f"K{k}"]
            print(f"   vmap/loop {r['vmap_over_loop']:.2f} -> {r['faster']}; auto: {r['auto']}")
    v = result["verdicts"]
    print(f"\nauto chose the faster path in {v['auto_matched']}/{v['auto_settings']} settings")
    for net, by_k in v["over_floor"].items():
        for key, d in by_k.items():
            print(f"{net} {key} auto ({d['auto']}) / floor {d['ratio']:.2f} met={d['met']}")


# ------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to time on (default: cuda when available)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument(
        "--adam",
        choices=ADAM_IMPLS,
        default="fused",
        help="torch Adam implementation for every variant (default: fused, as the recipes "
        "use; results of the others go to their own JSON and docs section)",
    )
    p.add_argument("--quick", action="store_true", help="fast, noisier run (< 1 min on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant")
    p.add_argument("--block-ms", type=float, default=None, help="target length of a timed block")
    p.add_argument("--nets", default="mlp,cnn,minatar", help="comma list from: mlp, cnn, minatar")
    p.add_argument("--ks", default="1,2,5", help="comma list of member counts")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--max-wait",
        type=float,
        default=0.05,
        help="retry, then set aside, blocks whose threads waited for a CPU >= this share of time",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="before starting, wait up to this many seconds for other processes to go idle "
        "(default: 120, or 0 with --quick)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-target-update", action="store_true", help="skip timing target updates")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--docs-file", type=Path, default=ROOT / "docs" / "benchmarks.md")
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--docs", dest="docs", action="store_true", default=None)
    docs.add_argument("--no-docs", dest="docs", action="store_false")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    _ADAM_IMPL["impl"] = args.adam
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = set(nets) - set(NETWORKS)
    if unknown:
        raise SystemExit(f"unknown network(s) {sorted(unknown)}; choose from {sorted(NETWORKS)}")
    ks = sorted({int(k) for k in args.ks.split(",")})
    repeats = args.repeats or (5 if args.quick else 31)
    block_ms = args.block_ms or (25.0 if args.quick else 150.0)
    warm_steps, warm_s = (2, 0.05) if args.quick else (5, 0.5)
    retries = 1 if args.quick else 4
    write_docs = (not args.quick) if args.docs is None else args.docs
    sync = _sync_fn(device)
    wait_max = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 120.0)
    if wait_max > 0:
        print(f"waiting up to {wait_max:.0f} s for a quiet machine...", file=sys.stderr)
    waited = wait_for_quiet(wait_max)
    env = environment(device, args.threads)
    env["waited_for_quiet_s"] = waited
    t_start = time.perf_counter()

    print(f"building variants on {device} ({args.threads} threads)...", file=sys.stderr)
    variants, sanity = build_variants(nets, ks, args.batch_size, device, args.seed)
    print(f"warming up {len(variants)} variants...", file=sys.stderr)
    for v in variants:
        warm_up_and_calibrate(v, sync, warm_steps, warm_s, block_ms)
    monitor = RunQueueWait()
    for v in variants:
        v.max_wait = args.max_wait
    rng = random.Random(args.seed)
    # A step with masks and the same step without run back to back (in random
    # order), so that their ratio, the mask overhead, sees the same machine state.
    groups: dict[str, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.key.rsplit("/", 1)[0] if v.kind == "eaudeqn" else v.key, []).append(v)
    for r in range(repeats):
        blocks = list(groups.values())
        rng.shuffle(blocks)
        order = []
        for group in blocks:
            rng.shuffle(group)
            order += group
        gc.collect()
        for v in order:
            ms, wait, attempt = measure(
                v.step, v.n_per_block, sync, monitor, args.max_wait, retries
            )
            v.times_ms.append(ms)
            v.run_queue_wait.append(wait)
            v.retried += attempt
        busy = sum(1 for v in order if (v.run_queue_wait[-1] or 0.0) >= args.max_wait)
        print(
            f"  repeat {r + 1}/{repeats} ({time.perf_counter() - t_start:.0f} s, "
            f"{busy}/{len(order)} blocks disturbed by other processes)",
            file=sys.stderr,
        )

    by_key = {v.key: v for v in variants}
    auto = {net: {f"K{k}": sanity[net][f"K{k}/auto"]["vmap"] for k in ks} for net in nets}
    ratios = derive(by_key, nets, ks, auto)
    target_update = {}
    if not args.no_target_update:
        print("timing target updates...", file=sys.stderr)
        target_update = time_target_updates(
            nets,
            ks,
            args.batch_size,
            device,
            args.seed,
            2 if args.quick else 5,
            sync,
            monitor,
            args.max_wait,
            retries,
        )
    if hasattr(os, "getloadavg"):
        env["loadavg_at_end"] = list(os.getloadavg())

    suffix = "_quick" if args.quick else ""
    tag = device.type if args.adam == "fused" else f"{device.type}-{args.adam}-adam"
    json_name = f"grad_step_{tag}{suffix}.json"
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python benchmarks/bench_grad_step.py", *given])
    result = {
        "benchmark": "grad_step",
        "device": device.type,
        "quick": args.quick,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "json_name": json_name,
        "wall_s": None,
        "config": {
            "threads": args.threads,
            "batch_size": args.batch_size,
            "repeats": repeats,
            "block_ms": block_ms,
            "warmup": {"min_steps": warm_steps, "min_s": warm_s},
            "retries_per_disturbed_block": retries,
            "nets": nets,
            "ks": ks,
            "networks": {
                n: {
                    "label": NETWORKS[n].label,
                    "obs_shape": list(NETWORKS[n].obs_shape),
                    "obs_dtype": str(NETWORKS[n].obs_dtype),
                    "n_actions": NETWORKS[n].n_actions,
                }
                for n in nets
            },
            "optimizer": {"name": "Adam", "lr": LR, "eps": ADAM_EPS, "impl": args.adam},
            "gamma": GAMMA,
            "updater_period_during_timing": NEVER,
            "seed": args.seed,
            "max_run_queue_wait": args.max_wait,
            "run_queue_wait_monitor": monitor.available,
        },
        "environment": env,
        "library_auto_rule": "a loop when K = 1; for K > 1 the faster path, timed by the "
        "recipes on whole gradient steps before the first one (calibrate_vmap_by_step: "
        "loss, backward, Adam and masks on a copy; vmap only where it times at least "
        f"{VMAP_MARGIN:.0%} faster than the loop)",
        "measurements": {v.key: v.summary() for v in variants},
        "ratios": ratios,
        "k1_vs_dqnloss": {
            net: {path: ratios[net]["K1"][path]["ours_over_k_dense"] for path in ("vmap", "loop")}
            for net in nets
            if 1 in ks
        },
        "verdicts": verdicts(ratios, nets, ks),
        "blocks_timed": sum(len(v.times_ms) for v in variants),
        "blocks_set_aside": sum(
            1 for v in variants for w in v.run_queue_wait if w is not None and w >= args.max_wait
        ),
        "blocks_retried": sum(v.retried for v in variants),
        "target_update": target_update,
        "sanity": sanity,
    }
    result["wall_s"] = time.perf_counter() - t_start

    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / json_name
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if write_docs:
        update_markdown(args.docs_file, tag, markdown_section(result))
        print(f"updated {args.docs_file}", file=sys.stderr)
    print_summary(result)
    print(f"\ntotal {result['wall_s']:.0f} s", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
