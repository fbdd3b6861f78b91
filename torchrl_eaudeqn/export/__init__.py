"""Inference forms of sparse (masked) networks: compact CSR layers, measurements, ONNX.

A masked network keeps its pruned weights as zeros in dense tensors; this
package turns it into something smaller (and, where it pays, faster) to
serve, and measures the result:

* :mod:`~torchrl_eaudeqn.export.layers`: :class:`CompactLinear` and
  :class:`CompactConv2d`, layers that store only the non-zeros (CSR);
* :mod:`~torchrl_eaudeqn.export.compact`: :func:`compact` (which layers go
  sparse, ``rule``), :func:`remove_dead_channels`, :func:`dense_equivalent`,
  :func:`compact_summary`;
* :mod:`~torchrl_eaudeqn.export.measure`: :func:`state_size_bytes`,
  :func:`exported_size_bytes`, :func:`measure_latency_ms`, :func:`count_flops`;
* :mod:`~torchrl_eaudeqn.export.onnx`: :func:`export_onnx`.

Measurements and advice: ``docs/export.md``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchrl_eaudeqn.export import compact, compact_summary
    >>> net = nn.Sequential(nn.Linear(200, 100), nn.ReLU(), nn.Linear(100, 2))
    >>> with torch.no_grad():
    ...     _ = net[0].weight[:, 10:].zero_()
    >>> small = compact(net, rule="size")
    >>> [layer["format"] for layer in compact_summary(small)["layers"]]
    ['csr', 'dense']
    >>> x = torch.randn(4, 200)
    >>> torch.allclose(small(x), net(x), atol=1e-6)
    True
"""

from .compact import (
    LINEAR_MAX_DENSITY,
    MIN_SPARSE_NUMEL,
    compact,
    compact_summary,
    dense_equivalent,
    remove_dead_channels,
)
from .compact import Rule as Rule
from .layers import CompactConv2d, CompactLinear, supports_compact_conv
from .layers import IndexDType as IndexDType
from .measure import count_flops, exported_size_bytes, measure_latency_ms, state_size_bytes
from .onnx import export_onnx

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
