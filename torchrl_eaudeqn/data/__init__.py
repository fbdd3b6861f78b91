"""Replay: :class:`FrameReplayBuffer` stores each Atari frame once and rebuilds stacks on sampling.

The SAC and control recipes use TorchRL's ``ReplayBuffer`` directly.

Example:
    >>> from torchrl_eaudeqn.data import FrameReplayBuffer
    >>> FrameReplayBuffer(capacity=100, frame_shape=(84, 84)).capacity
    100
"""

from .replay import FrameReplayBuffer

__all__ = ["FrameReplayBuffer"]
