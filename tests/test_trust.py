"""Trust boundaries: no file a user is handed runs code; credentials never appear in clear.

Each crafted file carries a pickle payload that creates a marker file when it
is unpickled; a test first shows that the payload really runs under a plain
``torch.load(weights_only=False)`` (or MLflow's own loader), then that the
project refuses the file with one line and the marker never appears.
docs/security.md describes what these tests hold.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from scripts import load_script, run_dir

from torchrl_eaudeqn.checkpointing import (
    MANIFEST,
    AtomicCheckpointIO,
    CheckpointError,
    load_checkpoint_file,
    remove_stale_tmp_dirs,
    verify_dir,
    write_dir_atomic,
)
from torchrl_eaudeqn.config import load_config
from torchrl_eaudeqn.control import ControlConfig, ControlDQNModule
from torchrl_eaudeqn.credentials import (
    has_credentials,
    redact_text,
    redact_uri,
    redacted_config,
    resolve_env_uri,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False"}
SECRET = "s3cret-Pa55"
CONTROL = ["task=CartPole-v1", "width=8", "num_members=2", "progress_bar=false", "threads=1"]
RUN_KEY = "CartPole-v1-eaudeqn-w8-seed0"


class Payload:
    """Unpickles into ``value`` after creating ``marker``: what a malicious file would do."""

    def __init__(self, marker: pathlib.Path, value: str = "{}") -> None:
        self.marker, self.value = str(marker), value

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close() or {self.value}",))


def _pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _payload_runs(data: bytes, marker: pathlib.Path, cwd: pathlib.Path) -> bool:
    """Whether a plain ``torch.load(weights_only=False)`` of ``data`` creates ``marker``."""
    path = cwd / "probe.bin"
    path.write_bytes(data)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, timeout=120)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def control_main():
    return load_script("recipes/control_dqn.py", "control_dqn_trust").main


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("resume", ["path", "last"])
def test_crafted_checkpoint_is_refused_by_resume_and_never_runs(
    tmp_path, capsys, control_main, resume
):
    marker = tmp_path / "PWNED"
    # In the directory versions before fingerprints used: --resume last still reads it.
    ckpt = tmp_path / "ckpt" / RUN_KEY / "step000000000100.ckpt"
    # A matching .sha256 sidecar: the checksum only detects damage, it is no signature.
    AtomicCheckpointIO().save_checkpoint({"eaudeqn": Payload(marker)}, ckpt)
    assert _payload_runs(ckpt.read_bytes(), marker, tmp_path)  # the payload is real

    code = control_main([
        *CONTROL, f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"checkpoint_dir={tmp_path}/ckpt", "--resume", str(ckpt) if resume == "path" else "last",
    ])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith("error: --resume: checkpoint ") and str(ckpt) in line
    assert "eval unpickled" in line and "can run code" in line
    assert not marker.exists()
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run


def test_lightning_resume_load_is_weights_only_whatever_it_asks(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "step1.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"state": Payload(marker)}, path)
    with pytest.raises(
        CheckpointError, match=r"step1\.ckpt needs the Python object (builtins\.)?eval unpickled"
    ):
        io_.load_checkpoint(path, weights_only=False)
    with pytest.raises(CheckpointError, match="can run code"):
        load_checkpoint_file(path)
    assert not marker.exists()
    io_.save_checkpoint({"w": torch.ones(2), "n": 3, "s": "x"}, path)
    assert io_.load_checkpoint(path, weights_only=False)["n"] == 3


def test_own_control_checkpoint_loads_weights_only_and_resumes(tmp_path, capsys, control_main):
    args = [
        *CONTROL, "env_steps=120", "learning_starts=40", "target_period=20", "buffer_size=200",
        "batch_size=8", "eval_episodes=1", "eval_max_steps=50", "eval_random_baseline=false",
        "checkpoint_every=60", "log_every=40", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"checkpoint_dir={tmp_path}/ckpt",
    ]  # fmt: skip
    assert control_main(args) == 0, capsys.readouterr().err[-2000:]
    ckpt = run_dir(tmp_path / "ckpt", RUN_KEY) / "step000000000120.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["eaudeqn"]["env_steps"] == 120
    # The resume goes through AtomicCheckpointIO.load_checkpoint (weights_only forced).
    assert control_main([*args[:-2], "env_steps=180", *args[-2:], "--resume", "last"]) == 0
    assert "\nenv steps         180 (60 after resuming at 120) in " in capsys.readouterr().out


# ---------------------------------------------------------------- replay directories
def _control_module(tmp_path, collector="torchrl", **over) -> ControlDQNModule:
    cfg = load_config(ControlConfig, overrides=[*CONTROL, "buffer_size=50", "batch_size=4"])
    return ControlDQNModule(dataclasses.replace(cfg, collector=collector, **over))


def _filled(module: ControlDQNModule, n: int = 30) -> ControlDQNModule:
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    td = TensorDict(
        {
            "observation": torch.randn(n, 4, generator=g),
            "action": torch.nn.functional.one_hot(torch.randint(2, (n,), generator=g), 2),
            "next": {
                "observation": torch.randn(n, 4, generator=g),
                "reward": torch.ones(n, 1),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )
    module.replay.extend(td.select(*module.REPLAY_KEYS, strict=False))
    return module


def test_torchrl_replay_round_trip_is_checksummed_and_pickle_free(tmp_path):
    a = _filled(_control_module(tmp_path), 70)  # wraps a 50-slot buffer
    path = tmp_path / "run" / "step000000000070.replay"  # parents do not exist yet
    a.save_replay(path)
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST, "replay.pt"]
    verify_dir(path)
    b = _control_module(tmp_path)
    b.load_replay(path)
    assert len(b.replay) == 50
    assert b.replay.writer.state_dict() == a.replay.writer.state_dict()
    assert torch.equal(
        b.replay.storage[: len(b.replay)]["observation"],
        a.replay.storage[: len(a.replay)]["observation"],
    )


def test_lean_replay_round_trip_is_checksummed_and_pickle_free(tmp_path):
    a = _control_module(tmp_path, "lean")
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(70, 4, generator=g).numpy()  # wraps the 50-slot buffer
    a.replay.extend(obs[:-1], np.arange(69) % 2, np.ones(69), obs[1:], np.zeros(69, bool))
    path = tmp_path / "run" / "step000000000069.replay"
    a.save_replay(path)
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST, "replay.pt"]
    verify_dir(path)
    b = _control_module(tmp_path, "lean")
    b.load_replay(path)
    assert len(b.replay) == 50
    sa, sb = a.replay.state_dict(), b.replay.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in ("observation", "action", "next_observation"))
    torch.manual_seed(3)
    first = a.replay.sample(8)
    torch.manual_seed(3)
    second = b.replay.sample(8)
    assert all(torch.equal(first[k], second[k]) for k in first)  # same draws, same rows
    with pytest.raises(CheckpointError, match="does not load into this run's buffer"):
        _control_module(tmp_path, "lean", buffer_size=60).load_replay(path)


@pytest.mark.parametrize("collector", ["torchrl", "lean"])
def test_crafted_torchrl_replay_is_refused(tmp_path, collector):
    marker = tmp_path / "PWNED"
    path = tmp_path / "step1.replay"
    data = _pickled({"_storage": Payload(marker)})
    assert _payload_runs(data, marker, tmp_path)
    write_dir_atomic(path, lambda tmp: (tmp / "replay.pt").write_bytes(data))  # valid manifest
    with pytest.raises(CheckpointError) as err:
        _control_module(tmp_path, collector).load_replay(path)
    assert "eval unpickled" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_crafted_frame_replay_with_object_arrays_is_refused(tmp_path):
    from torchrl_eaudeqn.replay import FrameReplayBuffer

    marker = tmp_path / "PWNED"
    rb = FrameReplayBuffer(8, frame_shape=(1,), stack=2, seed=0)
    rb.add(torch.zeros(2, 1, dtype=torch.uint8), 0, 1.0, torch.ones(2, 1, dtype=torch.uint8), True)
    path = tmp_path / "step1.replay"

    def fill(tmp):
        rb.dumps(tmp)
        np.save(tmp / "reward.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)

    write_dir_atomic(path, fill)
    module = _control_module(tmp_path)
    module.replay = FrameReplayBuffer(8, frame_shape=(1,), stack=2)
    with pytest.raises(CheckpointError, match="does not load into this run's buffer"):
        module.load_replay(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["flip", "add", "remove", "manifest"])
def test_damaged_replay_dir_is_refused(tmp_path, damage):
    path = tmp_path / "step1.replay"
    _filled(_control_module(tmp_path)).save_replay(path)
    if damage == "flip":
        data = bytearray((path / "replay.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (path / "replay.pt").write_bytes(bytes(data))
    elif damage == "add":
        (path / "prefetch.pkl").write_bytes(b"x")
    elif damage == "remove":
        (path / "replay.pt").unlink()
    else:
        (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError) as err:
        verify_dir(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_recipe_refuses_a_damaged_replay_beside_a_good_checkpoint(tmp_path, capsys, control_main):
    args = [
        *CONTROL,
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"checkpoint_dir={tmp_path}/c",
    ]
    cfg = load_config(ControlConfig, overrides=args)
    ckpt = tmp_path / "c" / RUN_KEY / "step000000000100.ckpt"
    AtomicCheckpointIO().save_checkpoint(
        {"eaudeqn": {"config": dataclasses.asdict(cfg), "mlflow_run_id": None}}, ckpt
    )
    replay = ckpt.with_suffix(".replay")
    _filled(_control_module(tmp_path)).save_replay(replay)
    (replay / "replay.pt").write_bytes(b"torn")
    assert control_main([*args, "--resume", "last"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"replay buffer {replay} is damaged: replay.pt has sha256" in line
    assert "delete that directory to resume from step000000000100.ckpt" in line
    assert not (tmp_path / "mlflow.db").exists()


def test_leftovers_of_killed_replay_writes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    for pid in (dead, os.getpid(), os.getppid()):
        (tmp_path / f".step000000000100.replay.tmp-{pid}").mkdir()
        (tmp_path / f".step000000000100.replay.tmp-{pid}" / "frames.npy").write_bytes(b"x")
    (tmp_path / "step000000000100.replay").mkdir()
    removed = {p.name for p in remove_stale_tmp_dirs(tmp_path)}
    assert removed == {f".step000000000100.replay.tmp-{p}" for p in (dead, os.getpid())}
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".step000000000100.replay.tmp-{os.getppid()}", "step000000000100.replay"]


def test_env_step_checkpoint_clears_leftovers_at_train_start(tmp_path):
    from torchrl_eaudeqn.reliability import EnvStepCheckpoint

    stale = tmp_path / ".step000000000040.replay.tmp-999999999"
    stale.mkdir()
    EnvStepCheckpoint(tmp_path, every=10).on_train_start(None, _control_module(tmp_path))
    assert not stale.exists()


# ---------------------------------------------------------------- registered models
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow
    from mlflow import MlflowClient

    from torchrl_eaudeqn.modules import mlp
    from torchrl_eaudeqn.registry import register_network

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("trust", artifact_location=(root / "art").as_uri())
    torch.manual_seed(0)
    net = mlp(4, 2, (16, 16))
    with torch.no_grad():
        net[0].weight[:8].zero_()
    for compact in (False, True):
        register_network(
            net, name="own-compact" if compact else "own", example_input=torch.zeros(1, 4),
            tracking_uri=uri, run_id=client.create_run(exp).info.run_id, compact=compact,
            compact_rule="sparse", latency_batches=None,
        )  # fmt: skip

    def register_dir(name: str, directory: pathlib.Path) -> str:
        run = client.create_run(exp)
        client.log_artifacts(run.info.run_id, str(directory), "model")
        client.create_registered_model(name)
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        return f"models:/{name}/1"

    marker = root / "PWNED"
    evil = root / "evil-model"
    mlflow.pytorch.save_model(
        torch.nn.Linear(4, 2), evil, serialization_format="pickle", pip_requirements=["torch"]
    )
    (evil / "data" / "model.pth").write_bytes(
        _pickled(Payload(marker, "__import__('torch').nn.Linear(4, 2)"))
    )
    # pt2 with a pickled record added to the project's own archive.
    from torchrl_eaudeqn.tracking.registry import _use_uri

    (root / "own").mkdir()
    with _use_uri(uri):
        own = mlflow.artifacts.download_artifacts("models:/own/1", dst_path=str(root / "own"))
    own = pathlib.Path(own)
    assert (own / "data" / "model.pt2").is_file()
    with zipfile.ZipFile(own / "data" / "model.pt2", "a") as archive:
        archive.writestr("model/data/sample_inputs/extra.pt", _pickled(Payload(marker)))
    return {
        "uri": uri, "root": root, "marker": marker, "net": net,
        "pickled": register_dir("evil", evil), "pt2": register_dir("evil-pt2", own),
    }  # fmt: skip


def test_pickled_model_is_refused_and_loads_only_with_the_opt_in(store):
    from torchrl_eaudeqn.registry import UnsafeModelError, load_registered

    marker = store["marker"]
    with pytest.raises(UnsafeModelError) as err:
        load_registered(store["pickled"], tracking_uri=store["uri"])
    message = str(err.value)
    assert message.startswith("models:/evil/1 is stored with pickle") and "\n" not in message
    assert "allow_pickle=True" in message
    assert not marker.exists()
    model = load_registered(store["pickled"], tracking_uri=store["uri"], allow_pickle=True)
    assert isinstance(model, torch.nn.Linear) and marker.exists()  # the opt-in really unpickles
    marker.unlink()


def test_pt2_with_a_pickled_record_is_refused(store):
    from torchrl_eaudeqn.registry import UnsafeModelError, load_registered

    with pytest.raises(UnsafeModelError, match="record model/data/sample_inputs/extra.pt"):
        load_registered(store["pt2"], tracking_uri=store["uri"])
    assert not store["marker"].exists()


def test_bundled_code_is_refused_before_mlflow_imports_it(store, tmp_path):
    """A model that bundles code is refused before MLflow could import it (MLflow <= 3.17 does)."""
    import mlflow
    from mlflow import MlflowClient

    from torchrl_eaudeqn.registry import UnsafeModelError, load_registered

    marker = tmp_path / "IMPORTED"
    code = tmp_path / "code"
    code.mkdir()
    (code / "evil_pickle_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    model = tmp_path / "model"
    mlflow.pytorch.save_model(
        torch.nn.Linear(4, 2),
        model,
        serialization_format="pickle",
        code_paths=[str(code / "evil_pickle_module.py")],
        pip_requirements=["torch"],
    )
    (model / "data" / "pickle_module_info.txt").write_text("evil_pickle_module")
    probe = (
        "import mlflow\ntry:\n    mlflow.pytorch.load_model(__import__('sys').argv[1])\n"
        "except Exception as err:\n    print(type(err).__name__)\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", probe, str(model)], cwd=tmp_path, capture_output=True, text=True,
        env={**ENV, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}, timeout=120,
    )  # fmt: skip
    # MLflow <= 3.17 imports the module before any check (the marker appears);
    # 3.18 refuses first. Either way the loader below must refuse on its own.
    assert plain.returncode == 0, plain.stderr[-2000:]
    marker.unlink(missing_ok=True)
    client = MlflowClient(store["uri"])
    run = client.create_run(client.get_experiment_by_name("trust").experiment_id)
    client.log_artifacts(run.info.run_id, str(model), "model")
    client.create_registered_model("with-code")
    client.create_model_version("with-code", f"runs:/{run.info.run_id}/model", run.info.run_id)
    with pytest.raises(UnsafeModelError, match="bundles Python code"):
        load_registered("models:/with-code/1", tracking_uri=store["uri"])
    assert not marker.exists()


def test_evaluate_refuses_a_pickled_model_with_one_line(store, tmp_path, capsys):
    marker = store["marker"]
    cmd = [sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--model", store["pickled"],
           "--game", "Pong", "--episodes", "1", "--tracking-uri", store["uri"]]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("evaluate.py: error: models:/evil/1 is stored with pickle")
    assert "--allow-pickle" in last and "Traceback" not in out.stderr
    assert not marker.exists()
    evaluate = load_script("recipes/evaluate.py", "evaluate_trust").main
    assert evaluate([*cmd[2:], "--allow-pickle"]) == 2  # Linear(4, 2) is no Q-network...
    assert "does not take Atari observations" in capsys.readouterr().err
    assert marker.exists()  # ... but --allow-pickle reached the loader, which unpickled it
    marker.unlink()


FRESH = r"""
import sys, mlflow, torch
mlflow.set_tracking_uri(sys.argv[1])
x = torch.randn(3, 4)
outs = [mlflow.pytorch.load_model(f"models:/{name}/1")(x) for name in ("own", "own-compact")]
assert not any(m.startswith("torchrl") for m in sys.modules), "torchrl got imported"
torch.save(torch.stack(outs), sys.argv[2])
"""


def test_own_pt2_models_load_in_a_fresh_process_with_pickle_disabled(store, tmp_path):
    out = tmp_path / "out.pt"
    env = {**ENV, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    proc = subprocess.run([sys.executable, "-c", FRESH, store["uri"], str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    dense, compact = torch.load(out)
    assert torch.allclose(compact, dense, atol=1e-5) and dense.shape == (3, 2)


# ---------------------------------------------------------------- study files
def test_grid_yaml_cannot_build_python_objects(tmp_path):
    from torchrl_eaudeqn.study import load_grid

    marker = tmp_path / "PWNED"
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"experiment: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match=r"grid\.yaml: not a valid YAML grid") as err:
        load_grid(grid)
    assert "\n" not in str(err.value) and not marker.exists()


# ---------------------------------------------------------------- credentials
@pytest.mark.parametrize(
    "uri, shown",
    [
        (f"http://alice:{SECRET}@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        (f"https://{SECRET}@mlflow.example/path", "https://***@mlflow.example/path"),
        (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        (f"mysql+pymysql://db/m?password={SECRET}&x=1", "mysql+pymysql://db/m?password=***&x=1"),
        (f"https://h/api?access_token={SECRET}", "https://h/api?access_token=***"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("databricks", "databricks"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown
    assert has_credentials(uri) == (uri != shown)
    assert SECRET not in redact_text(f"error: GET '{uri}/health' failed ({uri})")


def test_env_uri_resolution(monkeypatch):
    monkeypatch.setenv("TRUST_URI", "http://u:p@h:1")
    assert resolve_env_uri("env:TRUST_URI") == "http://u:p@h:1"
    monkeypatch.delenv("TRUST_URI")
    with pytest.raises(ValueError, match="'TRUST_URI', which is not set"):
        resolve_env_uri("env:TRUST_URI")


def test_error_lines_never_show_the_password(tmp_path, capsys, control_main):
    from torchrl_eaudeqn.cluster import check_cluster_tracking
    from torchrl_eaudeqn.registry import check_tracking_uri

    uri = f"http://alice:{SECRET}@127.0.0.1:1"
    with pytest.raises(ValueError) as err:
        check_tracking_uri(uri, timeout=0.5)
    assert "not reachable" in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(ValueError) as err:
        check_cluster_tracking(f"sqlite:///{tmp_path}/x.db?token={SECRET}", "auto")
    assert SECRET not in str(err.value)
    # Through a recipe's entry point: exit 2, one line, no password.
    with pytest.raises(SystemExit) as stop:
        control_main([*CONTROL, f"tracking_uri={uri}", f"checkpoint_dir={tmp_path}/c"])
    line = _one_error_line(capsys.readouterr().err)
    assert stop.value.code == 2 and "http://***@127.0.0.1:1" in line and SECRET not in line
    with pytest.raises(SystemExit):
        control_main([*CONTROL, "tracking_uri=env:TRUST_NO_SUCH_VARIABLE"])
    assert "TRUST_NO_SUCH_VARIABLE" in capsys.readouterr().err


def test_reachability_check_accepts_a_credentialed_server_uri():
    """A URI with user:password reached the health check as a host name (always refused)."""
    import http.server
    import threading

    from torchrl_eaudeqn.registry import check_tracking_uri

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(401)  # an auth-protected server: still a server
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_uri(f"http://alice:{SECRET}@127.0.0.1:{server.server_port}", timeout=5)
    finally:
        server.shutdown()
    assert seen == ["/health"]


def test_checkpoint_config_and_params_are_redacted(tmp_path):
    from torchrl_eaudeqn.recipe import start_mlflow_run

    uri = f"https://alice:{SECRET}@mlflow.example"
    cfg = load_config(ControlConfig, overrides=[*CONTROL, f"tracking_uri={uri}"])
    module = ControlDQNModule(cfg)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    saved = checkpoint["eaudeqn"]["config"]
    assert saved["tracking_uri"] == "https://***@mlflow.example" and SECRET not in str(saved)
    assert ControlConfig(**saved).run_key == cfg.run_key  # the header still reads back
    assert redacted_config(cfg) == saved

    class Client:  # what start_mlflow_run writes, as a real client would receive it
        def __init__(self, *a):
            self.params, self.tags = {}, {}

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name):
            return "1"

        def create_run(self, exp_id, run_name, tags):
            self.tags.update(tags)
            return type("R", (), {"info": type("I", (), {"run_id": "r1"})})()

        def log_param(self, run_id, key, value):
            self.params[key] = value

    import mlflow

    client = Client()
    real_client, real_set = mlflow.MlflowClient, mlflow.set_tracking_uri
    mlflow.MlflowClient, mlflow.set_tracking_uri = lambda *a: client, lambda *a: None
    try:
        start_mlflow_run(cfg, None, {"study.note": f"copied from {uri}"})
    finally:
        mlflow.MlflowClient, mlflow.set_tracking_uri = real_client, real_set
    assert client.params["tracking_uri"] == "https://***@mlflow.example"
    assert SECRET not in json.dumps([client.params, client.tags], default=str)


def test_spawned_runs_get_a_credentialed_uri_through_the_environment(tmp_path):
    from torchrl_eaudeqn.study import Cell, run_cell

    stub = tmp_path / "stub.py"
    stub.write_text(
        "import json, os, sys\n"
        "open(sys.argv[0] + '.json', 'w').write(json.dumps("
        "[sys.argv, os.environ.get('MLFLOW_TRACKING_URI')]))\n"
    )
    uri = f"http://alice:{SECRET}@127.0.0.1:5000"
    cell = Cell("CartPole-v1", "dqn", "w", 8, 0, "c.yaml")
    r = run_cell(cell, tracking_uri=uri, experiment="e", checkpoint_dir=tmp_path / "c",
                 log_dir=tmp_path / "logs", recipe=stub, close_stale=False)  # fmt: skip
    assert r.ok
    argv, env_uri = json.loads((tmp_path / "stub.py.json").read_text())
    assert "tracking_uri=env:MLFLOW_TRACKING_URI" in argv and SECRET not in " ".join(argv)
    assert env_uri == uri
    assert SECRET not in "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    plain = cell.argv("http://127.0.0.1:5000", "e", "c")
    assert "tracking_uri=http://127.0.0.1:5000" in plain  # nothing to hide: shown as given


@pytest.mark.slow
def test_credentialed_server_uri_through_a_real_recipe_run(tmp_path):
    """control_dqn.py against a real ``mlflow server`` with user:password in the URI."""
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer

    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    try:
        host = server.uri.removeprefix("http://")
        uri = f"http://alice:{SECRET}@{host}"
        args = [
            *CONTROL, "env_steps=80", "learning_starts=40", "target_period=20",
            "buffer_size=200", "batch_size=8", "eval_episodes=1", "eval_max_steps=30",
            "eval_random_baseline=false", "checkpoint_every=40", "log_every=40",
            f"checkpoint_dir={tmp_path}/ckpt", "tracking_uri=env:TRUST_TRACKING_URI",
        ]  # fmt: skip
        env = {**ENV, "TRUST_TRACKING_URI": uri}
        recipe = [sys.executable, str(ROOT / "recipes" / "control_dqn.py")]
        out = subprocess.run([*recipe, *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        assert SECRET not in out.stdout + out.stderr
        client = MlflowClient(server.uri)
        (run,) = client.search_runs(
            [client.get_experiment_by_name("eaudeqn-control").experiment_id]
        )
        assert run.data.params["tracking_uri"] == f"http://***@{host}"
        assert SECRET not in json.dumps([run.data.params, run.data.tags])
        ckpts = list(run_dir(tmp_path / "ckpt", RUN_KEY).glob("*.ckpt"))
        assert ckpts
        for ckpt in ckpts:
            config = torch.load(ckpt, weights_only=True)["eaudeqn"]["config"]
            assert config["tracking_uri"] == f"http://***@{host}", ckpt
            assert SECRET.encode() not in ckpt.read_bytes()
        # Resume with the credentialed URI on the command line this time (RESUMABLE).
        again = subprocess.run(
            [*recipe, *args[:-1], f"tracking_uri={uri}", "env_steps=120", "--resume", "last"],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        assert SECRET not in again.stdout + again.stderr
    finally:
        server.stop()


REPLAY_RECIPES = {
    "mujoco": (
        "mujoco_sac.py", "HalfCheetah-v5-eaudesac-32x2-seed0", "replay.pt",
        ["--config", str(ROOT / "configs/mujoco/quick.yaml"), "env=HalfCheetah-v5",
         "selection_period=40", "batch_size=32", "hidden=32", "max_episode_steps=100",
         "eval_every=0"],
    ),
    "atari": (
        "atari_dqn.py", "Breakout-eaudeqn-small-seed0", "frames.npy",
        ["--config", str(ROOT / "configs/atari/quick.yaml"), "game=Breakout",
         "target_period=40", "eval_random_baseline=false"],
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(REPLAY_RECIPES))
def test_checkpoint_replay_is_sealed_and_resumes(tmp_path, kind):
    """checkpoint_replay=true: each checkpoint's replay is checksummed; resume loads it."""
    script, run_key, data_file, extra = REPLAY_RECIPES[kind]
    args = [
        *extra, "learning_starts=100", "buffer_size=2000", "eval_episodes=1",
        "eval_max_steps=50", "checkpoint_every=100", "log_every=50", "checkpoint_replay=true",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/ckpt",
        "progress_bar=false", f"register_name=trust-{kind}", "register_format=dense",
        "threads=1",
    ]  # fmt: skip
    recipe = [sys.executable, str(ROOT / "recipes" / script)]

    def run(*more):
        return subprocess.run([*recipe, *args, *more], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=900)  # fmt: skip

    first = run("env_steps=200")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt_dir = run_dir(tmp_path / "ckpt", run_key)
    replay = ckpt_dir / "step000000000200.replay"
    verify_dir(replay)
    assert (replay / data_file).is_file() and not list(ckpt_dir.glob(".*tmp-*"))
    second = run("env_steps=300", "--resume", "last")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "\nenv steps         300 (100 after resuming at 200) in " in second.stdout
    verify_dir(ckpt_dir / "step000000000300.replay")
