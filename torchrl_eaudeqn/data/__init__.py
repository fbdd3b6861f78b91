"""Replay buffers written for speed or memory where TorchRL's own cost too much.

:class:`FrameReplayBuffer` stores each Atari frame once and rebuilds stacks
on sampling; :class:`TransitionReplay` holds the small tasks' flat
transitions as preallocated tensors (the control recipe's lean path). The SAC
recipe, and the control recipe with ``collector=torchrl``, use TorchRL's
``ReplayBuffer`` directly.

Example:
    >>> from torchrl_eaudeqn.data import FrameReplayBuffer, TransitionReplay
    >>> FrameReplayBuffer(capacity=100, frame_shape=(84, 84)).capacity
    100
    >>> len(TransitionReplay(8, (4,)))
    0
"""

from .replay import FrameReplayBuffer
from .transitions import TransitionReplay

__all__ = ["FrameReplayBuffer", "TransitionReplay"]
