"""Checkpoints and registered models written by an older commit still load and act the same.

The fixtures in ``tests/data/compat/`` were written by the recipes and the
registry at the commit that ``expected.json`` names (``make_fixtures.py``
regenerates them; the tests never do). Each checkpoint is resumed through its
recipe's own command line (``--config <fixture>.yaml env_steps=N --resume
PATH``, ``tests/compat_probe.py``): the restored state and a short
continuation across a target update, a selection or a mask update must give
the recorded counters, selections, sparsities and network outputs. Each
registered model directory must load without unpickling and give the recorded
outputs, and, registered in a new MLflow store with its recorded tags, load
through ``load_registered`` and play in ``recipes/evaluate.py``.
"""

from __future__ import annotations

import pathlib

import compat_probe as cp
import pytest
import torch
from scripts import load_script

from torchrl_eaudeqn.checkpointing import latest_checkpoint, verify_checkpoint

EXPECTED = cp.load_expected()
#: Measured values that are floats (compared to a tolerance); the others must be equal.
FLOATS = {"sparsity", "epsilon", "q_values", "actor_sparsity", "critic_sparsity", "alpha",
          "actions"}  # fmt: skip


def _same(got: dict, want: dict, rtol: float, atol: float) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in FLOATS:
            torch.testing.assert_close(
                torch.tensor(got[key], dtype=torch.float64),
                torch.tensor(value, dtype=torch.float64),
                rtol=rtol,
                atol=atol,
                msg=lambda m, key=key: f"{key}: {m}",
            )
        else:
            assert got[key] == value, key


def _checkpoint(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    archive = cp.DATA / EXPECTED["checkpoints"][name]["archive"]
    path = cp.checkpoint_in(cp.extract(archive, tmp_path / "fixture"))
    assert path.name == EXPECTED["checkpoints"][name]["checkpoint"]
    return path


@pytest.mark.parametrize("name", sorted(cp.RECIPES))
def test_checkpoint_loads_weights_only_with_its_recorded_header(name, tmp_path):
    path = _checkpoint(name, tmp_path)
    verify_checkpoint(path)  # the sha256 sidecar still matches
    assert cp.header(path) == EXPECTED["checkpoints"][name]["header"]


@pytest.mark.parametrize("name", sorted(cp.RECIPES))
def test_checkpoint_resumes_through_its_recipe_and_continues_the_same(name, tmp_path):
    want = EXPECTED["checkpoints"][name]["resume"]
    path = _checkpoint(name, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    got, _ = cp.resume(name, path, work, want["extra_env_steps"])
    assert got["run_id"] == EXPECTED["checkpoints"][name]["header"]["mlflow_run_id"]
    assert got["run_id"] == want["run_id"]
    # The restored state: same tensors in the same places, one forward pass.
    _same(got["loaded"], want["loaded"], rtol=1e-6, atol=1e-6)
    # A few steps more: optimizer, updater sums and history, RNG, envs, replay.
    _same(got["continued"], want["continued"], rtol=1e-5, atol=1e-6)
    assert got["continued"]["env_steps"] == got["loaded"]["env_steps"] + want["extra_env_steps"]
    # ... and the continued run checkpoints where the recipe would.
    (run_dir,) = (work / "ckpt").iterdir()
    newest = latest_checkpoint(run_dir)
    assert newest is not None and newest.name == f"step{got['continued']['env_steps']:012d}.ckpt"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return cp.extract(cp.DATA / "models.tar.xz", tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("model", sorted(EXPECTED["models"]))
def test_registered_model_directory_loads_without_unpickling(model, model_dirs):
    want = EXPECTED["models"][model]
    net = cp.load_model_dir(model_dirs / model, f"models:/{model}/1")
    got = cp.model_outputs(net, want["kind"])
    torch.testing.assert_close(
        torch.tensor(got), torch.tensor(want["outputs"]), rtol=1e-6, atol=1e-6
    )


@pytest.fixture(scope="module")
def store(model_dirs, tmp_path_factory):
    """A new MLflow store holding every fixture model as version 1 with its recorded tags."""
    from mlflow import MlflowClient

    from torchrl_eaudeqn.registry import KIND_TAG

    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    client = MlflowClient(uri)
    for model, want in EXPECTED["models"].items():
        client.create_registered_model(model, tags={KIND_TAG: want["kind"]})
        version = client.create_model_version(
            model, source=str(model_dirs / model), tags=want["tags"]
        )
        for alias in want["aliases"]:
            client.set_registered_model_alias(model, alias, version.version)
    return uri


def test_registered_models_load_through_load_registered(store):
    from torchrl_eaudeqn.registry import get_version_tags, load_registered

    for model, want in EXPECTED["models"].items():
        net = load_registered(f"models:/{model}@final", tracking_uri=store)
        got = cp.model_outputs(net, want["kind"])
        torch.testing.assert_close(
            torch.tensor(got), torch.tensor(want["outputs"]), rtol=1e-6, atol=1e-6
        )
        tags = get_version_tags(f"models:/{model}@final", tracking_uri=store)
        assert {k: tags[k] for k in want["tags"]} == want["tags"]


@pytest.mark.parametrize(
    "model, task, line",
    [
        ("compat-breakout-compact", ["--game", "Breakout"], "score: mean"),
        ("compat-halfcheetah", [], "return: mean"),  # the env comes from the version's tags
    ],
    ids=["q_network", "sac_actor"],
)
def test_registered_models_play_in_evaluate(model, task, line, store, capsys):
    evaluate = load_script("recipes/evaluate.py", name="compat_evaluate")
    argv = ["--model", f"models:/{model}@final", *task, "--episodes", "1", "--max-steps", "20",
            "--tracking-uri", store]  # fmt: skip
    assert evaluate.main(argv) == 0
    assert line in capsys.readouterr().out


def test_control_checkpoint_before_the_lean_collector_is_refused_on_it(tmp_path, capsys):
    """A checkpoint written before ``collector`` existed ran on TorchRL: resuming it on the
    lean path would not continue the same run, so it is refused, naming the field."""
    path = _checkpoint("control_dqn", tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    script = load_script(cp.RECIPES["control_dqn"], name="compat_control_lean")
    argv = cp.resume_argv("control_dqn", path, work, 10)
    argv.insert(argv.index("--resume"), "collector=lean")
    assert script.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another config (collector: 'torchrl' != 'lean')" in err[0]
