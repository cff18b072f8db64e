"""Sparse Linear layers for CPU inference: the weight as CSR or BSR with int32 indices.

An unstructured-pruned ``nn.Linear`` still multiplies by all its zeros. :class:`SparseLinear`
holds the same weight as a compressed sparse matrix and computes the same
``y = x Wᵀ + b`` with torch's sparse kernels, which on a CPU are faster than the dense GEMV /
GEMM once enough of ``W`` is zero (``../shared/SPEED.md``, measured):

* **CSR** (compressed sparse rows), ``W`` as ``crow_indices`` (``out + 1`` row starts),
  ``col_indices`` and ``values`` (one per non-zero). Indices are **int32**: torch's default
  int64 CSR is 2-4x slower and COO slower still. 8 bytes per non-zero, so smaller than
  dense above 50 % sparsity; faster than dense from about 50-60 % sparsity at batch 1 and
  16, from about 80-85 % at batch 128.
* **BSR** (block sparse rows), the same over ``b x b`` blocks (``values`` has shape
  ``(blocks, b, b)``): only worth it when whole blocks are zero (block / group pruning); at
  batch >= 16 8x8 blocks break even at about 50-65 % and give 4-5x at 90 %. A weight whose
  shape is not a multiple of ``b`` is zero-padded to one (the extra output rows are dropped,
  the input gets zero columns).

The call path follows the measurements: with one input row (batch 1) CSR uses
``F.linear(x, W_csr, b)`` (2-4x faster than ``mm`` there); with more rows it uses
``torch.addmm(b, W, xᵀ)ᵀ`` (``mm`` with a sparse first operand, 1.5-5x faster than
``F.linear`` there). BSR always uses the ``mm`` path. Inputs with more than two dimensions
are flattened to ``(rows, in_features)`` and the output reshaped back, as ``nn.Linear``
does. The result of the ``mm`` path is a transposed (non-contiguous) view: a following
SparseLinear then needs no copy.

SparseLinear is for inference: its tensors are buffers, not parameters, and no gradient
flows to them. Convert a trained model with :func:`sparsify` (every Linear layer whose
weight is at least ``min_sparsity`` zero; SPEED.md suggests about 0.6 for batch 1, 0.85 for
large batches) and back with :func:`densify`. Convolutions stay dense: no sparse conv kernel
is faster than the dense one on a CPU.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnprune.errors import ConfigError, relayed

__all__ = [
    "DEFAULT_BLOCK",
    "SPARSE_FORMATS",
    "SparseLinear",
    "dense_size_bytes",
    "densify",
    "sparse_size_bytes",
    "sparsify",
    "weight_sparsity",
]

SPARSE_FORMATS = ("csr", "bsr")
#: BSR block size when none is given: 8x8 is the fastest block measured at batch >= 16.
DEFAULT_BLOCK = 8
_INT32_MAX = 2**31 - 1


def _check_format(format: str) -> str:
    if format not in SPARSE_FORMATS:
        raise ConfigError(f"sparse format must be one of {list(SPARSE_FORMATS)}, got {format!r}")
    return format


def _check_block(block: object) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"BSR block size must be an int >= 1, got {block!r}")
    return block


def weight_sparsity(weight: Tensor) -> float:
    """The fraction of exact zeros in ``weight`` (0.0 for an empty tensor)."""
    numel = weight.numel()
    return 1.0 - int(torch.count_nonzero(weight)) / numel if numel else 0.0


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` (``out_features x in_features``) stored as CSR or BSR.

    Buffers (all in ``state_dict``): ``crow_indices`` (int32), ``col_indices`` (int32),
    ``values`` (the weight's dtype; ``(nnz,)`` for CSR, ``(blocks, b, b)`` for BSR) and
    ``bias`` (``(out_features,)``, or absent). For BSR the stored matrix is the weight
    zero-padded to ``(ceil(out/b)·b, ceil(in/b)·b)``.

    Build one with :meth:`from_linear` (or :meth:`from_weight`); :meth:`to_dense_linear`
    gives the equivalent ``nn.Linear`` back, bit for bit.
    """

    crow_indices: Tensor
    col_indices: Tensor
    values: Tensor
    bias: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        crow_indices: Tensor,
        col_indices: Tensor,
        values: Tensor,
        bias: Tensor | None = None,
        *,
        format: str = "csr",
        block: int | None = None,
    ) -> None:
        """Wrap existing components; they are checked (invariants, int32 indices, shapes).

        Raises:
            ConfigError: an unknown format, a bad block size, or components that do not
                form a valid ``out_features x in_features`` sparse matrix.
        """
        super().__init__()
        self.format = _check_format(format)
        self.block = (
            _check_block(DEFAULT_BLOCK if block is None else block) if format == "bsr" else None
        )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.register_buffer("crow_indices", crow_indices)
        self.register_buffer("col_indices", col_indices)
        self.register_buffer("values", values)
        self.register_buffer("bias", bias)
        self._weight_cache: tuple[tuple[Any, ...], Tensor] | None = None
        self.check()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_weight(
        cls,
        weight: Tensor,
        bias: Tensor | None = None,
        *,
        format: str = "csr",
        block: int | None = None,
    ) -> SparseLinear:
        """Compress a dense ``out x in`` weight (zeros are dropped; nothing else changes)."""
        _check_format(format)
        weight = weight.detach()
        if weight.dim() != 2:
            raise ConfigError(f"a Linear weight must be 2-D, got shape {tuple(weight.shape)}")
        if weight.is_sparse or weight.layout != torch.strided:
            weight = weight.to_dense()
        out_features, in_features = weight.shape
        if format == "csr":
            block = None
        else:
            block = _check_block(DEFAULT_BLOCK if block is None else block)
            rows, cols = _padded(out_features, block), _padded(in_features, block)
            if (rows, cols) != (out_features, in_features):
                weight = F.pad(weight, (0, cols - in_features, 0, rows - out_features))
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            sparse = weight.to_sparse_csr() if block is None else weight.to_sparse_bsr((block,) * 2)
        if sparse.values().numel() > _INT32_MAX:
            raise ConfigError("the weight has too many non-zeros for int32 indices")
        return cls(
            in_features,
            out_features,
            sparse.crow_indices().to(torch.int32),
            sparse.col_indices().to(torch.int32),
            sparse.values().contiguous(),
            None if bias is None else bias.detach().clone(),
            format=format,
            block=block,
        )

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, format: str = "csr", block: int | None = None
    ) -> SparseLinear:
        """The SparseLinear computing what ``linear`` computes (its current, gated weight)."""
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"from_linear takes an nn.Linear, got {type(linear).__name__}")
        return cls.from_weight(linear.weight, linear.bias, format=format, block=block)

    def to_dense_weight(self) -> Tensor:
        """The dense ``out_features x in_features`` weight."""
        dense = self.weight.to_dense()
        return dense[: self.out_features, : self.in_features].contiguous()

    def to_dense_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with exactly this weight and bias."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.to_dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    # -- the sparse weight -----------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """The stored matrix's shape: the weight's, padded to whole blocks for BSR."""
        if self.block is None:
            return (self.out_features, self.in_features)
        return (_padded(self.out_features, self.block), _padded(self.in_features, self.block))

    @property
    def weight(self) -> Tensor:
        """The weight as a torch sparse CSR / BSR tensor sharing the buffers' memory.

        Built once and cached; rebuilt (and its invariants checked again) whenever a buffer
        is replaced or changed in place (``.to()``, ``load_state_dict``).
        """
        parts = (self.crow_indices, self.col_indices, self.values)
        key = tuple((t.data_ptr(), _version(t), t.dtype, t.device, t.shape) for t in parts)
        if self._weight_cache is None or self._weight_cache[0] != key:
            self._weight_cache = (key, self._build(check=True))
        return self._weight_cache[1]

    def _build(self, *, check: bool) -> Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta" and similar
            warnings.simplefilter("ignore", UserWarning)
            build = torch.sparse_csr_tensor if self.format == "csr" else torch.sparse_bsr_tensor
            return build(
                self.crow_indices,
                self.col_indices,
                self.values,
                self.shape,
                check_invariants=check,
            )

    def check(self) -> None:
        """Raise :class:`ConfigError` unless the buffers form a valid sparse weight."""
        what = f"SparseLinear({self.in_features}, {self.out_features}, format={self.format!r})"
        for name in ("crow_indices", "col_indices"):
            tensor = getattr(self, name)
            if not isinstance(tensor, Tensor) or tensor.dtype != torch.int32 or tensor.dim() != 1:
                raise ConfigError(f"{what}: {name} must be a 1-D int32 tensor")
        values = self.values
        if not isinstance(values, Tensor) or not values.is_floating_point():
            raise ConfigError(f"{what}: values must be a floating-point tensor")
        expected_dim = 1 if self.format == "csr" else 3
        if values.dim() != expected_dim or (
            self.block is not None and tuple(values.shape[1:]) != (self.block, self.block)
        ):
            raise ConfigError(f"{what}: values has shape {tuple(values.shape)}")
        if self.bias is not None and (
            not isinstance(self.bias, Tensor) or tuple(self.bias.shape) != (self.out_features,)
        ):
            raise ConfigError(f"{what}: bias must have shape ({self.out_features},)")
        try:
            self._weight_cache = None
            _ = self.weight
        except RuntimeError as err:
            raise ConfigError(f"{what}: not a valid sparse matrix ({relayed(err)})") from err

    # -- forward ---------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """``x Wᵀ + b`` for ``x`` of shape ``(..., in_features)``."""
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        weight = self.weight
        if self.format == "csr" and rows.shape[0] == 1:
            out = F.linear(rows, weight, self.bias)
        elif self.format == "csr":
            if self.bias is None:
                out = torch.mm(weight, rows.T.contiguous()).T
            else:
                out = torch.addmm(self.bias.unsqueeze(1), weight, rows.T.contiguous()).T
        else:
            rows_t = rows.T
            padding = self.shape[1] - self.in_features
            if padding:
                rows_t = F.pad(rows_t, (0, 0, 0, padding))
            out_t = torch.mm(weight, rows_t)[: self.out_features]
            if self.bias is not None:
                out_t = out_t + self.bias.unsqueeze(1)
            out = out_t.T
        return out.reshape(*lead, self.out_features)

    # -- sizes and bookkeeping -------------------------------------------------------------

    @property
    def nnz(self) -> int:
        """Stored values (for BSR: whole blocks, zeros inside a kept block included)."""
        return self.values.numel()

    @property
    def sparsity(self) -> float:
        """Fraction of the (unpadded) weight that is exactly zero."""
        return weight_sparsity(self.to_dense_weight())

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors: indices, values and bias."""
        return sum(t.numel() * t.element_size() for t in self.buffers())

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same layer takes as a dense ``nn.Linear``."""
        element = self.values.element_size()
        weight = self.out_features * self.in_features * element
        return weight + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def extra_repr(self) -> str:
        block = f", block={self.block}" if self.block is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, format={self.format!r}{block}, nnz={self.nnz}"
        )

    def __getstate__(self) -> dict[str, Any]:
        # torch sparse tensors cannot be deep-copied or pickled: drop the cache
        state = self.__dict__.copy()
        state["_weight_cache"] = None
        return state

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the number of non-zeros is data, not architecture: adopt the stored sizes
        for name in ("col_indices", "values"):
            stored = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(stored, Tensor) and stored.shape != current.shape:
                setattr(self, name, current.new_empty(stored.shape))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        try:
            self.check()
        except ConfigError as err:
            error_msgs.append(str(err))


def _version(tensor: Tensor) -> int:
    """The in-place version counter (inference tensors have none: -1)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def _padded(size: int, block: int) -> int:
    return math.ceil(size / block) * block


