"""Write ``updaters_v1.pt``: updater ``state_dict`` s as the code of commit 37c08d5 wrote them.

    PYTHONPATH=. python tests/data/updaters/make_fixture.py

``tests/test_core_updater.py`` loads the file into today's updaters (built by
:func:`build`) to check that checkpoints of that version still restore. The
file is worth something only because the older code wrote it: do not
regenerate it after changing the history format.
"""

from __future__ import annotations

import pathlib

import torch
from tensordict import TensorDict
from torchrl.data import Bounded, OneHot

from torchrl_eaudeqn import (
    EauDeQNLoss,
    LinearSpeedGrid,
    MaskedEnsembleQValueActor,
    PolyPruneUpdater,
    TargetSelectionUpdater,
    mlp,
)
from torchrl_eaudeqn.sac import (
    EauDeSACLoss,
    MaskedEnsembleTanhGaussianActor,
    MaskedEnsembleTwinQ,
    PolyPruneSACUpdater,
    SACTargetSelectionUpdater,
)

PATH = pathlib.Path(__file__).with_name("updaters_v1.pt")
#: Optimizer steps driven: 3 target updates of period 2, then one step into the next period.
STEPS = 7


def build(name: str):
    """A fresh updater of the fixture's kind ``name`` (same configuration as the writer's)."""
    torch.manual_seed(0)
    if name in ("dqn", "dqn_polyprune"):
        k = 3 if name == "dqn" else 1
        actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(16,)), k, action_spec=OneHot(2))
        loss = EauDeQNLoss(actor)
        if name == "dqn":
            opt = torch.optim.Adam(loss.parameters())
            return TargetSelectionUpdater(loss, opt, period=2, speed_policy=LinearSpeedGrid(0.5))
        return PolyPruneUpdater(loss, period=2, final_sparsity=0.5, start=0, end=6, prune_every=2)
    k = 3 if name == "sac" else 1
    actor = MaskedEnsembleTanhGaussianActor(3, Bounded(-1.0, 1.0, shape=(2,)), k, hidden=(8,))
    loss = EauDeSACLoss(actor, MaskedEnsembleTwinQ(3, 2, k, hidden=(8,)))
    if name == "sac":
        opt = torch.optim.Adam(loss.parameters())
        return SACTargetSelectionUpdater(loss, opt, period=2, speed_policy=LinearSpeedGrid(0.5))
    return PolyPruneSACUpdater(loss, final_sparsity=0.5, start=0, end=6, prune_every=2)


def losses(name: str, step: int):
    """The member losses fed at ``step`` (fixed numbers: selections differ between periods)."""
    g = torch.Generator().manual_seed(step)
    if name.startswith("dqn"):
        return torch.rand(3 if name == "dqn" else 1, generator=g)
    k = 3 if name == "sac" else 1
    return TensorDict(
        loss_actor_per_member=torch.rand(k, generator=g),
        loss_qvalue_per_member=torch.rand(k, generator=g),
    )


NAMES = ("dqn", "dqn_polyprune", "sac", "sac_polyprune")


def main() -> None:
    states = {}
    for name in NAMES:
        up = build(name)
        for t in range(STEPS):
            up.step(losses(name, t))
        states[name] = up.state_dict()
    torch.save(states, PATH)
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
