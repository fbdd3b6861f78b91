"""MLflow registry helpers: tags by closed form, aliases, reload without this package, errors."""

import os
import subprocess
import sys
import time

import pytest
import torch

mlflow = pytest.importorskip("mlflow")

from torchrl_eaudeqn.modules import nature_cnn  # noqa: E402
from torchrl_eaudeqn.registry import (  # noqa: E402
    KIND_TAG,
    check_tracking_uri,
    get_version_tags,
    load_registered,
    network_sparsity_tags,
    register_network,
)

EXAMPLE = torch.zeros(1, 4, 84, 84, dtype=torch.uint8)

# nature_cnn(6, "small"): parameter counts by layer, from the architecture.
WEIGHTS = {
    "1": 32 * 4 * 8 * 8,
    "3": 64 * 32 * 4 * 4,
    "5": 64 * 64 * 3 * 3,
    "8": 3136 * 32,
    "10": 32 * 6,
}
BIASES = {"1": 32, "3": 64, "5": 64, "8": 32, "10": 6}
TOTAL = sum(WEIGHTS.values()) + sum(BIASES.values())
ZERO_CONV = 10 * 4 * 8 * 8  # first 10 filters of the first conv
ZERO_FC = 16 * 3136  # first 16 rows of the hidden dense layer
ZERO_BIAS = 1  # one bias entry of the head


def known_sparse_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = nature_cnn(6, "small")
    with torch.no_grad():
        net[1].weight[:10].zero_()
        net[8].weight[:16].zero_()
        net[10].bias[0] = 0.0
    return net


def fixed_input(batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store whose experiment keeps its artifacts inside the temp dir.

    MLflow's *global* URI points at another database meanwhile: the helpers are
    given ``tracking_uri`` explicitly, so that database must never be created.
    """
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("tests", artifact_location=(root / "artifacts").as_uri())
    stray = root / "global.db"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{stray}"
    try:
        yield {"root": root, "uri": uri, "client": client, "experiment_id": exp}
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    if mlflow.get_tracking_uri() == f"sqlite:///{stray}":  # not overridden by set_tracking_uri
        assert not stray.exists(), "a helper used MLflow's global tracking URI"


@pytest.fixture(scope="module")
def registered(store):
    net = known_sparse_net()
    client = store["client"]
    run = client.create_run(store["experiment_id"])
    # As a recipe does: the computed tags may be repeated in the caller's tags.
    tags = {"method": "eaudeqn", "game": "Pong", "seed": 3, **network_sparsity_tags(net)}
    t0 = time.perf_counter()
    mv = register_network(
        net,
        name="pong-q",
        example_input=EXAMPLE,
        tags=tags,
        alias="champion",
        tracking_uri=store["uri"],
        run_id=run.info.run_id,
    )
    return {"net": net, "mv": mv, "run_id": run.info.run_id, "seconds": time.perf_counter() - t0}


def test_sparsity_tags_closed_form():
    tags = network_sparsity_tags(known_sparse_net())
    prunable = sum(WEIGHTS.values())
    assert tags["total_params"] == TOTAL == 178_566
    assert tags["nonzero_params"] == TOTAL - ZERO_CONV - ZERO_FC - ZERO_BIAS
    assert tags["sparsity_prunable"] == pytest.approx((ZERO_CONV + ZERO_FC) / prunable, abs=1e-12)
    # A zero bias is a zero of the network, though never a pruned weight.
    assert tags["sparsity_overall"] == pytest.approx(
        (ZERO_CONV + ZERO_FC + ZERO_BIAS) / TOTAL, abs=1e-12
    )
    assert tags["sparsity.1.weight"] == 0.3125
    assert tags["sparsity.8.weight"] == 0.5
    assert tags["sparsity.3.weight"] == tags["sparsity.5.weight"] == tags["sparsity.10.weight"] == 0
    assert sorted(k for k in tags if k.startswith("sparsity.")) == sorted(
        f"sparsity.{i}.weight" for i in WEIGHTS
    )


def test_dense_network_tags():
    tags = network_sparsity_tags(torch.nn.Linear(3, 2))
    assert tags == {
        "sparsity_overall": 0.0,
        "sparsity_prunable": 0.0,
        "sparsity.weight": 0.0,
        "nonzero_params": 8,
        "total_params": 8,
    }


def test_version_tags_alias_and_kind(registered, store):
    mv, client = registered["mv"], store["client"]
    assert mv.name == "pong-q" and str(mv.version) == "1"
    assert mv.run_id == registered["run_id"]
    assert "champion" in mv.aliases
    expected = network_sparsity_tags(registered["net"])
    for key, value in expected.items():
        assert float(mv.tags[key]) == pytest.approx(value, abs=1e-12), key
    assert mv.tags["method"] == "eaudeqn" and mv.tags["seed"] == "3"
    assert mv.tags[KIND_TAG] == "q_network"
    assert client.get_registered_model("pong-q").tags[KIND_TAG] == "q_network"
    assert str(client.get_model_version_by_alias("pong-q", "champion").version) == "1"
    # Artifacts stay in the experiment's location (inside tmp), not in ./mlruns.
    source_dir = store["root"] / "artifacts"
    assert any(source_dir.rglob("MLmodel"))
    tags = get_version_tags("models:/pong-q@champion", tracking_uri=store["uri"])
    assert tags["version"] == "1" and tags["sparsity.1.weight"] == "0.3125"
    print(f"register_network took {registered['seconds']:.1f} s")


def test_reload_in_process(registered, store):
    model = load_registered("models:/pong-q@champion", tracking_uri=store["uri"])
    x = fixed_input()
    with torch.no_grad():
        assert torch.allclose(model(x), registered["net"](x), atol=1e-6)
        # Dynamic batch: the evaluator feeds one observation at a time.
        assert model(x[:1]).shape == (1, 6)


RELOAD = r"""
import sys, torch, mlflow
model = mlflow.pytorch.load_model(sys.argv[1])
g = torch.Generator().manual_seed(123)
x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8, generator=g)
with torch.no_grad():
    out = torch.cat([model(x), model(x[:1])])
