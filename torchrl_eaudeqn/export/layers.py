"""The compact sparse layers: ``nn.Linear`` / ``nn.Conv2d`` with the weight stored in CSR form.

Only the non-zeros are kept (row offsets ``int32``, column indices ``int16``
when they fit, values in the weight's dtype); :func:`torchrl_eaudeqn.export.compact`
decides which layers of a network become these.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CompactConv2d", "CompactLinear", "supports_compact_conv"]

IndexDType = Literal["auto", "int16", "int32"]
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
        # Stored narrow for size; embedding_bag's int64 path is faster than the cast costs.
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
