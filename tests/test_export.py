"""Compact sparse export: outputs as the masked network, small artifacts, registry round trip."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scripts import load_script
from torch import nn

from torchrl_eaudeqn.export import (
    LINEAR_MAX_DENSITY,
    MIN_SPARSE_NUMEL,
    CompactConv2d,
    CompactLinear,
    compact,
    compact_summary,
    count_flops,
    exported_size_bytes,
    remove_dead_channels,
    state_size_bytes,
)
from torchrl_eaudeqn.modules import mlp, nature_cnn
from torchrl_eaudeqn.registry import network_sparsity_tags
from torchrl_eaudeqn.sparsity import apply_masks_, magnitude_masks, prunable_parameter_names

ROOT = Path(__file__).resolve().parents[1]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float summation order (relative to the output's scale)."""
    scale = max(float(b.abs().max()), 1.0) if b.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def prune_(net: nn.Module, sparsity: float, scope: str = "global") -> nn.Module:
    """Global (or per-layer) magnitude pruning in place, as the updaters do."""
    if sparsity > 0:
        params = dict(net.named_parameters())
        names = prunable_parameter_names(net)
        masks = magnitude_masks({n: params[n] for n in names}, sparsity, scope=scope)
        apply_masks_(params, masks)
    return net.eval()


def random_mask_(weight: torch.Tensor, density: float, g: torch.Generator) -> None:
    with torch.no_grad():
        weight.mul_(torch.rand(weight.shape, generator=g) < density)


# ----------------------------------------------------------------------------- layers
@settings(max_examples=30, deadline=None)
@given(
    in_features=st.integers(1, 40),
    out_features=st.integers(1, 40),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    bias=st.booleans(),
    lead=st.sampled_from([(), (1,), (3,), (2, 5)]),
    index_dtype=st.sampled_from(["auto", "int16", "int32"]),
    seed=st.integers(0, 2**16),
)
def test_compact_linear_matches_masked(
    in_features, out_features, density, bias, lead, index_dtype, seed
):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = nn.Linear(in_features, out_features, bias=bias)
    random_mask_(lin.weight, density, g)
    cl = CompactLinear.from_linear(lin, index_dtype=index_dtype)
    assert cl.nnz == int(torch.count_nonzero(lin.weight))
    x = torch.randn(*lead, in_features, generator=g)
    with torch.no_grad():
        assert close(cl(x), lin(x))
        back = cl.to_dense()
        assert torch.equal(back.weight, lin.weight)
        assert (back.bias is None) == (lin.bias is None)


@settings(max_examples=25, deadline=None)
@given(
    in_channels=st.integers(1, 5),
    out_channels=st.integers(1, 6),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.sampled_from([(1, 1), (2, 1)]),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    bias=st.booleans(),
    batched=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_compact_conv2d_matches_masked(
    in_channels, out_channels, kernel, stride, padding, dilation, density, bias, batched, seed
):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        bias=bias,
    )
    random_mask_(conv.weight, density, g)
    cc = CompactConv2d(conv)
    shape = (in_channels, 11, 10) if not batched else (3, in_channels, 11, 10)
    x = torch.randn(*shape, generator=g)
    with torch.no_grad():
        assert close(cc(x), conv(x))
        assert torch.equal(cc.to_dense().weight, conv.weight)


def test_compact_conv2d_rejects_unsupported():
    for conv in (nn.Conv2d(2, 2, 3, groups=2), nn.Conv2d(2, 2, 3, padding="same")):
        with pytest.raises(ValueError, match="groups=1"):
            CompactConv2d(conv)
    # compact() leaves them dense instead.
    net = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))
    assert type(compact(net, rule="sparse")[0]) is nn.Conv2d


def test_all_zero_layer_outputs_bias():
    lin = nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight.zero_()
    cl = CompactLinear.from_linear(lin)
    assert cl.nnz == 0
    assert torch.equal(cl(torch.randn(4, 5)), lin.bias.expand(4, 3))


def test_int16_indices_only_when_they_fit():
    assert CompactLinear.from_linear(nn.Linear(32_768, 1)).col_indices.dtype == torch.int16
    assert CompactLinear.from_linear(nn.Linear(32_769, 1)).col_indices.dtype == torch.int32
    with pytest.raises(ValueError, match="int16"):
        CompactLinear.from_linear(nn.Linear(32_769, 1), index_dtype="int16")


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("rule", ["auto", "size", "sparse"])
def test_nature_cnn_compact_matches_masked(sparsity, rule):
    torch.manual_seed(0)
    net = prune_(nature_cnn(6, "small"), sparsity)
    small = compact(net, rule=rule)
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        assert close(small(x), net(x))
        assert close(small(x[0]), net(x[0]))  # unbatched, as a single env step
    if rule == "sparse":
        kinds = [type(m).__name__ for m in small if "Compact" in type(m).__name__]
        assert kinds == ["CompactConv2d"] * 3 + ["CompactLinear"] * 2


