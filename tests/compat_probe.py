"""Read the compatibility fixtures (``tests/data/compat/``) the way users do, and measure them.

Shared by ``tests/test_compat.py``, which compares the measurements with the
recorded ones, and ``tests/data/compat/make_fixtures.py``, which records
them: one piece of code turns the files written at one commit into numbers,
so a later commit that reads them differently is caught.

* A checkpoint is resumed as ``python recipes/<recipe>.py --config
  tests/data/compat/<recipe>.yaml env_steps=<saved + n> --resume PATH`` would
  resume it: the recipe's own ``main`` parses the command line and builds its
  module and callbacks; :func:`resume` then does what
  :func:`torchrl_eaudeqn.recipe.run_recipe` does up to and including
  ``Trainer.fit`` (checkpoint checks, seeding, replay, Lightning's restore),
  without the MLflow run, whose store the fixture does not carry.
* A registered model is the artifact directory MLflow stored; it is loaded as
  :func:`torchrl_eaudeqn.registry.load_registered` loads its download
  (:func:`~torchrl_eaudeqn.registry.check_model_dir`, then
  ``mlflow.pytorch.load_model`` with unpickling switched off).

Example:
    >>> atari_observations().shape, atari_observations().dtype
    (torch.Size([3, 4, 84, 84]), torch.uint8)
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tarfile
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from scripts import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "compat"
EXPECTED = DATA / "expected.json"

#: Fixture name -> the recipe that writes and resumes it.
RECIPES = {
    "atari_dqn": "recipes/atari_dqn.py",
    "mujoco_sac": "recipes/mujoco_sac.py",
    "control_dqn": "recipes/control_dqn.py",
}
#: Env steps a resume adds: each crosses a target update / selection / mask update
#: (the control recipe does not checkpoint its replay: 32 steps refill it first).
EXTRA_STEPS = {"atari_dqn": 16, "mujoco_sac": 24, "control_dqn": 60}


def load_expected() -> dict[str, Any]:
    """The values recorded by ``make_fixtures.py``."""
    return json.loads(EXPECTED.read_text())


def extract(archive: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """Unpack a fixture archive into ``dest`` (files only: ``filter="data"``)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def checkpoint_in(directory: pathlib.Path) -> pathlib.Path:
    """The one ``step*.ckpt`` of an unpacked checkpoint fixture."""
    (path,) = sorted(directory.glob("step*.ckpt"))
    return path


# ---------------------------------------------------------------- fixed inputs
def atari_observations() -> torch.Tensor:
    """Three seeded uint8 frame stacks ``[3, 4, 84, 84]`` (noise: every weight matters)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 4, 84, 84), generator=g, dtype=torch.uint8)


def vector_observations(dim: int) -> torch.Tensor:
    """Three seeded float observations ``[3, dim]``."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, dim, generator=g)


def vector_actions(dim: int) -> torch.Tensor:
    """Three seeded actions in ``[-1, 1]`` ``[3, dim]`` (HalfCheetah's bounds)."""
    g = torch.Generator().manual_seed(2)
    return torch.rand(3, dim, generator=g) * 2 - 1


def _values(t: torch.Tensor) -> list:
    return t.detach().cpu().double().tolist()


# ------------------------------------------------------------------ checkpoints
def header(path: pathlib.Path) -> dict[str, Any]:
    """What a ``weights_only`` load of the checkpoint file says about it."""
    from torchrl_eaudeqn.checkpointing import load_checkpoint_file

    ckpt = load_checkpoint_file(path)
    plain = torch.load(path, map_location="cpu", weights_only=True)
    assert plain.keys() == ckpt.keys()
    state = ckpt["eaudeqn"]
    return {
        "global_step": int(ckpt["global_step"]),
        "epoch": int(ckpt["epoch"]),
        "lightning_version": ckpt["pytorch-lightning_version"],
        "env_steps": int(state["env_steps"]),
        "episodes": int(state["episodes"]),
        "mlflow_run_id": state["mlflow_run_id"],
        "config": dict(state["config"]),
    }


@contextlib.contextmanager
def _captured_run_recipe() -> Iterator[dict[str, Any]]:
    """Make :func:`~torchrl_eaudeqn.trainers.recipe.run_recipe` record its arguments, not run."""
    from torchrl_eaudeqn.trainers import recipe

    seen: dict[str, Any] = {}

    def capture(cfg: Any, resume: str | None, **kwargs: Any) -> int:
        seen.update(cfg=cfg, resume=resume, **kwargs)
        return 0

    saved = recipe.run_recipe
    recipe.run_recipe = capture
    try:
        yield seen
    finally:
        recipe.run_recipe = saved


def resume_argv(name: str, path: pathlib.Path, workdir: pathlib.Path, extra: int) -> list[str]:
    """The command line that continues fixture ``name`` from ``path`` by ``extra`` env steps."""
    steps = header(path)["env_steps"] + extra
    return [
        "--config", str(DATA / f"{name}.yaml"), f"env_steps={steps}",
        f"tracking_uri=sqlite:///{workdir}/mlflow.db", "--resume", str(path),
    ]  # fmt: skip


