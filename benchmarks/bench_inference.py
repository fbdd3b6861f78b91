"""Inference latency, size and FLOPs of dense, masked-dense and compact sparse networks (CPU).

Networks: the Nature CNN at the three widths (32, 512, 2048; 18 actions,
uint8 frames ``[4, 84, 84]``) and the SAC actor MLP (17 -> 256 -> 256 -> 12,
HalfCheetah sizes, wrapped in ``TanhDeterministicPolicy`` as the registry
stores it). Each is pruned by global magnitude pruning
(``magnitude_masks(scope="global")``, the recipes' default) of its seeded
random initialisation to 0, 50, 80, 90, 95 and 99% of the prunable weights.

Forms timed, at batch 1 and batch 32:

* ``dense``: the unpruned ``nn.Module`` (eager);
* ``dense_exported``: the same through ``torch.export`` (what the registry
  stores for a dense or masked network);
* ``masked``: the pruned network, zeros kept in dense tensors (eager): what
  an agent costs today;
* ``compact``: ``torchrl_eaudeqn.export.compact(masked)`` (rule ``"auto"``), eager;
* ``compact_exported``: the compact module through ``torch.export``: what
  ``register_network(..., compact=True)`` stores and ``mlflow.pytorch.load_model``
  returns.

Sizes: bytes of the ``torch.export.save`` archive (the registered ``pt2``
file) and of the tensors (``state_size_bytes``). FLOPs: 2 x multiply-adds of
the Linear/Conv layers per sample, all and non-zero weights only.

Filter pruning: the Nature CNNs are also pruned with ``structure="filters"``
(each convolution loses whole filters, as many weights as the global
threshold takes from it), in steps of 1% as a training run prunes, and
``compact()`` removes those channels: forms ``filters`` (eager) and
``filters_exported``; the channels one step from dense would keep are
recorded beside.

Layer kernels (the evidence behind the ``"auto"`` rule): single Linear and
Conv2d layers with uniformly random unstructured masks at densities 1-50%,
dense kernel against the compact (``embedding_bag``) kernel and, for Linear,
torch's own CSR ``torch.sparse.mm`` (MKL; eager only, ``torch.export``
cannot trace sparse tensors).

Method: single-threaded by default (``--threads 1``: latency of one core, the
setting of an acting process beside its environments; it also keeps another
process on a 2-core machine from stalling torch's thread pool). Every group
of forms is warmed up, then timed in blocks of calls (>= ``--block-ms``);
forms are visited round-robin in a freshly shuffled order at each repeat.
Blocks during which this thread waited for a CPU for >= 5% of the time
(``/proc/thread-self/schedstat``) are re-run (up to 3 times). Reported: the
median over repeats of ms per call; speedups are medians of per-repeat ratios.

Writes ``benchmarks/results/inference_cpu.json`` and the section between the
``<!-- inference:cpu:start/end -->`` markers of ``docs/benchmarks.md``.
``--quick`` writes ``inference_cpu_quick.json`` and leaves the docs alone.

Usage::

    python benchmarks/bench_inference.py            # full run (~4-6 min on 2 cores)
    python benchmarks/bench_inference.py --quick    # ~1 min, noisier
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("RL_WARNINGS", "False")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from torchrl_eaudeqn.export import (  # noqa: E402
    LINEAR_MAX_DENSITY,
    MIN_SPARSE_NUMEL,
    CompactConv2d,
    CompactLinear,
    compact,
    compact_summary,
    count_flops,
    state_size_bytes,
)
from torchrl_eaudeqn.modules import mlp, nature_cnn  # noqa: E402
from torchrl_eaudeqn.sparsity import (  # noqa: E402
    apply_masks_,
    magnitude_masks,
    prunable_parameter_names,
)

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
BATCHES = (1, 32)
TARGET_SIZE_RATIO = 0.15
TARGET_SPEEDUP_B32 = 2.0
MAX_WAIT = 0.05
RETRIES = 3


# ----------------------------------------------------------------------------- networks
def _sac_actor() -> nn.Module:
    from torchrl_eaudeqn.sac import TanhDeterministicPolicy

    return TanhDeterministicPolicy(mlp(17, 12, (256, 256)), -torch.ones(6), torch.ones(6))


@dataclass(frozen=True)
class NetSpec:
    key: str
    label: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    dtype: torch.dtype


NETWORKS = {
    "cnn_small": NetSpec(
        "cnn_small", "Nature CNN, width 32", lambda: nature_cnn(18, 32), (4, 84, 84), torch.uint8
    ),
    "cnn_medium": NetSpec(
        "cnn_medium", "Nature CNN, width 512", lambda: nature_cnn(18, 512), (4, 84, 84), torch.uint8
    ),
    "cnn_large": NetSpec(
        "cnn_large",
        "Nature CNN, width 2048",
        lambda: nature_cnn(18, 2048),
        (4, 84, 84),
        torch.uint8,
    ),
    "sac_actor": NetSpec(
        "sac_actor", "SAC actor MLP 17-256-256-12", _sac_actor, (17,), torch.float32
    ),
}


def make_input(spec: NetSpec, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if spec.dtype == torch.uint8:
        return torch.randint(0, 256, (batch, *spec.input_shape), dtype=torch.uint8, generator=g)
    return torch.randn(batch, *spec.input_shape, generator=g)


def pruned(net: nn.Module, sparsity: float, structure: str = "weights") -> nn.Module:
    """A copy of ``net`` with global magnitude pruning to ``sparsity`` applied (zeros kept)."""
    net = copy.deepcopy(net).eval().requires_grad_(False)
    if sparsity > 0:
        params = dict(net.named_parameters())
        names = prunable_parameter_names(net)
        masks = magnitude_masks(
            {n: params[n] for n in names}, sparsity, scope="global", structure=structure
        )
        apply_masks_(params, masks)
    return net


def pruned_in_steps(
    net: nn.Module, sparsities: Sequence[float], step: float = 0.01
) -> dict[float, nn.Module]:
    """Copies of ``net`` filter-pruned to each of ``sparsities`` in steps of ``step``.

    A training run prunes a little at each target update, so the benchmark's
    filter-pruned networks go the same way (one schedule, a snapshot at each
    sparsity) instead of one step from dense.
    """
    work = copy.deepcopy(net).eval().requires_grad_(False)
    params = dict(work.named_parameters())
    names = prunable_parameter_names(work)
    masks, out, level = None, {}, 0.0
    for target in sorted(s for s in sparsities if s > 0):
        while level < target - 1e-9:
            level = min(target, level + step)
            weights = {n: params[n] for n in names}
            masks = magnitude_masks(weights, level, masks=masks, structure="filters")
            apply_masks_(params, masks)
        out[target] = copy.deepcopy(work)
    return out


@torch.no_grad()
def relative_error(reference: nn.Module, forms: Sequence[nn.Module], x: torch.Tensor) -> float:
    """Largest |form(x) - reference(x)| over the forms, relative to the largest reference output."""
    ref = reference(x)
    scale = ref.abs().max().clamp_min(1e-12)
    return max(float((form(x) - ref).abs().max() / scale) for form in forms)


def _has_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


def export_module(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    ex = example.expand(2, *example.shape[1:]).contiguous()  # batch 2 keeps dim 0 dynamic
    with torch.no_grad():
        return torch.export.export(
            module, (ex,), dynamic_shapes=[{0: torch.export.Dim.AUTO}], strict=False
        )


def pt2_bytes(program: torch.export.ExportedProgram) -> int:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getbuffer().nbytes


# ----------------------------------------------------------------------------- timing
def _run_queue_ns() -> int | None:
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Form:
    """One thing to time: ``fn(x)``, timed in blocks of ``n`` calls."""

    key: str
    fn: Callable[[torch.Tensor], object]
    x: torch.Tensor
    n: int = 1
    times_ms: list[float] = field(default_factory=list)
    disturbed: int = 0

    def block(self) -> float:
        for attempt in range(RETRIES + 1):
            w0 = _run_queue_ns()
            t0 = time.perf_counter()
            for _ in range(self.n):
                self.fn(self.x)
            elapsed = time.perf_counter() - t0
            w1 = _run_queue_ns()
            wait = None if w0 is None or w1 is None else (w1 - w0) / 1e9 / elapsed
            if wait is None or wait < MAX_WAIT:
                break
            if attempt == RETRIES:
                self.disturbed += 1
        return elapsed / self.n * 1e3

    def calibrate(self, block_ms: float, warmup_s: float) -> None:
        t0 = time.perf_counter()
        calls = 0
        while calls < 3 or time.perf_counter() - t0 < warmup_s:
            self.fn(self.x)
            calls += 1
        one = min(self.block() for _ in range(3))
        self.n = max(1, min(2000, round(block_ms / max(one, 1e-4))))

    def summary(self) -> dict:
        ts = sorted(self.times_ms)
        return {
            "median_ms": statistics.median(ts),
            "p25_ms": ts[len(ts) // 4],
            "p75_ms": ts[(3 * len(ts)) // 4],
            "calls_per_block": self.n,
            "repeats": len(ts),
            "blocks_disturbed": self.disturbed,
        }


def time_group(forms: Sequence[Form], repeats: int, block_ms: float, warmup_s: float, rng) -> None:
    """Interleaved timing of ``forms`` (shuffled order at every repeat)."""
    with torch.no_grad():
        for f in forms:
            f.calibrate(block_ms, warmup_s)
        order = list(forms)
        for _ in range(repeats):
            rng.shuffle(order)
            for f in order:
                f.times_ms.append(f.block())


def paired_ratio(a: Form, b: Form) -> float:
    """Median over repeats of ``b / a`` (how many times faster ``a`` is than ``b``)."""
    return statistics.median(y / x for x, y in zip(a.times_ms, b.times_ms, strict=True))


# ----------------------------------------------------------------------------- networks part
def bench_networks(
    keys: Sequence[str],
    sparsities: Sequence[float],
    repeats: int,
    block_ms: float,
    warmup_s: float,
    seed: int,
    rng: random.Random,
) -> dict:
    out = {}
    for key in keys:
        spec = NETWORKS[key]
        torch.manual_seed(seed)
        dense = spec.factory().eval().requires_grad_(False)
        example = make_input(spec, 1, seed)
        t0 = time.perf_counter()
        dense_prog = export_module(dense, example)
        dense_exported = dense_prog.module()
        entry = {
            "label": spec.label,
            "dense_pt2_bytes": pt2_bytes(dense_prog),
            "dense_state_bytes": state_size_bytes(dense),
            "sparsities": {},
        }
        del dense_prog
        variants = {}
        filters: dict[float, tuple[nn.Module, nn.Module]] = {}
        max_err = 0.0
        stepped = pruned_in_steps(dense, sparsities) if _has_conv(dense) else {}
        for s in sparsities:
            masked = pruned(dense, s)
            small = compact(masked)
            by_size = compact(masked, rule="size")
            size_summary = compact_summary(by_size)
            prog = export_module(small, example)
            small_exported = prog.module()
            summary = compact_summary(small)
            x32 = make_input(spec, 32, seed + 1)
            max_err = max(max_err, relative_error(masked, (small, small_exported), x32))
            flops = count_flops(masked, make_input(spec, 2, seed))
            masked_pt2 = pt2_bytes(export_module(masked, example)) if s == 0.95 else None
            entry["sparsities"][f"{s:g}"] = {
                "sparsity": s,
                "per_layer_sparsity": {
                    layer["name"]: 1.0 - layer["density"] for layer in summary["layers"]
                },
                "formats": {layer["name"]: layer["format"] for layer in summary["layers"]},
                "compact_pt2_bytes": pt2_bytes(prog),
                "size_rule_formats": {
                    layer["name"]: layer["format"] for layer in size_summary["layers"]
                },
                "size_rule_pt2_bytes": pt2_bytes(export_module(by_size, example)),
                "size_rule_state_bytes": size_summary["bytes"],
                "compact_state_bytes": summary["bytes"],
                "masked_pt2_bytes": masked_pt2,
                **flops,
            }
            if _has_conv(dense) and s > 0:
                # prune_structure "filters", in 1% steps as a run prunes; the
                # channels one step from dense would keep are recorded beside.
                masked_f = stepped[s]
                small_f = compact(masked_f)
                one_step = compact(pruned(dense, s, structure="filters")).removed_channels
                prog_f = export_module(small_f, example)
                small_f_exported = prog_f.module()
                max_err = max(max_err, relative_error(masked_f, (small_f, small_f_exported), x32))
                flops_f = count_flops(small_f, make_input(spec, 2, seed))
                entry["sparsities"][f"{s:g}"]["filters"] = {
                    "removed_channels": small_f.removed_channels,
                    "one_step_removed_channels": one_step,
                    "compact_pt2_bytes": pt2_bytes(prog_f),
                    "compact_state_bytes": compact_summary(small_f)["bytes"],
                    "formats": {
                        layer["name"]: layer["format"]
                        for layer in compact_summary(small_f)["layers"]
                    },
                    **flops_f,
                }
                filters[s] = (small_f, small_f_exported)
                del prog_f
            variants[s] = (masked, small, small_exported, by_size)
            del prog
        entry["max_relative_error"] = max_err
        entry["build_s"] = time.perf_counter() - t0
        print(f"  {key}: built and exported in {entry['build_s']:.1f} s", file=sys.stderr)
        for batch in BATCHES:
            x = make_input(spec, batch, seed + 2)
            forms = {
                "dense": Form("dense", dense, x),
                "dense_exported": Form("dense_exported", dense_exported, x),
            }
            for s, (masked, small, small_exported, by_size) in variants.items():
                forms[f"masked@{s:g}"] = Form(f"masked@{s:g}", masked, x)
                forms[f"size_rule@{s:g}"] = Form(f"size_rule@{s:g}", by_size, x)
                forms[f"compact@{s:g}"] = Form(f"compact@{s:g}", small, x)
                forms[f"compact_exported@{s:g}"] = Form(
                    f"compact_exported@{s:g}", small_exported, x
                )
            for s, (small_f, small_f_exported) in filters.items():
                forms[f"filters@{s:g}"] = Form(f"filters@{s:g}", small_f, x)
                forms[f"filters_exported@{s:g}"] = Form(
                    f"filters_exported@{s:g}", small_f_exported, x
                )
            time_group(list(forms.values()), repeats, block_ms, warmup_s, rng)
            res = {k: f.summary() for k, f in forms.items()}
            for s in variants:
                sk = f"{s:g}"
                res[f"speedup@{sk}"] = {
                    "compact_vs_dense": paired_ratio(forms[f"compact@{sk}"], forms["dense"]),
                    "size_rule_vs_dense": paired_ratio(forms[f"size_rule@{sk}"], forms["dense"]),
                    "compact_exported_vs_dense": paired_ratio(
                        forms[f"compact_exported@{sk}"], forms["dense"]
                    ),
                    "compact_exported_vs_dense_exported": paired_ratio(
                        forms[f"compact_exported@{sk}"], forms["dense_exported"]
                    ),
                    "masked_vs_dense": paired_ratio(forms[f"masked@{sk}"], forms["dense"]),
                }
                if s in filters:
                    res[f"speedup@{sk}"]["filters_vs_dense"] = paired_ratio(
                        forms[f"filters@{sk}"], forms["dense"]
                    )
                    res[f"speedup@{sk}"]["filters_exported_vs_dense_exported"] = paired_ratio(
                        forms[f"filters_exported@{sk}"], forms["dense_exported"]
                    )
            entry[f"batch{batch}"] = res
            print(
                f"  {key} batch {batch}: dense {res['dense']['median_ms']:.3f} ms, "
                f"compact@0.95 {res.get('compact@0.95', res['dense'])['median_ms']:.3f} ms",
                file=sys.stderr,
            )
        out[key] = entry
        del variants, filters, dense_exported
        gc.collect()
    return out


# ----------------------------------------------------------------------------- layer kernels
LINEAR_SHAPES = ((3136, 2048), (3136, 512), (2048, 18), (256, 256), (17, 256))  # (in, out)
CONV_SHAPES = (  # (layer, input shape of one sample)
    ((4, 32, 8, 4), (4, 84, 84)),
    ((32, 64, 4, 2), (32, 20, 20)),
    ((64, 64, 3, 1), (64, 9, 9)),
)
DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)


def _random_mask_(weight: torch.Tensor, density: float, g: torch.Generator) -> None:
    keep = round(density * weight.numel())
    flat = torch.zeros(weight.numel(), dtype=torch.bool)
    flat[torch.randperm(weight.numel(), generator=g)[:keep]] = True
    with torch.no_grad():
        weight.mul_(flat.view_as(weight))


def _csr_addmm(csr: torch.Tensor, bias: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: torch.addmm(bias, csr, v.t()).t()


def bench_layers(
    densities: Sequence[float], repeats: int, block_ms: float, warmup_s: float, seed: int, rng
) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for kind, shapes in (("Linear", LINEAR_SHAPES), ("Conv2d", CONV_SHAPES)):
        for shape in shapes:
            for density in densities:
                torch.manual_seed(seed)
                if kind == "Linear":
                    layer = nn.Linear(*shape).eval().requires_grad_(False)
                    in_shape: tuple[int, ...] = (shape[0],)
                    label = f"Linear {shape[0]}x{shape[1]}"
                else:
                    (cin, cout, k, stride), in_shape = shape
                    layer = nn.Conv2d(cin, cout, k, stride=stride).eval().requires_grad_(False)
                    label = f"Conv2d {cin}->{cout} k{k} s{stride} on {in_shape[1]}x{in_shape[2]}"
                _random_mask_(layer.weight, density, g)
                sparse = (
                    CompactLinear.from_linear(layer) if kind == "Linear" else CompactConv2d(layer)
                )
                csr = layer.weight.detach().to_sparse_csr() if kind == "Linear" else None
                for batch in BATCHES:
                    x = torch.randn(batch, *in_shape, generator=g)
                    forms = [Form("dense", layer, x), Form("compact", sparse, x)]
                    if csr is not None:
                        bias = layer.bias.detach()[:, None]
                        forms.append(
                            Form(
                                "torch_csr",
                                lambda v, w=csr, b=bias: torch.addmm(b, w, v.t()).t(),
                                x,
                            )
                        )
                    time_group(forms, repeats, block_ms, warmup_s, rng)
                    row = {
                        "layer": label,
                        "kind": kind,
                        "density": density,
                        "numel": layer.weight.numel(),
                        "batch": batch,
                        **{f"{f.key}_ms": f.summary()["median_ms"] for f in forms},
                        "compact_speedup": paired_ratio(forms[1], forms[0]),
                    }
                    if csr is not None:
                        row["torch_csr_speedup"] = paired_ratio(forms[2], forms[0])
                    rows.append(row)
            print(f"  layer kernels: {label} done", file=sys.stderr)
    return {"rows": rows}


# ----------------------------------------------------------------------------- channels
CHANNEL_FRACTIONS = (1.0, 0.5, 0.25)


def _torso(fraction: float) -> nn.Module:
    """The Nature CNN's convolutions with ``fraction`` of the channels (structured pruning)."""
    from torchrl_eaudeqn.modules import ScaleObservation

    c1, c2, c3 = (max(1, round(c * fraction)) for c in (32, 64, 64))
    return nn.Sequential(
        ScaleObservation(),
        nn.Conv2d(4, c1, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(c2, c3, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(-3),
    ).eval()


def bench_channels(repeats: int, block_ms: float, warmup_s: float, seed: int, rng) -> dict:
    """Dense convolution torsos with fewer channels: what channel pruning would buy."""
    torch.manual_seed(seed)
    out = {}
    for batch in BATCHES:
        x = make_input(NETWORKS["cnn_large"], batch, seed)
        forms = [Form(f"{f:g}", _torso(f), x) for f in CHANNEL_FRACTIONS]
        time_group(forms, repeats, block_ms, warmup_s, rng)
        out[f"batch{batch}"] = {
            f.key: {
                "median_ms": f.summary()["median_ms"],
                "speedup": paired_ratio(f, forms[0]),
                "conv_weights": sum(
                    m.weight.numel() for m in f.fn.modules() if isinstance(m, nn.Conv2d)
                ),
            }
            for f in forms
        }
    return out


# ----------------------------------------------------------------------------- report
def environment(threads: int) -> dict:
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_at_start"] = list(os.getloadavg())
    return env


def verdicts(nets: dict) -> dict:
    out = {}
    large = nets.get("cnn_large")
    if large and "0.95" in large["sparsities"]:
        s = large["sparsities"]["0.95"]
        ratio = s["compact_pt2_bytes"] / large["dense_pt2_bytes"]
        out["size"] = {
            "what": "Nature CNN width 2048 at 95%: compact pt2 bytes / dense pt2 bytes",
            "value": ratio,
            "target": TARGET_SIZE_RATIO,
            "met": ratio <= TARGET_SIZE_RATIO,
        }
        sp = large["batch32"]["speedup@0.95"]
        out["speed"] = {
            "what": "Nature CNN width 2048 at 95%, batch 32: dense ms / compact ms",
            "eager": sp["compact_vs_dense"],
            "exported_vs_dense_eager": sp["compact_exported_vs_dense"],
            "exported_vs_dense_exported": sp["compact_exported_vs_dense_exported"],
            "target": TARGET_SPEEDUP_B32,
            "met": min(sp["compact_vs_dense"], sp["compact_exported_vs_dense_exported"])
            >= TARGET_SPEEDUP_B32,
        }
        if "filters_vs_dense" in sp:
            f = s["filters"]
            out["speed_filters"] = {
                "what": "the same, pruned with prune_structure 'filters' (conv channels removed)",
                "eager": sp["filters_vs_dense"],
                "exported_vs_dense_exported": sp["filters_exported_vs_dense_exported"],
                "size_ratio": f["compact_pt2_bytes"] / large["dense_pt2_bytes"],
                "target": TARGET_SPEEDUP_B32,
                "met": min(sp["filters_vs_dense"], sp["filters_exported_vs_dense_exported"])
                >= TARGET_SPEEDUP_B32,
            }
    return out


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else (f"{x:.2f}" if x < 100 else f"{x:.1f}")


def _bytes(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n} B"


def markdown_section(result: dict) -> str:
    env = result["environment"]
    cfg = result["config"]
    date = result["timestamp"][:10]
    lines = [
        "## Inference: dense, masked and compact sparse networks (CPU)",
        "",
        f"Written by `benchmarks/bench_inference.py` on {date}: {env['cpu_model']}, "
        f"{env['cpu_count']} CPU cores, {env['torch_threads']} torch thread(s), torch "
        f"{env['torch']}. Global magnitude pruning of the seeded random initialisation; "
        f"median of {cfg['repeats']} interleaved repeats (ms per forward call, `no_grad`); "
        "speedups are medians of per-repeat ratios, dense / form. Raw numbers: "
        "`benchmarks/results/inference_cpu.json`. Reproduce: "
        "`python benchmarks/bench_inference.py`. Forms: *masked* = pruned weights kept as "
        "zeros in dense tensors (today's registered agent); *compact* = "
        "`torchrl_eaudeqn.export.compact(masked)` (rule `auto`), eager; *exported* = the "
        "compact module through `torch.export` (the registered `pt2` artifact), compared "
        "with the dense network through `torch.export`; *`size` rule* = "
        '`compact(masked, rule="size")` (every layer whose CSR form is smaller), eager. '
        "Latencies are ms at batch 1 / batch 32. See `docs/export.md`.",
        "",
    ]
    for net in result["networks"].values():
        b1, b32 = net["batch1"], net["batch32"]

        def pair(key: str, b1: dict = b1, b32: dict = b32) -> str:
            return f"{_ms(b1[key]['median_ms'])} / {_ms(b32[key]['median_ms'])}"

        lines += [
            f"### {net['label']}",
            "",
            f"Dense: {pair('dense')} ms at batch 1 / 32 (through `torch.export`: "
            f"{pair('dense_exported')} ms); `pt2` artifact {_bytes(net['dense_pt2_bytes'])}. "
            "Largest output difference compact vs masked, relative to the largest output: "
            f"{net['max_relative_error']:.1e}.",
            "",
            "| sparsity | masked ms | compact ms | exported ms | speedup compact | "
            "speedup exported | `size`-rule ms | speedup `size` rule |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for sk in net["sparsities"]:
            sp1, sp32 = b1[f"speedup@{sk}"], b32[f"speedup@{sk}"]
            lines.append(
                f"| {float(sk) * 100:g}% | {pair(f'masked@{sk}')} | {pair(f'compact@{sk}')} | "
                f"{pair(f'compact_exported@{sk}')} | "
                f"{sp1['compact_vs_dense']:.2f}x / {sp32['compact_vs_dense']:.2f}x | "
                f"{sp1['compact_exported_vs_dense_exported']:.2f}x / "
                f"{sp32['compact_exported_vs_dense_exported']:.2f}x | "
                f"{pair(f'size_rule@{sk}')} | "
                f"{sp1['size_rule_vs_dense']:.2f}x / {sp32['size_rule_vs_dense']:.2f}x |"
            )
        lines += [
            "",
            "| sparsity | non-zero params | MFLOPs per sample (non-zero / all) | "
            "CSR layers (`auto`) | `pt2` bytes (`auto`) | CSR layers (`size`) | "
            "`pt2` bytes (`size`) |",
            "|---:|---:|---:|---|---:|---|---:|",
        ]
        dense_pt2 = net["dense_pt2_bytes"]
        for sk, s in net["sparsities"].items():

            def csr(formats: dict) -> str:
                return ", ".join(n for n, f in formats.items() if f == "csr") or "none"

            lines.append(
                f"| {float(sk) * 100:g}% | {s['params_nonzero']:,} / {s['params']:,} | "
                f"{s['flops_nonzero'] / 1e6:.2f} / {s['flops'] / 1e6:.2f} | "
                f"{csr(s['formats'])} | {_bytes(s['compact_pt2_bytes'])} "
                f"({100 * s['compact_pt2_bytes'] / dense_pt2:.1f}%) | "
                f"{csr(s['size_rule_formats'])} | {_bytes(s['size_rule_pt2_bytes'])} "
                f"({100 * s['size_rule_pt2_bytes'] / dense_pt2:.1f}%) |"
            )
        s95 = net["sparsities"].get("0.95")
        if s95 is not None:
            per_layer = ", ".join(
                f"{n} {100 * v:.0f}%" for n, v in s95["per_layer_sparsity"].items()
            )
            masked = s95.get("masked_pt2_bytes")
            lines += [
                "",
                f"At 95% global sparsity the layers get: {per_layer}."
                + (
                    f" The masked network's `pt2` artifact: {_bytes(masked)} "
                    f"({100 * masked / dense_pt2:.0f}% of dense)."
                    if masked
                    else ""
                ),
            ]
        with_filters = [sk for sk, s in net["sparsities"].items() if "filters" in s]
        if with_filters:
            lines += [
                "",
                "Pruned with `prune_structure: filters` in steps of 1% of the weights, "
                "as a run prunes (each convolution loses whole filters, which `compact()` "
                "removes; the weights it loses are counted as in the table above); "
                "*one step* is the same sparsity reached in one step from dense:",
                "",
                "| sparsity | channels kept (layers that lost some) | one step | "
                "MFLOPs per sample | compact ms | speedup compact | speedup exported | "
                "`pt2` bytes |",
                "|---:|---|---|---:|---:|---:|---:|---:|",
            ]

            def kept(removed: dict) -> str:
                return ", ".join(f"{k}: {n - r}/{n}" for k, (r, n) in removed.items()) or "all"

            for sk in with_filters:
                f = net["sparsities"][sk]["filters"]
                sp1, sp32 = b1[f"speedup@{sk}"], b32[f"speedup@{sk}"]
                one_step = kept(f.get("one_step_removed_channels", {}))
                lines.append(
                    f"| {float(sk) * 100:g}% | {kept(f['removed_channels'])} | {one_step} | "
                    f"{f['flops'] / 1e6:.2f} | "
                    f"{pair(f'filters@{sk}')} | "
                    f"{sp1['filters_vs_dense']:.2f}x / {sp32['filters_vs_dense']:.2f}x | "
                    f"{sp1['filters_exported_vs_dense_exported']:.2f}x / "
                    f"{sp32['filters_exported_vs_dense_exported']:.2f}x | "
                    f"{_bytes(f['compact_pt2_bytes'])} "
                    f"({100 * f['compact_pt2_bytes'] / dense_pt2:.1f}%) |"
                )
        lines.append("")
    channels = result.get("channels")
    if channels:
        lines += [
            "### What would pay for the convolutions: fewer channels (structured pruning)",
            "",
            "Dense Nature CNN convolution torsos (scale, 3 convolutions, ReLUs) with a "
            "fraction of the channels, as channel pruning would leave them; ms at batch 1 / 32 "
            "and speedup against all channels.",
            "",
            "| channels | conv weights | ms b1 / b32 | speedup b1 / b32 |",
            "|---:|---:|---:|---:|",
        ]
        for key, c1 in channels["batch1"].items():
            c32 = channels["batch32"][key]
            lines.append(
                f"| {float(key):.0%} | {c1['conv_weights']:,} | {_ms(c1['median_ms'])} / "
                f"{_ms(c32['median_ms'])} | {c1['speedup']:.2f}x / {c32['speedup']:.2f}x |"
            )
        lines.append("")
    layers = result.get("layers")
    if layers:
        lines += [
            "### Layer kernels: when does the sparse kernel pay?",
            "",
            "Single layers with uniformly random unstructured masks; speedup = dense ms / "
            "sparse ms (> 1: sparse is faster). *compact* = `embedding_bag` CSR kernel "
            "(exportable); *torch CSR* = `torch.addmm` on a `torch.sparse_csr` weight "
            "(MKL; eager only).",
            "",
            "| layer | batch | dense ms | " + " | ".join(f"{d:g}" for d in DENSITIES) + " |",
            "|---|---:|---:|" + "---:|" * len(DENSITIES),
        ]
        by_layer: dict[tuple[str, int], dict[float, dict]] = {}
        for row in layers["rows"]:
            by_layer.setdefault((row["layer"], row["batch"]), {})[row["density"]] = row
        for (label, batch), rows in by_layer.items():
            dense_ms = statistics.median(r["dense_ms"] for r in rows.values())
            cells = []
            for d in DENSITIES:
                r = rows.get(d)
                if r is None:
                    cells.append("")
                    continue
                cell = f"{r['compact_speedup']:.2f}x"
                if "torch_csr_speedup" in r:
                    cell += f" ({r['torch_csr_speedup']:.2f}x)"
                cells.append(cell)
            lines.append(f"| {label} | {batch} | {_ms(dense_ms)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Columns are weight densities (fraction of non-zeros); cells: compact speedup "
            "(torch CSR speedup in parentheses, Linear only). The `auto` rule of `compact()` "
            f"makes a Linear sparse at density <= {LINEAR_MAX_DENSITY:g} with >= "
            f"{MIN_SPARSE_NUMEL:,} weights and keeps convolutions dense.",
            "",
        ]
    v = result["verdicts"]
    if v:
        lines += ["### Targets", ""]
        if "size" in v:
            lines.append(
                f"- Size, {v['size']['what']} <= {v['size']['target']:.0%}: "
                f"**{v['size']['value']:.1%}** ({'met' if v['size']['met'] else 'not met'})."
            )
        if "speed" in v:
            sp = v["speed"]
            lines.append(
                f"- Speed, {sp['what']} >= {sp['target']:g}x: eager **{sp['eager']:.2f}x**, "
                f"exported vs exported dense **{sp['exported_vs_dense_exported']:.2f}x** "
                f"({'met' if sp['met'] else 'not met'})."
            )
        if "speed_filters" in v:
            sf = v["speed_filters"]
            lines.append(
                f"- Speed, {sf['what']}: eager **{sf['eager']:.2f}x**, exported vs exported "
                f"dense **{sf['exported_vs_dense_exported']:.2f}x** "
                f"({'met' if sf['met'] else 'not met'}), artifact {sf['size_ratio']:.1%} of dense."
            )
        lines.append("")
    return "\n".join(lines)


def update_markdown(path: Path, tag: str, body: str) -> None:
    """Replace the text between the ``inference:<tag>`` markers (append it if absent)."""
    start = f"<!-- inference:{tag}:start -->"
    end = f"<!-- inference:{tag}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--quick", action="store_true", help="fast, noisier run (~1 min)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per form")
    p.add_argument("--block-ms", type=float, default=None, help="target length of a timed block")
    p.add_argument("--nets", default=",".join(NETWORKS), help=f"comma list from {list(NETWORKS)}")
    p.add_argument(
        "--sparsities", default=",".join(f"{s:g}" for s in SPARSITIES), help="comma list"
    )
    p.add_argument("--no-layers", action="store_true", help="skip the layer-kernel table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--docs-file", type=Path, default=ROOT / "docs" / "benchmarks.md")
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--docs", dest="docs", action="store_true", default=None)
    docs.add_argument("--no-docs", dest="docs", action="store_false")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = set(nets) - set(NETWORKS)
    if unknown:
        raise SystemExit(f"unknown network(s) {sorted(unknown)}; choose from {list(NETWORKS)}")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    repeats = args.repeats or (5 if args.quick else 21)
    block_ms = args.block_ms or (5.0 if args.quick else 20.0)
    warmup_s = 0.02 if args.quick else 0.1
    densities = (0.2, 0.05) if args.quick else DENSITIES
    write_docs = (not args.quick) if args.docs is None else args.docs
    rng = random.Random(args.seed)
    env = environment(args.threads)
    t0 = time.perf_counter()
    print(f"networks ({args.threads} thread(s))...", file=sys.stderr)
    networks = bench_networks(nets, sparsities, repeats, block_ms, warmup_s, args.seed, rng)
    layers = None
    if not args.no_layers:
        print("layer kernels...", file=sys.stderr)
        layers = bench_layers(
            densities, max(5, repeats // 2), block_ms / 2, warmup_s, args.seed, rng
        )
    print("channel-pruned torsos...", file=sys.stderr)
    channels = bench_channels(repeats, block_ms, warmup_s, args.seed, rng)
    if hasattr(os, "getloadavg"):
        env["loadavg_at_end"] = list(os.getloadavg())
    given = list(sys.argv[1:] if argv is None else argv)
    result = {
        "benchmark": "inference",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_inference.py", *given]),
        "environment": env,
        "config": {
            "threads": args.threads,
            "repeats": repeats,
            "block_ms": block_ms,
            "sparsities": sparsities,
            "batches": list(BATCHES),
            "seed": args.seed,
            "rule": "auto",
            "linear_max_density": LINEAR_MAX_DENSITY,
            "min_sparse_numel": MIN_SPARSE_NUMEL,
        },
        "networks": networks,
        "layers": layers,
        "channels": channels,
        "verdicts": verdicts(networks),
        "wall_s": time.perf_counter() - t0,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = "inference_cpu_quick.json" if args.quick else "inference_cpu.json"
    path = args.results_dir / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path} ({result['wall_s']:.0f} s)", file=sys.stderr)
    section = markdown_section(result)
    if write_docs:
        update_markdown(args.docs_file, "cpu", section)
        print(f"updated {args.docs_file}", file=sys.stderr)
    print(section)
    return result


if __name__ == "__main__":
    main()
