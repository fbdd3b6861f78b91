"""Regenerate the compatibility fixtures that ``tests/test_compat.py`` loads (tests never run it).

    PYTHONPATH=. python tests/data/compat/make_fixtures.py     # ~4 min on 2 CPU cores

The fixtures are worth something only because an *older* commit wrote them:
regenerate them only for a deliberate change of an on-disk format, and say so
in the commit message. The script refuses to run on uncommitted changes to
``torchrl_eaudeqn/``, ``recipes/``, ``configs/``, ``tests/compat_probe.py``
or the fixture configs (the commit it records must be the code that wrote
the files). In a scratch directory it

1. trains each recipe on its fixture config, as a user would::

       python recipes/atari_dqn.py --config tests/data/compat/atari_dqn.yaml tracking_uri=...
       python recipes/mujoco_sac.py --config tests/data/compat/mujoco_sac.yaml tracking_uri=...
       python recipes/control_dqn.py --config tests/data/compat/control_dqn.yaml tracking_uri=...

2. packs each run's last checkpoint, its ``.sha256`` sidecar and its replay
   directory into ``<recipe>.tar.xz``;
3. downloads the models the recipes registered (``compat-breakout``,
   ``compat-breakout-compact``, ``compat-halfcheetah``) and one more,
   ``compat-breakout-csr``: the Atari checkpoint's acting member registered
   with ``register_network(..., compact=True, compact_rule="sparse")`` (every
   layer in CSR form, which the tiny recipe networks never reach by
   themselves); packs their MLflow artifact directories into
   ``models.tar.xz``;
4. reads the packed files back with ``tests/compat_probe.py`` (twice: the
   values must repeat) and writes ``expected.json``: versions, commit,
   commands, the checkpoints' headers, the measurements after the restore
   and after a short continuation, each model's version tags and outputs.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "tests"))

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False",
       "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}  # fmt: skip
#: Registered by the recipes: fixture -> model names.
RECIPE_MODELS = {
    "atari_dqn": ["compat-breakout", "compat-breakout-compact"],
    "mujoco_sac": ["compat-halfcheetah"],
    "control_dqn": [],
}
#: What writes the fixtures: it must be committed, and its last commit is recorded.
WRITERS = ("torchrl_eaudeqn", "recipes", "configs", "tests/compat_probe.py",
           "tests/data/compat/*.yaml")  # fmt: skip


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("torch", "lightning", "torchrl", "tensordict", "mlflow", "gymnasium", "ale-py",
             "mujoco", "numpy")  # fmt: skip
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Same bytes in, same archive out: no owner, no time stamps.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _pack(src: pathlib.Path, archive: pathlib.Path) -> None:
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False, filter=_reset)


def _train(name: str, work: pathlib.Path) -> tuple[list[str], pathlib.Path]:
    """Run the recipe on its fixture config; the directory of its last checkpoint."""
    import compat_probe

    work.mkdir(parents=True)
    argv = ["--config", f"tests/data/compat/{name}.yaml"]
    store = [f"tracking_uri=sqlite:///{work}/mlflow.db"]
    config = ["--config", str(HERE / f"{name}.yaml")]
    cmd = [sys.executable, str(ROOT / compat_probe.RECIPES[name]), *config, *store]
    out = subprocess.run(cmd, cwd=work, env={**ENV, "PWD": str(work)}, text=True,
                         capture_output=True)  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"{name}: the recipe failed:\n{out.stderr[-3000:]}")
    print(f"{name}: {out.stdout.strip().splitlines()[-1]}")
    (ckpt_dir,) = sorted((work / "ckpt").iterdir())
    return ["python", compat_probe.RECIPES[name], *argv, "tracking_uri=sqlite:///..."], ckpt_dir


def _model_record(client: Any, name: str) -> dict[str, Any]:
    from torchrl_eaudeqn.registry import KIND_TAG

    version = client.get_model_version(name, "1")
    tags = dict(sorted(version.tags.items()))
    return {
        "kind": client.get_registered_model(name).tags[KIND_TAG],
        "tags": tags,  # as written, timings of the writing machine included
        "aliases": sorted(version.aliases),
    }


def _download(uri: str, name: str, dest: pathlib.Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/1", dst_path=str(dest))


def _register_csr(module: Any, work: pathlib.Path) -> tuple[str, str]:
    """The Atari acting member with every layer in CSR form, in a store of its own."""
    import torch

    from torchrl_eaudeqn.registry import register_network

    uri = f"sqlite:///{work}/csr.db"
    register_network(
        module.actor.member_network(0).cpu(),
        name="compat-breakout-csr",
        example_input=torch.zeros(1, 4, 84, 84, dtype=torch.uint8),
        tags={"method": "eaudeqn", "game": "Breakout", "width": "4"},
        alias="final",
        tracking_uri=uri,
        compact=True,
        compact_rule="sparse",
        latency_batches=None,
    )
    return uri, "compat-breakout-csr"


def _allclose(a: Any, b: Any) -> bool:
    import torch

    return torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)


def main() -> int:
    import compat_probe
    from mlflow import MlflowClient

    dirty = _git("status", "--porcelain", "--", *WRITERS)
    if dirty:
        sys.exit(f"uncommitted changes to the code that writes the fixtures:\n{dirty}")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="eaudeqn-compat-"))
    record: dict[str, Any] = {
        "written_by": {
            "commit": _git("rev-parse", "HEAD"),
            "code_commit": _git("log", "-1", "--format=%H", "--", *WRITERS),
            # The last commit that changed the library, the recipes or their configs.
            "library_commit": _git("log", "-1", "--format=%H", "--", *WRITERS[:3]),
            "versions": _versions(),
            "script": "tests/data/compat/make_fixtures.py",
        },
        "checkpoints": {},
        "models": {},
    }
    models = scratch / "models"
    stores = {}
    for name in compat_probe.RECIPES:
        work = scratch / "train" / name
        command, ckpt_dir = _train(name, work)
        _pack(ckpt_dir, HERE / f"{name}.tar.xz")
        record["checkpoints"][name] = {"archive": f"{name}.tar.xz", "command": command}
        store = f"sqlite:///{work}/mlflow.db"
        for model in RECIPE_MODELS[name]:
            _download(store, model, models / model)
            stores[model] = store

    # Read back what was packed, exactly as the test does.
    for name in compat_probe.RECIPES:
        runs = []
        for attempt in range(2):
            unpacked = compat_probe.extract(
                HERE / f"{name}.tar.xz", scratch / f"read{attempt}" / name
            )
            path = compat_probe.checkpoint_in(unpacked)
            work = scratch / f"resume{attempt}" / name
            work.mkdir(parents=True)
            extra = compat_probe.EXTRA_STEPS[name]
            result, module = compat_probe.resume(name, path, work, extra)
            runs.append(result)
        if runs[0] != runs[1]:
            sys.exit(f"{name}: two resumes of the same checkpoint differ; not recorded")
        entry = record["checkpoints"][name]
        entry.update(
            checkpoint=path.name,
            header=compat_probe.header(path),
            resume={"extra_env_steps": extra, **runs[0]},
        )
        if name == "atari_dqn":
            (scratch / "resume-zero").mkdir()
            zero, module = compat_probe.resume(name, path, scratch / "resume-zero", 0)
            assert zero["loaded"] == runs[0]["loaded"], "a 0-step resume restores the same state"
            uri, model = _register_csr(module, scratch)
            _download(uri, model, models / model)
            stores[model] = uri

    _pack(models, HERE / "models.tar.xz")
    unpacked = compat_probe.extract(HERE / "models.tar.xz", scratch / "read-models")
    for model in sorted(stores):
        info = _model_record(MlflowClient(stores[model]), model)
        net = compat_probe.load_model_dir(unpacked / model, f"models:/{model}/1")
        info["outputs"] = compat_probe.model_outputs(net, info["kind"])
        record["models"][model] = info
    # The registered networks are the checkpoints' acting networks.
    atari = record["checkpoints"]["atari_dqn"]["resume"]["loaded"]
    for model in ("compat-breakout", "compat-breakout-compact", "compat-breakout-csr"):
        assert _allclose(record["models"][model]["outputs"], atari["q_values"][0]), model
    sac = record["checkpoints"]["mujoco_sac"]["resume"]["loaded"]
    actions = sac["actions"][sac["actor_selected"]]
    assert _allclose(record["models"]["compat-halfcheetah"]["outputs"], actions)

    record["sizes"] = {p.name: p.stat().st_size for p in sorted(HERE.glob("*.tar.xz"))}
    (HERE / "expected.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {', '.join(record['sizes'])} and expected.json in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