@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.95])
def test_mlp_compact_matches_masked_and_exports(sparsity):
    torch.manual_seed(0)
    net = prune_(mlp(17, 12, (256, 256)), sparsity, scope="layer")
    small = compact(net, rule="sparse")
    x = torch.randn(5, 17)
    program = torch.export.export(
        small, (x,), dynamic_shapes=[{0: torch.export.Dim.AUTO}], strict=False
    )
    with torch.no_grad():
        assert close(small(x), net(x))
        assert close(program.module()(x), net(x))
        assert close(program.module()(x[:1]), net(x[:1]))  # batch 1 through the dynamic dim


def test_rules():
    torch.manual_seed(0)
    big = nn.Linear(1024, 1024)  # >= MIN_SPARSE_NUMEL weights
    assert big.weight.numel() >= MIN_SPARSE_NUMEL
    random_mask_(big.weight, LINEAR_MAX_DENSITY / 2, torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 1024), big)
    with torch.no_grad():
        net[0].weight.zero_()  # even an all-zero convolution stays dense under "auto"
        net[2].weight.mul_(torch.rand_like(net[2].weight) < 0.5)  # too dense
    auto = compact(net)
    assert [type(m).__name__ for m in auto] == ["Conv2d", "Flatten", "Linear", "CompactLinear"]
    assert all(type(m) is type(n) for m, n in zip(compact(net, rule="dense"), net, strict=True))
    size = compact(net, rule="size")
    assert [type(m).__name__ for m in size] == [
        "CompactConv2d",
        "Flatten",
        "CompactLinear",
        "CompactLinear",
    ]
    x = torch.randn(2, 1, 32, 32)
    measured = compact(net, rule="measure", example_input=x)
    with torch.no_grad():
        for m in (auto, size, measured):
            assert close(m(x), net(x))
    with pytest.raises(ValueError, match="example_input"):
        compact(net, rule="measure")
    with pytest.raises(ValueError, match="rule"):
        compact(net, rule="fast")
    assert type(compact(big)) is CompactLinear  # a bare layer is replaced, not wrapped
    assert big.weight.requires_grad  # the input network is never modified


def test_summary_and_flops_of_a_known_network():
    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    with torch.no_grad():
        net[0].weight[:, 10:].zero_()  # 500 non-zeros of 5000
    small = compact(net, rule="size")
    s = compact_summary(small)
    assert [(layer["format"], layer["nnz"]) for layer in s["layers"]] == [
        ("csr", 500),
        ("dense", 500),
    ]
    # CSR: 51 int32 row offsets + 500 int16 columns + 500 float32 values; bias, head dense.
    csr = 51 * 4 + 500 * 2 + 500 * 4
    assert s["bytes"] == csr + 4 * (50 + 500 + 10) == state_size_bytes(small)
    assert s["dense_bytes"] == state_size_bytes(net) == 4 * (5000 + 50 + 500 + 10)
    flops = count_flops(small, torch.zeros(7, 100))
    assert flops == count_flops(net, torch.zeros(7, 100))
    assert flops["flops"] == 2 * (5000 + 500) and flops["flops_nonzero"] == 2 * (500 + 500)
    assert flops["params"] == 5560 and flops["params_nonzero"] == 500 + 50 + 500 + 10


def test_size_claim_large_nature_cnn_at_95_percent():
    """The 95%-sparse width-2048 agent's artifact: <= 15% of the dense one's bytes."""
    torch.manual_seed(0)
    dense = nature_cnn(18, "large").eval()
    net = prune_(nature_cnn(18, "large"), 0.95)
    assert network_sparsity_tags(net)["sparsity_prunable"] == pytest.approx(0.95, abs=1e-6)
    small = compact(net)  # the default rule, as register_network(compact=True) uses
    example = torch.zeros(1, 4, 84, 84, dtype=torch.uint8)
    dense_bytes = exported_size_bytes(dense, example)
    compact_bytes = exported_size_bytes(small, example)
    assert dense_bytes > 4 * 6_500_000  # 6.54M float32 parameters
    assert compact_bytes <= 0.15 * dense_bytes, compact_bytes / dense_bytes
    x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        assert close(small(x), net(x))