assert not any(m.startswith("torchrl") for m in sys.modules), "torchrl got imported"
torch.save(out, sys.argv[2])
"""


def test_reload_in_fresh_process_without_package(registered, store, tmp_path):
    out_path = tmp_path / "out.pt"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store["uri"],
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # MLflow then checks that the pt2 archive needs no unpickling (docs/security.md).
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    # Outside the repository, so `import torchrl_eaudeqn` could only come from the pickle.
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, "models:/pong-q@champion", str(out_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = torch.load(out_path)
    x = fixed_input()
    with torch.no_grad():
        expected = registered["net"](x)
    assert torch.allclose(out[:3], expected, atol=1e-6)
    assert torch.allclose(out[3:], expected[:1], atol=1e-6)


def _counts(store, name):
    client = store["client"]
    versions = client.search_model_versions(f"name = '{name}'")
    models = client.search_logged_models(experiment_ids=[store["experiment_id"]])
    return len(versions), len(models)


def test_kind_clash_raises_before_logging(registered, store):
    before = _counts(store, "pong-q")
    with pytest.raises(ValueError) as info:
        register_network(
            torch.nn.Linear(3, 2),
            name="pong-q",
            example_input=torch.zeros(2, 3),
            tags={},
            tracking_uri=store["uri"],
            run_id=registered["run_id"],
            kind="actor",
        )
    msg = str(info.value)
    assert "\n" not in msg
    assert "'pong-q'" in msg and "'q_network'" in msg and "'actor'" in msg
    assert _counts(store, "pong-q") == before


def test_contradicting_tag_raises_before_logging(registered, store):
    before = _counts(store, "pong-q")
    with pytest.raises(ValueError, match="sparsity_prunable"):
        register_network(
            known_sparse_net(),
            name="pong-q",
            example_input=EXAMPLE,
            tags={"sparsity_prunable": 0.9},
            tracking_uri=store["uri"],
            run_id=registered["run_id"],
        )
    with pytest.raises(ValueError, match="reserved"):
        register_network(
            known_sparse_net(),
            name="pong-q",
            example_input=EXAMPLE,
            alias="v2",
            tracking_uri=store["uri"],
            run_id=registered["run_id"],
        )
    assert _counts(store, "pong-q") == before


def test_unreachable_tracking_uri_fails_fast(tmp_path):
    uri = "http://127.0.0.1:1"
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as info:
        register_network(
            torch.nn.Linear(3, 2), name="x", example_input=torch.zeros(2, 3), tracking_uri=uri
        )
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "\n" not in msg and uri in msg and "not reachable" in msg
    with pytest.raises(ValueError, match="not reachable"):
        load_registered("models:/x@champion", tracking_uri=uri)


def test_check_tracking_uri_local(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    check_tracking_uri((tmp_path / "mlruns").as_uri())
    with pytest.raises(ValueError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")
    with pytest.raises(ValueError, match="no MLflow database"):
        check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", must_exist=True)
    assert not (tmp_path / "mlflow.db").exists()  # checking never creates the store


def test_load_missing_alias_model_and_version(registered, store):
    uri = store["uri"]
    for bad, words in [
        ("models:/pong-q@nope", ["'models:/pong-q@nope'", "alias 'nope'", "champion"]),
        ("models:/pong-q/9", ["'models:/pong-q/9'", "version 9"]),
        ("models:/no-such-model@champion", ["no registered model 'no-such-model'"]),
        ("runs:/abc/model", ["models:/NAME@ALIAS"]),
    ]:
        with pytest.raises(ValueError) as info:
            load_registered(bad, tracking_uri=uri)
        msg = str(info.value)
        assert "\n" not in msg
        for word in words:
            assert word in msg, (bad, msg)


def test_second_version_moves_latest_not_champion(registered, store):
    net = nature_cnn(6, "small")
    mv = register_network(
        net,
        name="pong-q",
        example_input=EXAMPLE,
        tags={"seed": 4},
        tracking_uri=store["uri"],
        run_id=registered["run_id"],
    )  # alias "latest": MLflow's built-in, resolves to the highest version
    assert str(mv.version) == "2"
    assert get_version_tags("models:/pong-q@latest", tracking_uri=store["uri"])["seed"] == "4"
    assert get_version_tags("models:/pong-q@champion", tracking_uri=store["uri"])["seed"] == "3"
    x = fixed_input(2)
    latest = load_registered("models:/pong-q@latest", tracking_uri=store["uri"])
    with torch.no_grad():
        assert torch.allclose(latest(x), net(x), atol=1e-6)


def test_own_run_in_named_experiment_and_untagged_model(store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # whatever MLflow might put in ./mlruns lands in tmp
    client = store["client"]
    client.create_experiment("named", artifact_location=(tmp_path / "named").as_uri())
    mv = register_network(
        torch.nn.Sequential(torch.nn.Linear(3, 2)),
        name="tiny-actor",
        example_input=torch.zeros(1, 3),
        kind="actor",
        alias="best",
        tracking_uri=store["uri"],
        experiment_name="named",
    )
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "register-tiny-actor"
    assert client.get_experiment(run.info.experiment_id).name == "named"
    model = load_registered("models:/tiny-actor@best", tracking_uri=store["uri"])
    assert model(torch.ones(4, 3)).shape == (4, 2)  # batch 1 example, dynamic batch
    assert not (tmp_path / "mlruns").exists()

    # A registered model made outside this package (no kind tag) is not taken over.
    client.create_registered_model("foreign")
    client.create_model_version("foreign", source=(tmp_path / "named").as_uri())
    with pytest.raises(ValueError, match="'foreign' holds kind '<untagged>', not 'q_network'"):
        register_network(
            torch.nn.Linear(3, 2),
            name="foreign",
            example_input=torch.zeros(2, 3),
            tracking_uri=store["uri"],
            experiment_name="named",
        )
