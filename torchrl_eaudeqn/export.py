"""Compact inference modules for sparse (masked) networks.

A masked network keeps its pruned weights as zeros in dense tensors: it is
exactly as large and as slow as the dense one. :func:`compact` rewrites it
for inference: every ``nn.Linear`` (and, where it pays, ``nn.Conv2d``) whose
weight is sparse enough becomes a :class:`CompactLinear` /
:class:`CompactConv2d` that stores only the non-zeros in CSR form (row
offsets ``int32``, column indices ``int16`` when they fit, values in the
weight's dtype); every other layer is kept as it is.

The sparse product is computed with :func:`torch.nn.functional.embedding_bag`
(``mode="sum"`` with ``per_sample_weights``): output row ``o`` is the sum of
``value[k] * x[:, col[k]]`` over the non-zeros ``k`` of row ``o``, which is a
CSR matrix product. Why not torch's own sparse kernels: ``torch.sparse.mm``
on a CSR weight (MKL) is fast in eager mode, but ``torch.export`` cannot trace
sparse layouts (torch 2.13: "could not find kernel for aten.as_strided at
SparseCsrMeta"), so a registered (``pt2``) model could not use it; and it is
slower than ``embedding_bag`` at batch 32 (measured on one core of the
project's AMD EPYC: 3136 x 2048 at 95% sparsity, batch 32: dense 8.3 ms,
CSR ``torch.sparse.mm`` 2.4 ms, ``embedding_bag`` 1.1 ms; batch 1: dense
1.2 ms, CSR 0.5 ms, ``embedding_bag`` 0.5-0.7 ms). ``embedding_bag`` is a
plain ATen op: the compact module exports with ``torch.export`` and loads
without this package. A gather + ``index_add_``/``scatter_add_`` segment sum
was measured too and is 10-100x slower (it materialises batch x nnz products).

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
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LINEAR_MAX_DENSITY",
    "MIN_SPARSE_NUMEL",
    "CompactConv2d",
    "CompactLinear",
    "compact",
    "compact_summary",
    "count_flops",
    "dense_equivalent",
    "export_onnx",
    "exported_size_bytes",
    "measure_latency_ms",
    "remove_dead_channels",
    "state_size_bytes",
    "supports_compact_conv",
]

#: ``rule="auto"``: a Linear with at most this fraction of non-zero weights goes sparse.
LINEAR_MAX_DENSITY = 0.1
#: ``rule="auto"``: Linear layers with fewer weights stay dense (the sparse kernel's
#: fixed cost exceeds the whole dense product of a small matrix).
MIN_SPARSE_NUMEL = 1_000_000

Rule = Literal["auto", "measure", "size", "sparse", "dense"]
IndexDType = Literal["auto", "int16", "int32"]
_RULES = ("auto", "measure", "size", "sparse", "dense")
_INT16_MAX = 32_767


# ----------------------------------------------------------------------------- CSR storage
def _index_dtype(n_columns: int, index_dtype: IndexDType) -> torch.dtype:
    if index_dtype == "int32":
        return torch.int32
    if index_dtype == "int16":
        if n_columns - 1 > _INT16_MAX:
            raise ValueError(f"int16 column indices cannot address {n_columns} columns")
        return torch.int16
    if index_dtype != "auto":
        raise ValueError(f"index_dtype must be 'auto', 'int16' or 'int32', got {index_dtype!r}")
    return torch.int16 if n_columns - 1 <= _INT16_MAX else torch.int32


def _to_csr(
    matrix: torch.Tensor, index_dtype: IndexDType
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row offsets int32 [rows + 1], column indices [nnz], values [nnz]) of a 2-D tensor."""
    matrix = matrix.detach()
    rows, cols = matrix.shape
    nonzero = matrix != 0
    if int(nonzero.sum()) >= 2**31:
        raise ValueError("more than 2**31 non-zeros do not fit int32 row offsets")
    crow = torch.zeros(rows + 1, dtype=torch.int32, device=matrix.device)
    crow[1:] = nonzero.sum(1).cumsum(0)
    index = nonzero.nonzero()  # row-major order, as CSR needs
    col = index[:, 1].to(_index_dtype(cols, index_dtype))
    values = matrix[nonzero].clone()
    return crow, col, values