class _ProbeAtStart(L.Callback):
    """Measure the module once Lightning has restored it, before its first step."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loaded: dict[str, Any] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.loaded = measure(self.name, pl_module, trainer)


def resume(
    name: str, path: pathlib.Path, workdir: pathlib.Path, extra: int
) -> tuple[dict[str, Any], Any]:
    """Resume checkpoint ``path`` of fixture ``name`` for ``extra`` env steps, as the recipe does.

    Returns:
        ``({"run_id", "loaded", "continued"}, module)``: the MLflow run id the
        recipe would reopen, :func:`measure` right after Lightning restored
        the checkpoint and after the ``extra`` steps, and the module.
    """
    from torchrl_eaudeqn.checkpointing import replay_dir
    from torchrl_eaudeqn.lightning import MLflowMetrics
    from torchrl_eaudeqn.trainers import recipe

    script = load_script(RECIPES[name], name=f"compat_{name}")
    with _captured_run_recipe() as seen:
        assert script.main(resume_argv(name, path, workdir, extra)) == 0
    cfg = seen["cfg"]
    # run_recipe's steps before fit, in its order (the MLflow run aside).
    ckpt = recipe.find_checkpoint(cfg, seen["resume"])
    run_id = recipe.read_checkpoint_header(ckpt, cfg)
    recipe.check_replay(ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = seen["build_module"](MLflowMetrics(None, run_id))
        if replay_dir(ckpt).is_dir():
            module.load_replay(replay_dir(ckpt), verify=False)
        probe = _ProbeAtStart(name)
        callbacks = [*seen["build_callbacks"](module), probe]
        trainer = recipe.make_trainer(cfg, callbacks, workdir / recipe.checkpoint_dir(cfg))
        trainer.fit(module, ckpt_path=str(ckpt))
        continued = measure(name, module, trainer)
    finally:
        torch.set_num_threads(threads)
    # With no step to take Lightning restores the state but skips the training hooks.
    loaded = continued if probe.loaded is None and extra == 0 else probe.loaded
    return {"run_id": run_id, "loaded": loaded, "continued": continued}, module


@torch.no_grad()
def measure(name: str, module: Any, trainer: Any) -> dict[str, Any]:
    """Counters, selection, sparsity and every member's outputs on the fixed inputs."""
    out: dict[str, Any] = {
        "env_steps": int(module.env_steps),
        "episodes": int(module.episodes),
        "global_step": int(trainer.global_step),
        "updater_steps": int(module.updater.num_steps),
        "updater_history": len(module.updater.history),
        "replay_size": len(module.replay),
    }
    if name == "mujoco_sac":  # SAC: actions of each actor, (Q1, Q2) of each critic
        obs = vector_observations(module.observation_dim)
        act = vector_actions(module.action_dim)
        actor, critic = module.actor, module.critic
        out.update(
            actor_selected=int(actor.selected),
            critic_selected=int(critic.selected),
            actor_sparsity=_values(actor.sparsity()),
            critic_sparsity=_values(critic.sparsity()),
            alpha=float(module.loss_module.log_alpha.detach().exp()),
            actions=[_values(actor.member_network(k)(obs)) for k in range(actor.num_members)],
            q_values=[
                _values(critic.member_network(k)(obs, act)) for k in range(critic.num_members)
            ],
        )
        return out
    actor = module.actor
    obs = atari_observations() if name == "atari_dqn" else vector_observations(4)  # CartPole
    q = [actor.member_network(k)(obs) for k in range(actor.num_members)]
    out.update(
        selected=int(actor.selected),
        sparsity=_values(actor.sparsity()),
        epsilon=float(module.epsilon_now()),
        q_values=[_values(v) for v in q],
        greedy_actions=[v.argmax(-1).tolist() for v in q],
    )
    return out


# ------------------------------------------------------------------- registry
def load_model_dir(path: pathlib.Path, uri: str = "") -> torch.nn.Module:
    """Load an MLflow model directory as ``load_registered`` loads its download."""
    import mlflow

    from torchrl_eaudeqn.registry import PICKLE_ENV, check_model_dir

    check_model_dir(path, uri)
    saved = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "false"
    try:
        return mlflow.pytorch.load_model(str(path))
    finally:
        if saved is None:
            os.environ.pop(PICKLE_ENV, None)
        else:
            os.environ[PICKLE_ENV] = saved


def model_input(kind: str) -> torch.Tensor:
    """The fixed input of a registered model of ``kind``."""
    if kind == "q_network":
        return atari_observations()
    return vector_observations(17)  # HalfCheetah-v5


@torch.no_grad()
def model_outputs(model: torch.nn.Module, kind: str) -> list:
    """A loaded model's outputs on its fixed input (one torch thread, as recorded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _values(model(model_input(kind)))
    finally:
        torch.set_num_threads(threads)
