"""Memory-lean uniform replay for stacked pixel observations.

:class:`FrameReplayBuffer` stores every 84x84 ``uint8`` frame once and
rebuilds the frame stacks of ``s`` and ``s'`` when it samples, so 1M Atari
transitions take ~7.07 GB instead of the ~14 GB of one frame per
``observation`` plus one per ``("next", "observation")``, or the ~56 GB of
stored uint8 stacks.

Why not TorchRL's own route. TorchRL documents
``CatFrames.make_rb_transform_and_sampler``: a ``ReplayBuffer`` holding single
frames, a ``SliceSampler`` and ``CatFrames`` applied at sampling time.
Measured on the 2-core CI machine (20k transitions, batch 32; rerun with
``benchmarks/bench_replay.py``), it stored 14,135 bytes per transition
(``("next", "observation")`` is a second copy of every frame, so 1M
transitions need ~14.1 GB, over the 8 GB target) and took 75-400 ms per
sample (it unfolds windows for 4x the batch, then keeps one), against a
budget of ~1.9 ms (10% of one ~19 ms Nature-CNN DQN update). This module
holds 1M transitions in 7.07 GB (7,075 bytes each, RSS growth 7.09 GB) and
samples a batch of 32 from them in 0.4-0.9 ms on the same, busy, machine.

Layout. Each *stream* (one per env of a batched collector) is a circular
buffer of slots. A slot holds one frame plus the transition that *leaves*
that frame: action, clipped reward, terminated, truncated, and ``hist``, the
number of earlier frames of the same episode (capped at ``stack - 1``). The
next observation of slot ``i`` is slot ``i + 1``, so next frames are never
duplicated. When an episode ends, its final frame gets a slot of its own
with no transition, so ``s'`` of a truncated episode is exact; this costs
one frame per episode.

Episode boundaries are never crossed: a stack only reads the ``hist``
previous frames; older positions are padded with zeros (``padding="zeros"``,
Dopamine's convention and what :func:`~torchrl_eaudeqn.envs.make_atari_env`
produces) or with the episode's first frame (``padding="first"``, the
convention of gymnasium's ``FrameStackObservation`` and TorchRL's default
``CatFrames``). Transitions whose history was already overwritten by the
circular writes are never sampled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from ..validation import frame_replay_layout

__all__ = ["FrameReplayBuffer"]

_ARRAYS = ("frames", "action", "reward", "terminated", "truncated", "valid", "hist")
_STATE_FILE = "state.json"


class FrameReplayBuffer:
    """Uniform replay that stores each pixel frame once and rebuilds stacks on sampling.

    Args:
        capacity: number of frame slots over all streams (about the number of
            transitions kept: each episode costs one extra slot).
        frame_shape: shape of one frame, ``(84, 84)`` for Atari.
        stack: frames per observation (the env's ``frame_stack``).
        num_streams: independent circular buffers, one per env of a batched
            collector; ``extend`` maps a ``[N, T]`` batch to streams ``0..N-1``.
            The capacity is split evenly between them.
        padding: ``"zeros"`` (Dopamine) or ``"first"`` (repeat the first
            frame of the episode) for stack positions before the episode start.
            Must match the env's frame stacking.
        seed: seed of the buffer's own sampling generator.
        action_encoding: ``"one_hot"`` or ``"index"`` for the sampled
            ``action``; ``None`` copies the format of the first ``extend``
            (``"index"`` if the buffer is only fed through :meth:`add`).
        n_actions: number of actions, needed to return one-hot actions when
            it cannot be read off the data.
        clip_reward: if set, rewards are clipped to ``[-clip_reward, clip_reward]``
            when written (the env usually clips already).
        scratch_dir: if set, the arrays are ``.npy`` memory maps in this
            directory instead of anonymous memory.
        device: device of the sampled tensors.
        observation_key: key of the (stacked) observation, also under ``"next"``.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> T = 6
        >>> frames = torch.arange(1, T + 2, dtype=torch.uint8)[:, None, None].expand(T + 1, 2, 2)
        >>> # Zero-padded 2-frame stacks of one episode, as the env builds them.
        >>> stacks = torch.stack([frames, torch.cat([frames[:1] * 0, frames[:-1]])], 1).flip(1)
        >>> td = TensorDict({
        ...     "observation": stacks[:-1], "action": torch.zeros(T, dtype=torch.long),
        ...     "next": {"observation": stacks[1:], "reward": torch.ones(T, 1),
        ...              "terminated": torch.zeros(T, 1, dtype=torch.bool),
        ...              "truncated": torch.zeros(T, 1, dtype=torch.bool)}}, [T])
        >>> rb = FrameReplayBuffer(100, frame_shape=(2, 2), stack=2, seed=0)
        >>> rb.extend(td)
        6
        >>> len(rb), rb.nbytes  # 101 frames of 4 bytes + 12 bytes/slot
        (6, 1604)
        >>> batch = rb.sample(3)
        >>> batch["observation"][:, :, 0, 0], batch["next", "observation"][:, :, 0, 0]
        (tensor([[5, 6],
                [4, 5],
                [3, 4]], dtype=torch.uint8), tensor([[6, 7],
                [5, 6],
                [4, 5]], dtype=torch.uint8))
    """

    def __init__(
        self,
        capacity: int,
        *,
        frame_shape: tuple[int, ...] = (84, 84),
        stack: int = 4,
        num_streams: int = 1,
        padding: Literal["zeros", "first"] = "zeros",
        seed: int | None = None,
        action_encoding: Literal["one_hot", "index"] | None = None,
        n_actions: int | None = None,
        clip_reward: float | None = None,
        scratch_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        observation_key: NestedKey = "observation",
    ) -> None:
        for name, value, minimum in (
            ("capacity", capacity, 1),
            ("stack", stack, 1),
            ("num_streams", num_streams, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if capacity // num_streams < stack + 1:
            raise ValueError(
                f"capacity={capacity} leaves fewer than stack + 1 = {stack + 1} slots per stream "
                f"with num_streams={num_streams}"
            )
        if padding not in ("zeros", "first"):
            raise ValueError(f"padding must be 'zeros' or 'first', got {padding!r}")
        if action_encoding not in (None, "one_hot", "index"):
            raise ValueError(
                f"action_encoding must be 'one_hot', 'index' or None, got {action_encoding!r}"
            )
        if n_actions is not None and (not isinstance(n_actions, int) or n_actions < 1):
            raise ValueError(f"n_actions must be an int >= 1 or None, got {n_actions!r}")
        if clip_reward is not None and not clip_reward > 0:
            raise ValueError(f"clip_reward must be > 0 or None, got {clip_reward!r}")
        frame_shape = tuple(int(s) for s in frame_shape)
        if not frame_shape or any(s < 1 for s in frame_shape):
            raise ValueError(f"frame_shape must be positive sizes, got {frame_shape!r}")

        self.capacity = capacity
        self.frame_shape = frame_shape
        self.stack = stack
        self.num_streams = num_streams
        self.stream_capacity = capacity // num_streams
        self.padding = padding
        self.clip_reward = clip_reward
        self.device = torch.device(device)
        self.observation_key = observation_key
        self.scratch_dir = None if scratch_dir is None else Path(scratch_dir)
        # {"encoding": ..., "n": ..., "dtype": ..., "shape": ...}; set on first write.
        self._action_format: dict[str, object] | None = None
        if action_encoding is not None:
            self._action_format = {"encoding": action_encoding, "n": n_actions}
        self._n_actions = n_actions
        self._rng = np.random.default_rng(seed)
        self._alloc_arrays()
        self._cursor = np.zeros(num_streams, dtype=np.int64)
        self._size = np.zeros(num_streams, dtype=np.int64)
        # A stream is "pending" when its newest slot holds a frame whose
        # transition has not arrived yet (the episode goes on).
        self._pending = np.zeros(num_streams, dtype=bool)

    # ------------------------------------------------------------------ storage
    def _alloc_arrays(self) -> None:
        # The layout lives in validation.py, so the recipes size the replay
        # against the free memory before torch or NumPy is imported.
        shapes = frame_replay_layout(self.capacity, self.frame_shape, self.stack, self.num_streams)
        self._arrays: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in shapes.items():
            if self.scratch_dir is None:
                # np.zeros maps pages lazily: RAM grows as the buffer fills.
                arr = np.zeros(shape, dtype=dtype)
            else:
                self.scratch_dir.mkdir(parents=True, exist_ok=True)
                # A fresh .npy memmap is zero-filled (and sparse on disk).
                arr = np.lib.format.open_memmap(
                    self.scratch_dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
                )
            self._arrays[name] = arr
        self._zero_index = self.num_streams * self.stream_capacity  # the all-zero frame

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays (frames and per-slot bookkeeping).

        Example:
            >>> rb = FrameReplayBuffer(1000)
            >>> rb.nbytes - 1001 * 84 * 84  # 12 bytes of bookkeeping a slot (+ one zero frame)
            12000
        """
        return int(sum(a.nbytes for a in self._arrays.values()))

    def __len__(self) -> int:
        """Number of transitions that :meth:`sample` can return now (a scan: O(capacity)).

        13 ms at the paper's 1M capacity, whatever the fill: per-step checks
        should use :attr:`num_stored`.
        """
        return int(self._sampleable_mask().sum())

    @property
    def num_stored(self) -> int:
        """Transitions written and still held, in O(1); reaches ``capacity`` when full.

        An upper bound of ``len(self)``, which also leaves out the slots whose
        frame history was overwritten (a few per stream once it wraps).

        Example:
            >>> rb = FrameReplayBuffer(10, frame_shape=(1,), stack=2)
            >>> f = lambda *v: torch.tensor(v, dtype=torch.uint8).reshape(2, 1)
            >>> for t in range(15):
            ...     rb.add(f(t, t + 1), 0, 0.0, f(t + 1, t + 2), terminated=False)
            >>> rb.num_stored, len(rb)
            (10, 8)
        """
        return int(self._size.sum())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, stack={self.stack}, "
            f"frame_shape={self.frame_shape}, num_streams={self.num_streams}, "
            f"padding={self.padding!r}, len={len(self)}, nbytes={self.nbytes})"
        )

    def _sampleable_mask(self) -> np.ndarray:
        cap = self.stream_capacity
        pos = np.arange(cap)
        out = []
        for s in range(self.num_streams):
            sl = slice(s * cap, (s + 1) * cap)
            oldest = self._cursor[s] if self._size[s] == cap else 0
            rank = (pos - oldest) % cap
            ok = (
                self._arrays["valid"][sl]
                & (rank < self._size[s])
                & (rank >= self._arrays["hist"][sl])
            )
            out.append(ok)
        return np.concatenate(out)

    # ------------------------------------------------------------------ writing
    def _format_actions(self, action: torch.Tensor, batch_dims: int) -> np.ndarray:
        """Actions (one-hot or index) -> int32 indices, remembering the format."""
        explicit = (self._action_format or {}).get("encoding")
        one_hot = action.ndim == batch_dims + 1 and (action.shape[-1] > 1 or explicit == "one_hot")
        if self._action_format is None or "dtype" not in self._action_format:
            fmt = self._action_format or {}
            encoding = explicit or ("one_hot" if one_hot else "index")
            n = fmt.get("n") or (action.shape[-1] if one_hot else self._n_actions)
            self._action_format = {
                "encoding": encoding,
                "n": n,
                "dtype": str(action.dtype).replace("torch.", ""),
                # Trailing shape of an index action, e.g. () or (1,).
                "shape": [] if one_hot else list(action.shape[batch_dims:]),
            }
        if one_hot:
            index = action.argmax(-1)
        else:
            index = action.reshape(*action.shape[:batch_dims])
        return index.to(torch.int32).cpu().numpy()

    def extend(self, tensordict: TensorDictBase, *, stream: int | None = None) -> int:
        """Add the transitions of a collector batch or an env rollout.

        Reads ``observation`` and ``("next", "observation")`` (stacks
        ``[..., stack, *frame_shape]`` or single frames ``[..., *frame_shape]``),
        ``action``, ``("next", "reward")``, ``("next", "terminated")`` and
        ``("next", "truncated")`` (``("next", "done")`` stands in for missing
        ones). Only the newest frame of each stack is stored; the older ones
        are read only where a stream starts mid-episode.

        Batches are ``[T]`` (one env; ``stream`` picks the stream, default 0)
        or ``[N, T]`` with ``N == num_streams`` (TorchRL collectors put the env
        dimension first and time last). Successive calls continue each
        stream's episodes.

        Args:
            tensordict: the transitions.
            stream: stream for a ``[T]`` batch.

        Returns:
            The number of transitions added.

        Example:
            >>> from torchrl_eaudeqn.envs import make_atari_env
            >>> rb = FrameReplayBuffer(1000, seed=0)
            >>> rb.extend(make_atari_env("Pong", seed=0).rollout(10))
            10
            >>> batch = rb.sample(32)
            >>> batch["observation"].shape, batch["action"].shape
            (torch.Size([32, 4, 84, 84]), torch.Size([32, 6]))
        """
        td = tensordict
        if td.batch_dims == 0:
            td = td.unsqueeze(0)
        if td.batch_dims == 1:
            td = td.unsqueeze(0)
            streams = [0 if stream is None else int(stream)]
        elif td.batch_dims == 2:
            if stream is not None:
                raise ValueError("stream is only accepted with a [T] batch")
            if td.batch_size[0] != self.num_streams:
                raise ValueError(
                    f"a [N, T] batch needs N == num_streams={self.num_streams}, got N={td.shape[0]}"
                )
            streams = list(range(self.num_streams))
        else:
            raise ValueError(f"expected a [T] or [N, T] batch, got batch_size={td.batch_size}")
        for s in streams:
            if not 0 <= s < self.num_streams:
                raise ValueError(f"stream must be in [0, {self.num_streams}), got {s}")

        obs = td.get(self.observation_key)
        next_obs = td.get(("next", *_as_tuple(self.observation_key)))
        action = self._format_actions(td.get("action"), 2)
        reward = td.get(("next", "reward")).reshape(td.shape).float().cpu().numpy()
        done = td.get(("next", "done"), None)
        terminated = td.get(("next", "terminated"), done)
        if terminated is None:
            raise KeyError("extend needs ('next', 'terminated') or ('next', 'done')")
        terminated = terminated.reshape(td.shape)
        truncated = td.get(("next", "truncated"), None)
        if truncated is None:
            truncated = torch.zeros_like(terminated)
            if done is not None:
                truncated = done.reshape(td.shape) & ~terminated
        truncated = truncated.reshape(td.shape)
        for row, s in enumerate(streams):
            self._write_stream(
                s,
                obs[row],
                next_obs[row],
                action[row],
                reward[row],
                terminated[row].cpu().numpy(),
                truncated[row].cpu().numpy(),
            )
        return int(td.numel())

    def add(
        self,
        observation: torch.Tensor | np.ndarray,
        action: int | torch.Tensor | np.ndarray,
        reward: float,
        next_observation: torch.Tensor | np.ndarray,
        terminated: bool,
        truncated: bool = False,
        *,
        stream: int = 0,
    ) -> None:
        """Add one transition (a hand-written loop's ``s, a, r, s', terminated, truncated``).

        ``observation`` and ``next_observation`` are stacks ``[stack, *frame_shape]``
        or single frames; ``action`` is an index or a one-hot vector.

        Example:
            >>> rb = FrameReplayBuffer(10, frame_shape=(1,), stack=2)
            >>> f = lambda *v: torch.tensor(v, dtype=torch.uint8).reshape(2, 1)
            >>> rb.add(f(0, 7), 1, 1.0, f(7, 8), terminated=False)
            >>> rb.add(f(7, 8), 0, 0.0, f(8, 9), terminated=True)
            >>> len(rb), rb.sample(1)["action"].shape
            (2, torch.Size([1]))
        """
        obs = torch.as_tensor(observation).unsqueeze(0)
        next_obs = torch.as_tensor(next_observation).unsqueeze(0)
        act = torch.as_tensor(action)
        if act.ndim == 0:
            act = act.reshape(1)
        else:
            act = act.unsqueeze(0)
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream must be in [0, {self.num_streams}), got {stream}")
        self._write_stream(
            stream,
            obs,
            next_obs,
            self._format_actions(act, 1),
            np.asarray([reward], dtype=np.float32),
            np.asarray([bool(terminated)]),
            np.asarray([bool(truncated)]),
        )

    def extend_stream(
        self,
        stream: int,
        observation: torch.Tensor | np.ndarray,
        action: torch.Tensor | np.ndarray,
        reward: np.ndarray,
        next_observation: torch.Tensor | np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> int:
        """Append ``T`` consecutive transitions of one stream from plain arrays.

        The array twin of :meth:`extend` for hand-written loops (no TensorDict
        to build): observations ``[T, stack, *frame_shape]`` or ``[T, *frame_shape]``
        uint8, actions ``[T]`` indices or ``[T, n]`` one-hot, the rest ``[T]``.

        Example:
            >>> rb = FrameReplayBuffer(10, frame_shape=(1,), stack=2)
            >>> obs = np.array([[[0], [7]], [[7], [8]]], np.uint8)
            >>> nxt = np.array([[[7], [8]], [[8], [9]]], np.uint8)
            >>> rb.extend_stream(0, obs, np.array([1, 0]), np.array([1.0, 0.0]), nxt,
            ...                  np.array([False, True]), np.array([False, False]))
            2
        """
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream must be in [0, {self.num_streams}), got {stream}")
        self._write_stream(
            stream,
            torch.as_tensor(observation),
            torch.as_tensor(next_observation),
            self._format_actions(torch.as_tensor(action), 1),
            np.asarray(reward, dtype=np.float32),
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
        )
        return int(len(reward))

    def _split_obs(self, obs: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
        """``[T, stack, *frame]`` or ``[T, *frame]`` -> (newest frames, is_stacked)."""
        if obs.dtype != torch.uint8:
            raise TypeError(f"{name} must be uint8 (frames are stored as bytes), got {obs.dtype}")
        fs = self.frame_shape
        if tuple(obs.shape[1:]) == (self.stack, *fs):
            return obs[:, -1], True
        if tuple(obs.shape[1:]) == fs:
            return obs, False
        raise ValueError(
            f"{name} must have shape [..., {self.stack}, {', '.join(map(str, fs))}] "
            f"or [..., {', '.join(map(str, fs))}], got {list(obs.shape)}"
        )

    def _write_stream(
        self,
        s: int,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Append ``T`` consecutive transitions of stream ``s``."""
        T = obs.shape[0]
        if T == 0:
            return
        newest, stacked = self._split_obs(obs, "observation")
        next_frames, _ = self._split_obs(next_obs, "next observation")
        newest = newest.cpu().numpy()
        next_frames = next_frames.cpu().numpy()
        terminated = terminated.astype(bool)
        truncated = truncated.astype(bool)
        done = terminated | truncated
        if self.clip_reward is not None:
            reward = np.clip(reward, -self.clip_reward, self.clip_reward)

        cap = self.stream_capacity
        base = s * cap
        frames = self._arrays["frames"]
        hist_arr = self._arrays["hist"]
        max_hist = self.stack - 1

        # Does each transition continue the previous one (same episode, s_j == s'_{j-1})?
        cont = np.zeros(T, dtype=bool)
        if T > 1:
            same = (newest[1:] == next_frames[:-1]).reshape(T - 1, -1).all(1)
            cont[1:] = ~done[:-1] & same
        pending_pos = base + (self._cursor[s] - 1) % cap
        if self._pending[s]:
            cont[0] = np.array_equal(newest[0], frames[pending_pos])
        starts = np.flatnonzero(~cont)

        # Context frames written at a segment start: the newest frame alone when
        # the stack shows an episode start, else the whole stack, so the rebuilt
        # stack equals the given one whatever happened before.
        n_ctx = np.zeros(T, dtype=np.int64)
        ctx_frames: dict[int, np.ndarray] = {}
        for j in starts:
            if stacked and max_hist > 0 and not self._is_episode_start(obs[j]):
                ctx_frames[j] = obs[j].cpu().numpy()
                n_ctx[j] = self.stack
            else:
                n_ctx[j] = 1

        per = n_ctx + 1  # context frames + the next frame
        rec_start = np.concatenate([[0], np.cumsum(per)[:-1]])
        M = int(per.sum())
        rec_frames = np.empty((M, *self.frame_shape), dtype=np.uint8)
        rec_hist = np.empty(M, dtype=np.int64)
        rec = {
            "action": np.zeros(M, dtype=np.int32),
            "reward": np.zeros(M, dtype=np.float32),
            "terminated": np.zeros(M, dtype=bool),
            "truncated": np.zeros(M, dtype=bool),
            "valid": np.zeros(M, dtype=bool),
        }
        next_rec = rec_start + n_ctx
        rec_frames[next_rec] = next_frames
        # Record holding s_j: the last context frame, or the previous next frame.
        s_rec = next_rec - 1
        for j in starts:
            r0 = rec_start[j]
            if n_ctx[j] == 1:
                rec_frames[r0] = newest[j]
                rec_hist[r0] = 0
            else:
                rec_frames[r0 : r0 + self.stack] = ctx_frames[j]
                rec_hist[r0 : r0 + self.stack] = np.arange(self.stack)
        # hist of s_j: along each run of continuing transitions it grows by one.
        seg_id = np.cumsum(~cont) - 1  # -1: continues the stream's pending frame
        if cont[0]:
            start_hist = np.concatenate([[int(hist_arr[pending_pos])], rec_hist[s_rec[starts]]])
            seg_id = seg_id + 1
            first = np.concatenate([[0], starts])
        else:
            start_hist = rec_hist[s_rec[starts]]
            first = starts
        s_hist = start_hist[seg_id] + (np.arange(T) - first[seg_id])
        rec_hist[next_rec] = s_hist + 1
        for name, value in (
            ("action", action),
            ("reward", reward),
            ("terminated", terminated),
            ("truncated", truncated),
        ):
            rec[name][s_rec[s_rec >= 0]] = value[s_rec >= 0]
        rec["valid"][s_rec[s_rec >= 0]] = True
        if cont[0]:  # the first transition leaves the frame already stored
            p = pending_pos
            self._arrays["action"][p] = action[0]
            self._arrays["reward"][p] = reward[0]
            self._arrays["terminated"][p] = terminated[0]
            self._arrays["truncated"][p] = truncated[0]
            self._arrays["valid"][p] = True
        np.minimum(rec_hist, max_hist, out=rec_hist)

        n_records = M
        if M > cap:  # only the newest records survive a lap of the circle
            drop = M - cap
            self._cursor[s] = (self._cursor[s] + drop) % cap
            rec_frames, rec_hist = rec_frames[drop:], rec_hist[drop:]
            rec = {k: v[drop:] for k, v in rec.items()}
            M = cap
        pos = base + (self._cursor[s] + np.arange(M)) % cap
        frames[pos] = rec_frames
        hist_arr[pos] = rec_hist
        for name, value in rec.items():
            self._arrays[name][pos] = value
        self._cursor[s] = (self._cursor[s] + M) % cap
        self._size[s] = min(cap, int(self._size[s]) + n_records)
        self._pending[s] = not done[-1]

    def _is_episode_start(self, stack: torch.Tensor) -> bool:
        history = stack[:-1]
        if self.padding == "zeros":
            return not bool(history.any())
        return bool((history == stack[-1]).all())

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int) -> TensorDict:
        """Sample transitions uniformly (with replacement) and rebuild their stacks.

        Args:
            batch_size: number of transitions ``B``.

        Returns:
            A TensorDict ``[B]`` with ``observation`` and ``("next", "observation")``
            (``uint8`` ``[B, stack, *frame_shape]``), ``action`` (as written:
            index ``[B]`` or one-hot ``[B, n]``), ``("next", "reward")`` ``[B, 1]``
            ``float32`` and ``("next", "terminated" | "truncated" | "done")``
            ``[B, 1]`` bool: the keys TorchRL's DQN losses read. ``index`` holds
            the flat slot of each transition.

        Example:
            >>> rb = FrameReplayBuffer(10, frame_shape=(1,), stack=2, seed=0)
            >>> rb.add(torch.tensor([[0], [5]], dtype=torch.uint8), 0, 1.0,
            ...        torch.tensor([[5], [6]], dtype=torch.uint8), terminated=True)
            >>> rb.sample(2)["next", "observation"].squeeze(-1)
            tensor([[5, 6],
                    [5, 6]], dtype=torch.uint8)
        """
        idx, obs, next_obs = self._sample_stacks(batch_size)
        terminated = torch.from_numpy(self._arrays["terminated"][idx]).unsqueeze(-1)
        truncated = torch.from_numpy(self._arrays["truncated"][idx]).unsqueeze(-1)
        out = TensorDict(
            {
                self.observation_key: obs,
                "action": self._decode_actions(self._arrays["action"][idx]),
                "index": torch.from_numpy(idx),
                "next": {
                    self.observation_key: next_obs,
                    "reward": torch.from_numpy(self._arrays["reward"][idx]).unsqueeze(-1),
                    "terminated": terminated,
                    "truncated": truncated,
                    "done": terminated | truncated,
                },
            },
            batch_size=[batch_size],
        )
        if self.device.type != "cpu":
            out = out.to(self.device, non_blocking=True)
        return out

    def sample_tensors(self, batch_size: int) -> dict[str, torch.Tensor]:
        """:meth:`sample` as plain tensors, for a loss that needs no TensorDict.

        The same draws from the same generator as :meth:`sample` (a buffer in
        the same state returns the same transitions either way), without
        building a TensorDict or one-hot actions; the Atari recipe's loss
        (``EauDeQNLoss.td_losses``) reads these.

        Returns:
            ``observation`` and ``next_observation`` (``uint8``
            ``[B, stack, *frame_shape]``), ``action`` (``int64`` index ``[B]``),
            ``reward`` (``float32`` ``[B]``), ``terminated`` (bool ``[B]``).

        Example:
            >>> rb = FrameReplayBuffer(10, frame_shape=(1,), stack=2, seed=0)
            >>> rb.add(torch.tensor([[0], [5]], dtype=torch.uint8), 2, 1.0,
            ...        torch.tensor([[5], [6]], dtype=torch.uint8), terminated=True)
            >>> batch = rb.sample_tensors(2)
            >>> batch["next_observation"].squeeze(-1), batch["action"], batch["terminated"]
            (tensor([[5, 6],
                    [5, 6]], dtype=torch.uint8), tensor([2, 2]), tensor([True, True]))
        """
        idx, obs, next_obs = self._sample_stacks(batch_size)
        out = {
            "observation": obs,
            "action": torch.from_numpy(self._arrays["action"][idx]).long(),
            "reward": torch.from_numpy(self._arrays["reward"][idx]),
            "next_observation": next_obs,
            "terminated": torch.from_numpy(self._arrays["terminated"][idx]),
        }
        if self.device.type != "cpu":
            out = {k: v.to(self.device, non_blocking=True) for k, v in out.items()}
        return out

    def _sample_stacks(self, batch_size: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` slots; return them and the stacks of ``s`` and ``s'``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        idx = self._sample_slots(batch_size)
        S = self.stack
        hist = self._arrays["hist"][idx].astype(np.int64)
        # Window of S + 1 frames: s = window[:S], s' = window[1:], both from slot idx.
        m = np.arange(S + 1) - (S - 1)  # offsets -(S-1) .. +1
        stream_base = (idx // self.stream_capacity) * self.stream_capacity
        local = idx - stream_base
        if self.padding == "zeros":
            win = stream_base[:, None] + (local[:, None] + m) % self.stream_capacity
            win = np.where(m >= -hist[:, None], win, self._zero_index)
        else:
            off = np.maximum(m, -hist[:, None])
            win = stream_base[:, None] + (local[:, None] + off) % self.stream_capacity
        # numpy fancy indexing (a row memcpy per frame) beats torch's gathers here.
        frames = self._arrays["frames"]
        return idx, torch.from_numpy(frames[win[:, :S]]), torch.from_numpy(frames[win[:, 1:]])

    def _sample_slots(self, batch_size: int) -> np.ndarray:
        """Uniform over sampleable slots: draw among filled slots, reject the rest."""
        sizes = self._size
        total = int(sizes.sum())
        if total == 0:
            raise RuntimeError("the buffer is empty: extend it before sampling")
        cap = self.stream_capacity
        cum = np.cumsum(sizes)
        oldest = np.where(sizes == cap, self._cursor, 0)
        valid, hist = self._arrays["valid"], self._arrays["hist"]
        got, n_got, tries = [], 0, 0
        while n_got < batch_size:
            tries += 1
            if tries > 1000:
                raise RuntimeError("the buffer holds no sampleable transition yet")
            u = self._rng.integers(0, total, size=batch_size + batch_size // 4 + 4)
            s = np.searchsorted(cum, u, side="right")
            off = u - (cum[s] - sizes[s])  # age rank inside the stream, 0 = oldest
            idx = s * cap + (oldest[s] + off) % cap
            ok = valid[idx] & (off >= hist[idx])
            got.append(idx[ok])
            n_got += int(ok.sum())
        return np.concatenate(got)[:batch_size]

    def _decode_actions(self, index: np.ndarray) -> torch.Tensor:
        fmt = self._action_format or {"encoding": "index"}
        idx = torch.from_numpy(index).long()
        dtype = getattr(torch, str(fmt.get("dtype", "int64")))
        if fmt["encoding"] == "one_hot":
            n = fmt.get("n")
            if n is None:
                raise RuntimeError("one-hot actions need n_actions (pass it to the constructor)")
            return torch.nn.functional.one_hot(idx, int(n)).to(dtype)
        return idx.to(dtype).reshape(-1, *fmt.get("shape", []))

    # ------------------------------------------------------------------ state
    def state_dict(self, include_data: bool = False) -> dict[str, object]:
        """Sampling generator state, cursors and format; the arrays if ``include_data``.

        Args:
            include_data: also return the arrays (as tensors sharing memory).

        Example:
            >>> rb = FrameReplayBuffer(10, frame_shape=(1,), stack=2, seed=0)
            >>> sorted(rb.state_dict())
            ['action_format', 'config', 'cursor', 'pending', 'rng', 'size']
        """
        state: dict[str, object] = {
            "config": {
                "capacity": self.capacity,
                "frame_shape": list(self.frame_shape),
                "stack": self.stack,
                "num_streams": self.num_streams,
                "padding": self.padding,
            },
            "rng": self._rng.bit_generator.state,
            "cursor": self._cursor.tolist(),
            "size": self._size.tolist(),
            "pending": self._pending.tolist(),
            "action_format": self._action_format,
        }
        if include_data:
            state["data"] = {k: torch.from_numpy(v) for k, v in self._arrays.items()}
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output into a buffer built with the same config.

        Example:
            >>> a = FrameReplayBuffer(10, frame_shape=(1,), stack=2, seed=0)
            >>> b = FrameReplayBuffer(10, frame_shape=(1,), stack=2, seed=1)
            >>> b.load_state_dict(a.state_dict())
            >>> bool(a._rng.integers(100) == b._rng.integers(100))
            True
        """
        config = self.state_dict()["config"]
        if state["config"] != config:
            raise ValueError(f"state was saved from {state['config']}, this buffer is {config}")
        self._rng.bit_generator.state = state["rng"]
        self._cursor[:] = state["cursor"]
        self._size[:] = state["size"]
        self._pending[:] = state["pending"]
        self._action_format = state["action_format"]
        data = state.get("data")
        if data is not None:
            for k, v in data.items():
                src = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                if src.shape != self._arrays[k].shape:
                    raise ValueError(f"array {k!r}: shape {src.shape} != {self._arrays[k].shape}")
                self._arrays[k][...] = src

    def dumps(self, path: str | Path) -> None:
        """Write the whole buffer to directory ``path`` (one ``.npy`` per array + JSON state).

        Example:
            >>> import tempfile
            >>> rb = FrameReplayBuffer(10, frame_shape=(1,), stack=2, seed=0)
            >>> rb.add(torch.zeros(2, 1, dtype=torch.uint8), 0, 1.0,
            ...        torch.ones(2, 1, dtype=torch.uint8), terminated=True)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     rb.dumps(d)
            ...     rb2 = FrameReplayBuffer(10, frame_shape=(1,), stack=2)
            ...     rb2.loads(d)
            >>> len(rb2)
            1
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, arr in self._arrays.items():
            target = path / f"{name}.npy"
            if isinstance(arr, np.memmap) and Path(arr.filename).resolve() == target.resolve():
                arr.flush()
            else:
                np.save(target, arr)
        (path / _STATE_FILE).write_text(json.dumps(self.state_dict(), default=_json_default))

    def loads(self, path: str | Path) -> None:
        """Load what :meth:`dumps` wrote into this buffer (same config).

        Only JSON and plain ``.npy`` arrays are read (``allow_pickle=False``):
        nothing in the directory can run code.

        Raises:
            ValueError: an array of Python objects, or a state or shape that
                does not fit this buffer.
        """
        path = Path(path)
        state = json.loads((path / _STATE_FILE).read_text())
        if not isinstance(state, dict):
            raise ValueError(f"{path / _STATE_FILE} does not hold a buffer state")
        state["data"] = {
            name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in _ARRAYS
            if (path / f"{name}.npy").resolve() != _filename(self._arrays[name])
        }
        self.load_state_dict(state)


def _filename(arr: np.ndarray) -> Path | None:
    return Path(arr.filename).resolve() if isinstance(arr, np.memmap) else None


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _as_tuple(key: NestedKey) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)