@settings(max_examples=25, deadline=None)
@given(
    dead1=st.sets(st.integers(0, 5), max_size=5),
    dead2=st.sets(st.integers(0, 4), max_size=4),
    dead3=st.sets(st.integers(0, 6), max_size=6),
    pad=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_remove_dead_channels_keeps_outputs(dead1, dead2, dead3, pad, seed):
    """Zeroed filters/neurons (biases positive or negative: ReLU(b) > 0 is a constant
    the next layer absorbs) are removed and the outputs stay the same; into a padded
    convolution only channels whose constant is 0 can go."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=pad), nn.Tanh(),
        nn.Flatten(), nn.Linear(5 * (6 + 2 * pad) ** 2, 7), nn.ReLU(), nn.Linear(7, 4),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for layer, dead in ((net[0], dead1), (net[2], dead2), (net[5], dead3)):
            for c in dead:
                layer.weight[c] = 0
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        before = net(x)
        small = compact(net, rule="dense")
        after = small(x)
    assert close(after, before)
    const1 = torch.relu(net[0].bias)
    removable1 = {c for c in dead1 if pad == 0 or const1[c] == 0}
    expected = {"0": removable1, "2": dead2, "5": dead3}
    for name, dead in expected.items():
        if dead and len(dead) < net[int(name)].weight.shape[0]:
            assert small.removed_channels[name] == (len(dead), net[int(name)].weight.shape[0])
        else:
            assert name not in small.removed_channels
    assert small[7].out_features == 4  # the outputs are never removed
    assert small[7].in_features == 7 - len(dead3)
    assert remove_dead_channels(small) == {}  # nothing left to remove


def test_filter_pruned_large_nature_cnn_loses_channels_and_stays_small():
    """prune_structure 'filters' at 95%: the convolutions lose whole filters (as many
    weights as the global ranking takes from them), compact() removes them, the
    outputs match the masked network and the artifact stays under the size target."""
    torch.manual_seed(0)
    dense = nature_cnn(18, "large").eval()
    net = nature_cnn(18, "large").eval()
    params = dict(net.named_parameters())
    names = prunable_parameter_names(net)
    masks = magnitude_masks({n: params[n] for n in names}, 0.95, structure="filters")
    apply_masks_(params, masks)
    assert network_sparsity_tags(net)["sparsity_prunable"] == pytest.approx(0.95, abs=1e-3)
    small = compact(net)
    removed = small.removed_channels
    assert set(removed) == {"1", "3", "5"}  # the three convolutions
    assert all(0 < r < n for r, n in removed.values())
    assert small[8].in_features == 64 * 49 - 49 * removed["5"][0]
    x = torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        assert close(small(x), net(x))
    flops = count_flops(small, x[:1])["flops"]
    assert flops < 0.7 * count_flops(dense, x[:1])["flops"]
    example = torch.zeros(1, 4, 84, 84, dtype=torch.uint8)
    assert exported_size_bytes(small, example) <= 0.15 * exported_size_bytes(dense, example)


# ----------------------------------------------------------------------------- registry
MODEL = "models:/pong-compact@champion"
EXAMPLE = torch.zeros(1, 4, 84, 84, dtype=torch.uint8)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    mlflow = pytest.importorskip("mlflow")
    from torchrl_eaudeqn.registry import FORMAT_TAG, register_network

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("export", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(exp)
    torch.manual_seed(0)
    net = prune_(nature_cnn(6, "small"), 0.9)
    mv = register_network(
        net,
        name="pong-compact",
        example_input=EXAMPLE,
        tags={"game": "Pong", "method": "eaudeqn", **network_sparsity_tags(net)},
        alias="champion",
        tracking_uri=uri,
        run_id=run.info.run_id,
        compact=True,
        compact_rule="sparse",  # every layer type through the registry
    )
    return {"root": root, "uri": uri, "net": net, "mv": mv, "format_tag": FORMAT_TAG}


def test_registered_compact_tags(registered):
    tags, net = registered["mv"].tags, registered["net"]
    assert tags[registered["format_tag"]] == "compact"
    assert tags["compact_layers"] == "1,3,5,8,10"
    assert tags["removed_channels"] == "none"  # unstructured 90%: no all-zero filter
    assert compact(net, rule="sparse").removed_channels == {}
    for key, value in network_sparsity_tags(net).items():  # the weights, not the storage
        assert float(tags[key]) == pytest.approx(value, abs=1e-12), key
    assert int(tags["dense_state_bytes"]) == state_size_bytes(net)
    assert float(tags["size_ratio"]) < 0.25  # 90% sparse: ~6 of 40 bytes per weight kept
    # The pt2 file: the CSR tensors plus a graph description of some 10-100 kB.
    assert int(tags["state_bytes"]) < int(tags["artifact_bytes"]) < 0.5 * state_size_bytes(net)
    assert float(tags["latency_ms_b1"]) > 0 and float(tags["latency_ms_b32"]) > 0
    assert int(tags["latency_threads"]) == torch.get_num_threads()
    # The baseline: the same weights, zeros kept dense, timed beside the compact form.
    for b in (1, 32):
        assert float(tags[f"dense_latency_ms_b{b}"]) > 0 and float(tags[f"speedup_b{b}"]) > 0


RELOAD = r"""
import sys, torch, mlflow
model = mlflow.pytorch.load_model(sys.argv[1])
g = torch.Generator().manual_seed(123)
x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8, generator=g)
with torch.no_grad():
    out = torch.cat([model(x), model(x[:1])])
