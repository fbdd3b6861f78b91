"""What the lean collectors share: epsilon schedule, output, worker thread, RNG state."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BackgroundCollection", "CollectedSteps", "linear_epsilon"]


def linear_epsilon(step: int, *, start: float, end: float, decay_steps: int, warmup: int) -> float:
    """Dopamine's linearly decaying epsilon: ``start`` until ``warmup``, then to ``end``.

    Args:
        step: env steps taken so far.
        start: epsilon during the warm-up and at its end.
        end: final epsilon, reached ``decay_steps`` after ``warmup``.
        decay_steps: length of the linear decay (>= 1).
        warmup: env steps of uniformly random acting before the decay starts.

    Example:
        >>> eps = lambda s: linear_epsilon(s, start=1.0, end=0.1, decay_steps=10, warmup=5)
        >>> [round(eps(s), 6) for s in (0, 5, 10, 20)]
        [1.0, 1.0, 0.55, 0.1]
    """
    if step < warmup:
        return 1.0
    frac = min(1.0, (step - warmup) / max(1, decay_steps))
    return start + frac * (end - start)


@dataclasses.dataclass
class CollectedSteps:
    """Transitions of one ``collect`` call, ``[num_envs, T]`` each (then the observation shape).

    ``reward`` is the learning reward (clipped when the collector was asked
    to), ``score_reward`` the raw one. ``terminated`` is the learning
    terminal (for Atari also a lost life when the collector was built with
    ``terminal_on_life_loss``). ``episodes`` lists ``(env, score, length)``
    of whole episodes that ended.

    Example:
        >>> z = np.zeros((1, 2))
        >>> CollectedSteps(z, z, z, z, z, z, z, []).num_steps
        2
    """

    observation: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    score_reward: np.ndarray
    next_observation: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episodes: list[tuple[int, float, int]]

    @property
    def num_steps(self) -> int:
        return int(self.action.size)


class BackgroundCollection:
    """``submit`` / ``result`` around a collector's ``collect``, in a worker thread or inline.

    A subclass calls :meth:`_start_worker` in its ``__init__`` and
    :meth:`_stop_worker` in its ``close``, and defines ``collect(steps,
    epsilon, network)``.

    Example:
        >>> class Counting(BackgroundCollection):
        ...     def __init__(self):
        ...         self._start_worker(False, "counting")
        ...     def collect(self, steps, epsilon, network=None):
        ...         return steps
        >>> c = Counting()
        >>> c.submit(3, 0.0)
        >>> c.result(), c.threaded
        (3, False)
    """

    _pool: concurrent.futures.ThreadPoolExecutor | None
    _future: concurrent.futures.Future | None

    def _start_worker(self, threaded: bool, name: str) -> None:
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=name, initializer=_one_thread
            )
            if threaded
            else None
        )
        self._future = None

    def _stop_worker(self) -> None:
        if self._future is not None:
            self._future.exception()
            self._future = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def threaded(self) -> bool:
        """Whether :meth:`submit` runs the collection in the worker thread."""
        return self._pool is not None

    def collect(
        self,
        steps_per_env: int,
        epsilon: float | Callable[[int], float],
        network: nn.Module | None = None,
    ) -> Any:
        raise NotImplementedError

    def submit(
        self,
        steps_per_env: int,
        epsilon: float | Callable[[int], float],
        network: nn.Module | None = None,
    ) -> None:
        """Start ``collect`` in the worker thread (inline without one); :meth:`result` waits.

        Pass ``network`` (looked up in the calling thread) when ``q_network()``
        must not run in the worker.
        """
        if self._future is not None:
            raise RuntimeError("a collection is already running; call result() first")
        if self._pool is None:
            self._future = concurrent.futures.Future()
            self._future.set_result(self.collect(steps_per_env, epsilon, network))
        else:
            self._future = self._pool.submit(self.collect, steps_per_env, epsilon, network)

    def result(self) -> Any:
        """Wait for the running collection and return its steps (re-raises its errors)."""
        if self._future is None:
            raise RuntimeError("no collection is running; call submit() first")
        future, self._future = self._future, None
        return future.result()


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A NumPy generator's state as plain values (loads with ``weights_only=True``)."""
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": dict(state["state"]),
        "has_uint32": state["has_uint32"],
        "uinteger": state["uinteger"],
    }


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` into ``rng``."""
    rng.bit_generator.state = {
        "bit_generator": state["bit_generator"],
        "state": dict(state["state"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def greedy_actions(
    network: nn.Module, observations: np.ndarray, device: torch.device
) -> np.ndarray:
    """``argmax_a Q(s, a)`` of ``network`` for a batch of NumPy observations."""
    obs = torch.from_numpy(observations).to(device)
    with torch.inference_mode():
        q = network(obs)
    return q.argmax(-1).cpu().numpy()


def _one_thread() -> None:
    # A batch-1 forward is as fast on one thread, and the cores stay the learner's.
    torch.set_num_threads(1)
