import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def make_batch(batch: int, obs_dim: int, n_actions: int, *, one_hot: bool = True, seed: int = 0):
    """A random transition batch with the keys TorchRL's DQN losses read."""
    g = torch.Generator().manual_seed(seed)
    action = torch.randint(n_actions, (batch,), generator=g)
    terminated = torch.rand(batch, 1, generator=g) < 0.3
    truncated = (torch.rand(batch, 1, generator=g) < 0.3) & ~terminated
    return TensorDict(
        {
            "observation": torch.randn(batch, obs_dim, generator=g),
            "action": torch.nn.functional.one_hot(action, n_actions) if one_hot else action,
            "next": {
                "observation": torch.randn(batch, obs_dim, generator=g),
                "reward": torch.randn(batch, 1, generator=g),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[batch],
    )