assert not any(m.startswith(("torchrl", "tensordict")) for m in sys.modules), "package imported"
torch.save(out, sys.argv[2])
"""


def test_compact_reload_in_fresh_process_without_package(registered, tmp_path):
    out_path = tmp_path / "out.pt"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # MLflow then checks that the pt2 archive needs no unpickling (docs/security.md).
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, MODEL, str(out_path)],
        cwd=tmp_path,  # outside the repository: the package cannot be imported by accident
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = torch.load(out_path)
    g = torch.Generator().manual_seed(123)
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        expected = registered["net"](x)
    assert close(out[:3], expected)
    assert close(out[3:], expected[:1])


def test_evaluate_plays_the_compact_form(registered, capsys):
    pytest.importorskip("ale_py")
    module = load_script("recipes/evaluate.py", "evaluate_recipe")
    argv = [
        "--model", MODEL, "--game", "Pong", "--episodes", "1", "--max-steps", "20",
        "--tracking-uri", registered["uri"], "--backend", "gymnasium",
    ]  # fmt: skip
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert "episode 1/1: score" in out and "in 20 steps" in out
    assert "stored form: compact (CSR layers: 1,3,5,8,10)" in out
    assert "x the dense form)" in out  # the speedup tag, measured at registration
    assert "game=Pong" in out and "artifact_bytes" not in out and "speedup_b32" not in out


# ----------------------------------------------------------------------------- ONNX
def _onnx_run(data: bytes, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def test_onnx_export_of_compact_large_nature_cnn_keeps_the_size_gain(tmp_path):
    """95%-sparse width 2048: the ONNX file stores the big weight sparse (<= 15% of dense)
    and ONNX Runtime gives the masked network's Q-values, from the masked or compact form."""
    onnx = pytest.importorskip("onnx")
    from torchrl_eaudeqn import export_onnx

    torch.manual_seed(0)
    dense = nature_cnn(18, "large").eval()
    net = prune_(nature_cnn(18, "large"), 0.95)
    example = torch.zeros(1, 4, 84, 84, dtype=torch.uint8)
    dense_bytes = len(export_onnx(dense, example))
    path = tmp_path / "agent.onnx"
    from_compact = export_onnx(compact(net), example, str(path))
    assert path.read_bytes() == from_compact
    assert dense_bytes > 4 * 6_500_000
    assert len(from_compact) <= 0.15 * dense_bytes, len(from_compact) / dense_bytes
    model = onnx.load_from_string(from_compact)
    stored_sparse = sorted(list(s.dims) for s in model.graph.sparse_initializer)
    # Sparse where values + int64 indices (12 bytes per non-zero) beat 4 bytes per weight.
    want_sparse = sorted(
        list(p.shape)
        for p in net.parameters()
        if p.numel() >= 1024 and 12 * int(p.count_nonzero()) < 4 * p.numel()
    )
    assert [2048, 3136] in stored_sparse and stored_sparse == want_sparse
    x = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        want = net(x)
    assert close(_onnx_run(from_compact, x), want)
    assert close(_onnx_run(export_onnx(net, example), x), want)  # the masked form too


def test_onnx_export_mlp_dense_layers_stay_dense_and_errors():
    pytest.importorskip("onnx")
    from torchrl_eaudeqn import export_onnx

    torch.manual_seed(1)
    net = prune_(mlp(17, 6, hidden=(64, 64)), 0.9)
    data = export_onnx(net, torch.zeros(1, 17), sparse_min_numel=10**9)  # nothing sparse
    x = torch.randn(4, 17)
    with torch.no_grad():
        assert close(_onnx_run(data, x), net(x))
    assert len(export_onnx(net, torch.zeros(1, 17))) < len(data)
    with pytest.raises(ValueError, match="example_input"):
        export_onnx(net, torch.tensor(1.0))
    with pytest.raises(ValueError, match="sparse_min_numel"):
        export_onnx(net, torch.zeros(1, 17), sparse_min_numel=1.5)


def test_onnx_export_without_the_extra_says_how_to_install(monkeypatch):
    from torchrl_eaudeqn import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"torchrl_eaudeqn\[onnx\]"):
        export_onnx(mlp(3, 2), torch.zeros(1, 3))
