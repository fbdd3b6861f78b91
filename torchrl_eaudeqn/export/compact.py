"""Compact inference modules for sparse (masked) networks.

A masked network keeps its pruned weights as zeros in dense tensors: it is
exactly as large and as slow as the dense one. :func:`compact` rewrites it
for inference: every ``nn.Linear`` (and, where it pays, ``nn.Conv2d``) whose
weight is sparse enough becomes a :class:`CompactLinear` /
:class:`CompactConv2d` that stores only the non-zeros in CSR form (row
offsets ``int32``, column indices ``int16`` when they fit, values in the
weight's dtype); every other layer is kept as it is.

The per-layer choice (``rule``):

* ``"auto"`` (default): a Linear goes sparse when its density (fraction of
  non-zero weights) is at most :data:`LINEAR_MAX_DENSITY` and it has at least
  :data:`MIN_SPARSE_NUMEL` weights; convolutions stay dense. Measured on one
  core (``benchmarks/bench_inference.py``, ``docs/export.md``): the sparse
  kernel beats the dense one for the 3136 x 2048 layer at density <= 0.1 at
  batch 1 and 32, for 3136 x 512 at batch 32 (at batch 1 only below 0.02);
  on layers under ~1M weights (256 x 256, 2048 x 18, 3136 x 32) its fixed
  cost (~0.06 ms) makes it slower at every density; and the im2col sparse
  convolution (:class:`CompactConv2d`) is slower than the dense one at every
  density down to 1% at batch 32.
* ``"measure"``: time both forms of every candidate layer on its actual input
  (from ``example_input``; pass the batch size you will serve) and keep the
  faster.
* ``"size"``: sparse whenever the CSR arrays are smaller than the dense weight.
* ``"sparse"`` / ``"dense"``: every supported layer sparse / none.

Example:
    >>> from torchrl_eaudeqn.modules import mlp
    >>> net = mlp(64, 4, hidden=(256,))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.mul_(torch.rand_like(net[0].weight) < 0.05)
    >>> small = compact(net, rule="size")  # "auto" keeps layers this small dense
    >>> type(small[0]).__name__, type(small[2]).__name__
    ('CompactLinear', 'Linear')
    >>> x = torch.randn(3, 64)
    >>> torch.allclose(small(x), net(x), atol=1e-6)
    True

The layers and their kernel are in :mod:`torchrl_eaudeqn.export.layers`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .layers import (
    CompactConv2d,
    CompactLinear,
    IndexDType,
    _CompactBase,
    _index_dtype,
    _pair,
    supports_compact_conv,
)
from .measure import measure_latency_ms, state_size_bytes

__all__ = [
    "LINEAR_MAX_DENSITY",
    "MIN_SPARSE_NUMEL",
    "compact",
    "compact_summary",
    "dense_equivalent",
    "remove_dead_channels",
]

#: ``rule="auto"``: a Linear with at most this fraction of non-zero weights goes sparse.
LINEAR_MAX_DENSITY = 0.1
#: ``rule="auto"``: Linear layers with fewer weights stay dense (the sparse kernel's
#: fixed cost exceeds the whole dense product of a small matrix).
MIN_SPARSE_NUMEL = 1_000_000

Rule = Literal["auto", "measure", "size", "sparse", "dense"]
_RULES = ("auto", "measure", "size", "sparse", "dense")


# ----------------------------------------------------------------------------- compact()
def _density(weight: torch.Tensor) -> float:
    return int(torch.count_nonzero(weight)) / max(weight.numel(), 1)


def _candidates(module: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, mod in module.named_modules():
        if type(mod) is nn.Linear or (type(mod) is nn.Conv2d and supports_compact_conv(mod)):
            out.append((name, mod))
    return out


def _make_compact(layer: nn.Module, index_dtype: IndexDType) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return CompactLinear.from_linear(layer, index_dtype=index_dtype)
    return CompactConv2d(layer, index_dtype=index_dtype)


def _csr_bytes(layer: nn.Module, index_dtype: IndexDType) -> int:
    weight = layer.weight
    rows = weight.shape[0]
    cols = weight.numel() // rows
    nnz = int(torch.count_nonzero(weight))
    index_bytes = torch.tensor([], dtype=_index_dtype(cols, index_dtype)).element_size()
    return 4 * (rows + 1) + nnz * (index_bytes + weight.element_size())


def _layer_inputs(module: nn.Module, names: Sequence[str], example: torch.Tensor) -> dict:
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    mods = dict(module.named_modules())
    for name in names:

        def hook(_mod: nn.Module, args: tuple, _name: str = name) -> None:
            inputs.setdefault(_name, args[0].detach())

        handles.append(mods[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return inputs


def _choose(
    name: str,
    layer: nn.Module,
    rule: Rule,
    index_dtype: IndexDType,
    layer_input: torch.Tensor | None,
) -> bool:
    """Whether ``layer`` goes sparse under ``rule``."""
    if rule == "sparse":
        return True
    if rule == "dense":
        return False
    if rule == "size":
        dense_bytes = layer.weight.numel() * layer.weight.element_size()
        return _csr_bytes(layer, index_dtype) < dense_bytes
    if rule == "auto":
        if isinstance(layer, nn.Linear):
            numel = layer.weight.numel()
            return numel >= MIN_SPARSE_NUMEL and _density(layer.weight) <= LINEAR_MAX_DENSITY
        return False  # convolutions: the sparse kernel never paid (module docstring)
    # "measure"
    if layer_input is None:
        return False  # the layer did not run on the example input
    sparse = _make_compact(layer, index_dtype)
    dense_ms = measure_latency_ms(layer, layer_input, repeats=5)
    sparse_ms = measure_latency_ms(sparse, layer_input, repeats=5)
    return sparse_ms < dense_ms


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


# Elementwise modules a constant channel passes through unchanged in shape.
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout,
)  # fmt: skip


@torch.no_grad()
def remove_dead_channels(module: nn.Module) -> dict[str, tuple[int, int]]:
    """Drop the output channels whose weights are all zero, in place; exact up to rounding.

    In every ``nn.Sequential`` inside ``module``, a ``Conv2d`` or ``Linear``
    whose output channel (filter, neuron) has only zero weights outputs a
    constant, ``act(bias)``. When the next layer (after elementwise
    activations, and a ``Flatten`` between a convolution and a ``Linear``)
    is a ``Linear`` or an unpadded, ungrouped ``Conv2d``, that constant's
    contribution moves into the next layer's bias and the channel is
    removed from both layers (with a padded convolution only channels whose
    constant is 0 go). The network gets smaller and keeps its dense kernels:
    what filter pruning (``prune_structure: filters``) buys at inference.
    The last layer's outputs are never removed.

    Returns:
        ``{layer name: (channels removed, channels before)}`` for the layers it shrank.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight[1].zero_()
        >>> x = torch.randn(5, 4)
        >>> before = net(x)
        >>> remove_dead_channels(net)
        {'0': (1, 3)}
        >>> net[0].out_features, net[2].in_features, torch.allclose(net(x), before, atol=1e-6)
        (2, 2, True)
    """
    removed: dict[str, tuple[int, int]] = {}
    for seq_name, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        for i, producer in enumerate(layers):
            if not isinstance(producer, nn.Conv2d | nn.Linear) or producer.weight.is_meta:
                continue
            if isinstance(producer, nn.Conv2d) and producer.groups != 1:
                continue
            j, acts, flatten = i + 1, [], False
            while j < len(layers) and isinstance(layers[j], _ELEMENTWISE):
                acts.append(layers[j])
                j += 1
            if isinstance(producer, nn.Conv2d) and j < len(layers):
                f = layers[j]
                if isinstance(f, nn.Flatten) and f.start_dim in (1, -3) and f.end_dim == -1:
                    flatten, j = True, j + 1
                    while j < len(layers) and isinstance(layers[j], _ELEMENTWISE):
                        acts.append(layers[j])
                        j += 1
            if j >= len(layers):
                continue
            consumer = layers[j]
            n_out = producer.weight.shape[0]
            dead = ~producer.weight.reshape(n_out, -1).any(1)
            if not dead.any() or dead.all():
                continue
            w = producer.weight
            const = torch.zeros(n_out, dtype=w.dtype, device=w.device)
            if producer.bias is not None:
                const = producer.bias.detach().clone()
            for act in acts:
                if not isinstance(act, nn.Dropout):  # identity at inference
                    const = act(const)
            if isinstance(consumer, nn.Conv2d) and not flatten:
                if consumer.groups != 1 or consumer.weight.shape[1] != n_out:
                    continue
                pad = consumer.padding
                padded = pad == "same" or (not isinstance(pad, str) and any(_pair(pad)))
                if padded and consumer.padding_mode == "zeros":
                    dead &= const == 0  # borders see zero padding, not the constant
                if not dead.any():
                    continue
                # A constant input channel adds c * (sum of its kernel) to every output pixel.
                add = (consumer.weight[:, dead].sum((2, 3)) * const[dead]).sum(1)
                consumer.weight = nn.Parameter(consumer.weight[:, ~dead].clone())
                consumer.in_channels = int((~dead).sum())
            elif isinstance(consumer, nn.Linear):
                if isinstance(producer, nn.Conv2d) and not flatten:
                    continue  # a Linear on the width axis
                per = consumer.in_features // n_out
                if per * n_out != consumer.in_features or (per != 1 and not flatten):
                    continue
                cols = dead.repeat_interleave(per)  # Flatten is channel-major
                add = consumer.weight[:, cols] @ const[dead].repeat_interleave(per)
                consumer.weight = nn.Parameter(consumer.weight[:, ~cols].clone())
                consumer.in_features = int((~cols).sum())
            else:
                continue
            if consumer.bias is None:
                consumer.bias = nn.Parameter(torch.zeros_like(add))
            consumer.bias = nn.Parameter(consumer.bias + add)
            producer.weight = nn.Parameter(producer.weight[~dead].clone())
            if producer.bias is not None:
                producer.bias = nn.Parameter(producer.bias[~dead].clone())
            if isinstance(producer, nn.Conv2d):
                producer.out_channels = int((~dead).sum())
            else:
                producer.out_features = int((~dead).sum())
            name = ".".join(filter(None, [seq_name, str(i)]))
            removed[name] = (int(dead.sum()), n_out)
    return removed


def compact(
    net: nn.Module,
    *,
    rule: Rule = "auto",
    example_input: torch.Tensor | None = None,
    index_dtype: IndexDType = "auto",
    remove_channels: bool = True,
) -> nn.Module:
    """A copy of ``net`` for inference, with sparse layers stored and computed in CSR form.

    ``nn.Linear`` layers become :class:`CompactLinear` and ``nn.Conv2d``
    layers :class:`CompactConv2d` where ``rule`` says so (see the module
    docstring); all other modules are copied unchanged. The result is in eval
    mode with gradients off, has the same outputs as ``net`` (float summation
    order aside, ~1e-6 relative), and exports with ``torch.export``. ``net``
    is not modified.

    Args:
        net: a trained (masked) network, masks applied (pruned weights are 0).
        rule: ``"auto"``, ``"measure"``, ``"size"``, ``"sparse"`` or ``"dense"``.
        example_input: an input batch; required by ``rule="measure"``, which
            times each layer on the input it receives from this batch.
        index_dtype: column index dtype of the CSR arrays (``"auto"``: int16
            when the layer has at most 32768 columns).
        remove_channels: first drop the channels whose weights are all zero
            (:func:`remove_dead_channels`; what ``prune_structure: filters``
            produces), recorded in the result's ``removed_channels`` attribute.

    Returns:
        The compact module (the layer itself when ``net`` is a single layer).

    Example:
        >>> from torchrl_eaudeqn.modules import nature_cnn
        >>> net = nature_cnn(6, "small")
        >>> small = compact(net, rule="sparse")
        >>> [type(m).__name__ for m in small if "Compact" in type(m).__name__]
        ['CompactConv2d', 'CompactConv2d', 'CompactConv2d', 'CompactLinear', 'CompactLinear']
        >>> x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
        >>> torch.allclose(small(x), net(x), atol=1e-5)
        True
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
    if rule == "measure" and example_input is None:
        raise ValueError("rule='measure' needs example_input")
    _index_dtype(1, index_dtype)  # validates the name
    module = copy.deepcopy(net).eval().requires_grad_(False)
    removed = remove_dead_channels(module) if remove_channels else {}
    module.requires_grad_(False)
    candidates = _candidates(module)
    inputs: dict[str, torch.Tensor] = {}
    if rule == "measure":
        inputs = _layer_inputs(module, [n for n, _ in candidates], example_input)
    for name, layer in candidates:
        if _choose(name, layer, rule, index_dtype, inputs.get(name)):
            new = _make_compact(layer, index_dtype)
            if not name:
                return new
            _set_submodule(module, name, new)
    module.removed_channels = removed
    return module


