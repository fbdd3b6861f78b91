"""Sizes, latency and FLOPs of dense, masked and compact networks."""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .layers import CompactConv2d, CompactLinear

__all__ = ["count_flops", "exported_size_bytes", "measure_latency_ms", "state_size_bytes"]


# ----------------------------------------------------------------------------- sizes
def state_size_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in ``module.state_dict()`` (shared storage counted once).

    This is the payload of a saved model (``torch.save``, or the weights inside
    a ``pt2`` archive); format overhead comes on top.

    Example:
        >>> state_size_bytes(nn.Linear(3, 2))  # 6 weights + 2 biases, float32
        32
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in module.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def _export(module: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    example = example_input
    if example.shape[0] == 1:
        # torch.export specialises size-1 dims: batch 2 keeps the batch dynamic.
        example = example.expand(2, *example.shape[1:]).contiguous()
    with torch.no_grad():
        return torch.export.export(
            module, (example,), dynamic_shapes=[{0: torch.export.Dim.AUTO}], strict=False
        )


def exported_size_bytes(module: nn.Module, example_input: torch.Tensor) -> int:
    """Bytes of ``module`` saved with ``torch.export.save`` (what the registry stores).

    Args:
        module: the network (dense, masked or compact).
        example_input: one input batch (dim 0 is the batch).

    Example:
        >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
        >>> exported_size_bytes(net, torch.zeros(1, 64)) > state_size_bytes(net)
        True
    """
    buffer = io.BytesIO()
    torch.export.save(_export(module.eval(), example_input), buffer)
    return buffer.getbuffer().nbytes


# ----------------------------------------------------------------------------- timing
def measure_latency_ms(
    fn: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    repeats: int = 15,
    warmup: int = 3,
    min_block_s: float = 0.005,
) -> float:
    """Median wall-clock milliseconds of one ``fn(x)`` call (under ``no_grad``).

    Calls are timed in blocks of at least ``min_block_s`` seconds (so that
    sub-millisecond calls are not dominated by the timer), ``repeats`` blocks.

    Example:
        >>> ms = measure_latency_ms(nn.Linear(8, 8), torch.randn(4, 8), repeats=3)
        >>> ms > 0
        True
    """
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        n = 1
        while True:  # calibrate the block length
            t0 = time.perf_counter()
            for _ in range(n):
                fn(x)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_block_s or n >= 1024:
                break
            n *= 2
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(x)
            times.append((time.perf_counter() - t0) / n)
    return 1e3 * statistics.median(times)


# ----------------------------------------------------------------------------- reports
def count_flops(net: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Multiply-add counts of the Linear/Conv layers for one sample, dense and non-zero.

    ``flops`` counts 2 per multiply-add (the usual convention); ``nonzero``
    counts only the products with a non-zero weight, what an ideal sparse
    kernel would do. Activations, biases and reshapes are not counted.
    Works on dense, masked and compact modules.

    Returns:
        ``{"flops": int, "flops_nonzero": int, "params": int, "params_nonzero": int}``
        per sample of ``example_input`` (its batch dimension is divided out).

    Example:
        >>> net = nn.Sequential(nn.Linear(10, 4))
        >>> with torch.no_grad():
        ...     _ = net[0].weight[:2].zero_()
        >>> count_flops(net, torch.zeros(3, 10))
        {'flops': 80, 'flops_nonzero': 40, 'params': 44, 'params_nonzero': 24}
    """
    counts = {"flops": 0, "flops_nonzero": 0}
    batch = example_input.shape[0] if example_input.dim() > 1 else 1
    handles = []

    def add(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, CompactLinear | CompactConv2d):
            numel = (
                mod.in_features * mod.out_features
                if isinstance(mod, CompactLinear)
                else mod.out_channels * mod.in_channels * math.prod(mod.kernel_size)
            )
            nnz = mod.nnz
            rows = mod.out_features if isinstance(mod, CompactLinear) else mod.out_channels
        else:
            numel = mod.weight.numel()
            nnz = int(torch.count_nonzero(mod.weight))
            rows = mod.weight.shape[0]
        # Uses per output value: out.numel() / rows per sample and weight.
        uses = out.numel() // max(rows, 1) // max(batch, 1)
        counts["flops"] += 2 * numel * uses
        counts["flops_nonzero"] += 2 * nnz * uses

    for mod in net.modules():
        if isinstance(mod, nn.Linear | nn.Conv2d | CompactLinear | CompactConv2d):
            handles.append(mod.register_forward_hook(add))
    try:
        with torch.no_grad():
            net(example_input)
    finally:
        for h in handles:
            h.remove()
    params = params_nonzero = 0
    for mod in net.modules():
        if isinstance(mod, CompactLinear | CompactConv2d):
            if isinstance(mod, CompactLinear):
                params += mod.in_features * mod.out_features
            else:
                params += mod.out_channels * mod.in_channels * math.prod(mod.kernel_size)
            params_nonzero += mod.nnz
            if mod.bias is not None:
                params += mod.bias.numel()
                params_nonzero += int(torch.count_nonzero(mod.bias))
        else:
            for p in mod.parameters(recurse=False):
                params += p.numel()
                params_nonzero += int(torch.count_nonzero(p))
    return {**counts, "params": params, "params_nonzero": params_nonzero}
