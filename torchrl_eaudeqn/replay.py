"""The frame replay, by its old path (now :mod:`torchrl_eaudeqn.data.replay`)."""

from .data.replay import FrameReplayBuffer

__all__ = ["FrameReplayBuffer"]