# ------------------------------------------------------------------------------------------
# Whole models
# ------------------------------------------------------------------------------------------


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``name`` in ``model``; returns the (possibly new) root."""
    if name == "":
        return module
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
    return model


def sparsify(
    model: nn.Module,
    format: str = "csr",
    min_sparsity: float = 0.0,
    *,
    block: int | None = None,
) -> nn.Module:
    """A copy of ``model`` with every sparse enough ``nn.Linear`` replaced by a SparseLinear.

    Args:
        model: any module; it is deep-copied, never changed.
        format: ``"csr"`` (unstructured sparsity) or ``"bsr"`` (block sparsity).
        min_sparsity: convert a layer only if at least this fraction of its weight is zero;
            the others stay dense. ``0.0`` converts every Linear layer.
        block: BSR block size (default :data:`DEFAULT_BLOCK`); ignored for CSR.

    Returns:
        The converted copy (an inference model: its sparse weights have no gradient).
    """
    _check_format(format)
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ConfigError(f"min_sparsity must lie in [0, 1], got {min_sparsity!r}")
    model = copy.deepcopy(model)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and weight_sparsity(module.weight) >= min_sparsity
    ]
    for name in targets:
        linear = model.get_submodule(name) if name else model
        assert isinstance(linear, nn.Linear)
        model = _replace(model, name, SparseLinear.from_linear(linear, format, block))
    return model


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every SparseLinear replaced by its dense ``nn.Linear``."""
    model = copy.deepcopy(model)
    targets = [name for name, m in model.named_modules() if isinstance(m, SparseLinear)]
    for name in targets:
        sparse = model.get_submodule(name) if name else model
        assert isinstance(sparse, SparseLinear)
        model = _replace(model, name, sparse.to_dense_linear())
    return model


def sparse_size_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in ``model.state_dict()``, sparse layers as stored."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def dense_size_bytes(model: nn.Module) -> int:
    """Bytes of ``model.state_dict()`` with every SparseLinear counted as a dense Linear."""
    sparse_layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    return (
        sparse_size_bytes(model)
        - sum(m.nbytes for m in sparse_layers)
        + sum(m.dense_nbytes for m in sparse_layers)
    )