def _csr_matmul(
    table: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """``W @ table`` for a CSR ``W`` [rows, n] and a dense ``table`` [n, m] -> [rows, m].

    ``embedding_bag`` gathers the rows ``table[col[k]]``, scales them by
    ``values[k]`` and sums them per CSR row without materialising the
    nnz x m products (see the module docstring for the measurements).
    """
    return F.embedding_bag(
        # Stored as int16/int32 (size); int64 indices take a 2x faster embedding_bag
        # path at batch 1 (0.51 vs 0.98 ms, 3136 x 2048 at 95%), the cast costs ~0.1 ms.
        col.long(),
        table,
        crow.long(),
        mode="sum",
        per_sample_weights=values.to(table.dtype),
        include_last_offset=True,
    )


class _CompactBase(nn.Module):
    """CSR buffers shared by the compact layers."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None

    def _set_csr(
        self, matrix: torch.Tensor, bias: torch.Tensor | None, index_dtype: IndexDType
    ) -> None:
        crow, col, values = _to_csr(matrix, index_dtype)
        # Buffers, not parameters: inference only, and index tensors cannot be parameters.
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.register_buffer("values", values)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) weights."""
        return int(self.values.numel())

    def _dense_weight_2d(self, rows: int, cols: int) -> torch.Tensor:
        dense = torch.zeros(rows, cols, dtype=self.values.dtype, device=self.values.device)
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        row = torch.repeat_interleave(torch.arange(rows, device=dense.device), counts)
        dense[row, self.col_indices.long()] = self.values
        return dense


class CompactLinear(_CompactBase):
    """``nn.Linear`` with its weight stored in CSR form (only the non-zeros).

    Same outputs as the dense layer up to float summation order. Accepts any
    leading batch shape (including none), like ``nn.Linear``.

    Args:
        in_features: input size.
        out_features: output size.
        weight: dense weight ``[out_features, in_features]`` (zeros are dropped).
        bias: optional bias ``[out_features]`` (kept dense).
        index_dtype: column index dtype: ``"auto"`` (``int16`` when
            ``in_features <= 32768``, else ``int32``), ``"int16"`` or ``"int32"``.

    Example:
        >>> lin = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     _ = lin.weight[:, :2].zero_()
        >>> cl = CompactLinear.from_linear(lin)
        >>> cl.nnz, cl.col_indices.dtype
        (6, torch.int16)
        >>> x = torch.randn(2, 5, 4)
        >>> torch.allclose(cl(x), lin(x), atol=1e-6)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        index_dtype: IndexDType = "auto",
    ) -> None:
        super().__init__()
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(
                f"weight has shape {tuple(weight.shape)}, expected ({out_features}, {in_features})"
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._set_csr(weight, bias, index_dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, index_dtype: IndexDType = "auto") -> CompactLinear:
        """The compact twin of ``linear`` (its zeros are dropped)."""
        return cls(
            linear.in_features,
            linear.out_features,
            linear.weight,
            linear.bias,
            index_dtype=index_dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        # [n, batch] with unit strides: a batch-1 transpose keeps a stride of
        # in_features, which sends embedding_bag down a 2-3x slower path.
        table = x.reshape(-1, self.in_features).t().clone(memory_format=torch.contiguous_format)
        out = _csr_matmul(table, self.crow_indices, self.col_indices, self.values).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def to_dense(self) -> nn.Linear:
        """An equivalent ``nn.Linear`` (zeros restored)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin = lin.to(device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            lin.weight.copy_(self._dense_weight_2d(self.out_features, self.in_features))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        density = self.nnz / max(self.in_features * self.out_features, 1)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nnz={self.nnz}, density={density:.4f}, bias={self.bias is not None}"
        )


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


class CompactConv2d(_CompactBase):
    """``nn.Conv2d`` (groups 1, zero padding) with its weight stored in CSR form.

    The weight ``[C_out, C_in, kh, kw]`` is stored as a CSR matrix
    ``[C_out, C_in * kh * kw]``; the forward pass unfolds the input (im2col)
    and multiplies. The unfold copies ``C_in * kh * kw`` values per output
    pixel whatever the sparsity, so this only pays at very high sparsity (see
    ``docs/export.md``); :func:`compact` keeps convolutions dense otherwise.

    Args:
        conv: the dense convolution (``groups=1``, ``padding_mode="zeros"``,
            numeric padding).
        index_dtype: column index dtype, as for :class:`CompactLinear`.

    Example:
        >>> conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        >>> with torch.no_grad():
        ...     _ = conv.weight[:, 0].zero_()
        >>> cc = CompactConv2d(conv)
        >>> x = torch.randn(2, 2, 9, 9)
        >>> cc(x).shape, torch.allclose(cc(x), conv(x), atol=1e-6)
        (torch.Size([2, 4, 5, 5]), True)
    """

    def __init__(self, conv: nn.Conv2d, *, index_dtype: IndexDType = "auto") -> None:
        super().__init__()
        if not supports_compact_conv(conv):
            raise ValueError(
                "CompactConv2d needs groups=1, padding_mode='zeros' and numeric padding, got "
                f"{conv}"
            )
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = _pair(conv.kernel_size)
        self.stride = _pair(conv.stride)
        self.padding = _pair(conv.padding)
        self.dilation = _pair(conv.dilation)
        self._set_csr(conv.weight.reshape(conv.out_channels, -1), conv.bias, index_dtype)

    def _out_size(self, size: int, dim: int) -> int:
        k, s, p, d = self.kernel_size[dim], self.stride[dim], self.padding[dim], self.dilation[dim]
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        h_out = self._out_size(x.shape[-2], 0)
        w_out = self._out_size(x.shape[-1], 1)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        # [C_in*kh*kw, batch * pixels]: one embedding row per weight column.
        table = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        out = _csr_matmul(table, self.crow_indices, self.col_indices, self.values)
        out = out.reshape(self.out_channels, -1, h_out * w_out).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias[:, None]
        out = out.reshape(-1, self.out_channels, h_out, w_out)
        return out.squeeze(0) if unbatched else out

    def to_dense(self) -> nn.Conv2d:
        """An equivalent ``nn.Conv2d`` (zeros restored)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
        ).to(device=self.values.device, dtype=self.values.dtype)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        with torch.no_grad():
            conv.weight.copy_(self._dense_weight_2d(self.out_channels, fan_in).view_as(conv.weight))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        density = self.nnz / max(self.out_channels * fan_in, 1)
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, nnz={self.nnz}, density={density:.4f}"
        )


def supports_compact_conv(conv: nn.Module) -> bool:
    """Whether :class:`CompactConv2d` can replace ``conv``.

    Example:
        >>> supports_compact_conv(nn.Conv2d(2, 2, 3))
        True
        >>> supports_compact_conv(nn.Conv2d(2, 2, 3, groups=2))
        False
    """
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


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


# ----------------------------------------------------------------------------- ONNX
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


def export_onnx(
    net: nn.Module,
    example_input: torch.Tensor,
    path: str | None = None,
    *,
    sparse_min_numel: int = 1024,
) -> bytes:
    """ONNX file of a (masked or compact) network with its sparse weights stored sparse.

    ONNX has no operator that computes with a sparse weight, so the graph is
    the dense network's (exported with ``torch.onnx.export``); what shrinks is
    the file: each weight of at least ``sparse_min_numel`` elements whose
    sparse form is smaller (density below ~1/3) moves to the graph's
    ``sparse_initializer`` list, the format's own sparse storage (values plus
    ``int64`` linear indices, 12 bytes per non-zero; ``onnx.checker`` rejects
    narrower indices). ONNX Runtime densifies these when it loads the model,
    so inference runs (and uses memory) like the dense network: the gain is
    storage and transfer only. Measured (``docs/export.md``): Nature CNN,
    width 2048, 95% sparse: 14.1% of the dense ONNX file.

    Needs the ``onnx`` extra (``onnx``, ``onnxscript``; ``onnxruntime`` to run it).

    Args:
        net: a trained network, masks applied, or its :func:`compact` form.
        example_input: one input batch (dim 0 is the batch; exported dynamic).
        path: also write the file there.
        sparse_min_numel: smaller weights stay dense.

    Returns:
        The serialised ``ModelProto``; input ``"input"``, output ``"output"``.

    Example:
        >>> import onnxruntime
        >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.mul_(torch.rand(64, 64) < 0.05)
        >>> data = export_onnx(net, torch.zeros(1, 64))
        >>> session = onnxruntime.InferenceSession(data)
        >>> x = torch.randn(3, 64)
        >>> out = session.run(None, {"input": x.numpy()})[0]
        >>> bool(abs(out - net(x).detach().numpy()).max() < 1e-5)
        True
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as err:
        raise ImportError(
            "export_onnx needs the onnx extra: pip install 'torchrl_eaudeqn[onnx]'"
        ) from err
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise ValueError("example_input must be a tensor with a batch dimension")
    if isinstance(sparse_min_numel, bool) or not isinstance(sparse_min_numel, int):
        raise ValueError(f"sparse_min_numel must be an int, got {sparse_min_numel!r}")
    dense = dense_equivalent(net).requires_grad_(False)
    example = example_input
    if example.shape[0] == 1:  # size-1 dims are specialised; batch 2 keeps it dynamic
        example = example.expand(2, *example.shape[1:]).contiguous()
    with torch.no_grad():
        program = torch.onnx.export(
            dense,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    model = program.model_proto
    keep = []
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        flat = array.reshape(-1)
        if array.dtype.kind == "f" and array.size >= sparse_min_numel:
            nz = np.flatnonzero(flat)
            if nz.size * (array.itemsize + 8) < array.nbytes:
                values = numpy_helper.from_array(flat[nz], init.name)
                indices = numpy_helper.from_array(nz.astype(np.int64), f"{init.name}.indices")
                model.graph.sparse_initializer.append(
                    helper.make_sparse_tensor(values, indices, list(array.shape))
                )
                continue
        keep.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


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