def dense_equivalent(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every compact layer turned back into its dense layer.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 4))
        >>> type(dense_equivalent(compact(net, rule="sparse"))[0]).__name__
        'Linear'
    """
    if isinstance(module, _CompactBase):
        return module.to_dense().eval()
    module = copy.deepcopy(module).eval()
    for name, layer in list(module.named_modules()):
        if name and isinstance(layer, _CompactBase):
            _set_submodule(module, name, layer.to_dense().eval())
    return module


# ----------------------------------------------------------------------------- reports
def compact_summary(module: nn.Module) -> dict[str, Any]:
    """Per-layer storage of a (compact or dense) module, and totals.

    Returns:
        ``{"layers": [{"name", "type", "format", "shape", "nnz", "density",
        "bytes", "dense_bytes"}], "bytes": int, "dense_bytes": int,
        "ratio": float, "removed_channels": {name: (removed, before)}}``
        where ``bytes`` is :func:`state_size_bytes` of
        ``module`` and ``dense_bytes`` that of its dense equivalent (all
        weights stored, float32 for a float32 model).

    Example:
        >>> net = nn.Sequential(nn.Linear(200, 100))
        >>> with torch.no_grad():
        ...     _ = net[0].weight[10:].zero_()
        >>> s = compact_summary(compact(net, rule="sparse"))
        >>> s["layers"][0]["format"], s["layers"][0]["nnz"], round(s["ratio"], 3)
        ('csr', 2000, 0.159)
    """
    layers = []
    dense_total = state_size_bytes(module)
    for name, mod in module.named_modules():
        if isinstance(mod, CompactLinear | CompactConv2d):
            if isinstance(mod, CompactLinear):
                shape = (mod.out_features, mod.in_features)
            else:
                shape = (mod.out_channels, mod.in_channels, *mod.kernel_size)
            numel = math.prod(shape)
            stored = sum(
                t.numel() * t.element_size()
                for t in (mod.crow_indices, mod.col_indices, mod.values)
            )
            dense_bytes = numel * mod.values.element_size()
            dense_total += dense_bytes - stored
            layers.append(
                {
                    "name": name,
                    "type": "Linear" if isinstance(mod, CompactLinear) else "Conv2d",
                    "format": "csr",
                    "shape": list(shape),
                    "nnz": mod.nnz,
                    "density": mod.nnz / max(numel, 1),
                    "bytes": stored,
                    "dense_bytes": dense_bytes,
                }
            )
        elif type(mod) in (nn.Linear, nn.Conv2d):
            weight = mod.weight
            nbytes = weight.numel() * weight.element_size()
            layers.append(
                {
                    "name": name,
                    "type": type(mod).__name__,
                    "format": "dense",
                    "shape": list(weight.shape),
                    "nnz": int(torch.count_nonzero(weight)),
                    "density": _density(weight),
                    "bytes": nbytes,
                    "dense_bytes": nbytes,
                }
            )
    total = state_size_bytes(module)
    return {
        "layers": layers,
        "bytes": total,
        "dense_bytes": dense_total,
        "ratio": total / max(dense_total, 1),
        "removed_channels": dict(getattr(module, "removed_channels", {})),
    }
