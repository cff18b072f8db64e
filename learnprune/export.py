"""Export a (pruned, possibly compacted) model to a directory of files, and load it back.

No pickle anywhere: tensors go to `safetensors <https://huggingface.co/docs/safetensors>`_
files, everything else to JSON, so loading an export cannot run code. An export directory
holds:

==========================  ===============================================================
``model.json``              always; written last, so a directory without it is no export.
                            Format name and version, learnprune and torch versions, the
                            formats present, the architecture (below), the sparse layers,
                            the ONNX settings, the masks' names and non-zero counts, and
                            each file's size and SHA-256 (a truncated or swapped file is
                            caught before it is parsed).
``model.safetensors``       format ``"safetensors"``: every tensor of ``model.state_dict()``,
                            dense and contiguous, under its state_dict name.
``sparse_csr.safetensors``  format ``"csr"``: the state_dict of :func:`sparsify` ``(model,
                            "csr")``: each converted Linear layer as ``<layer>.crow_indices``,
                            ``<layer>.col_indices`` (int32) and ``<layer>.values`` (+ its
                            ``<layer>.bias``); every other tensor dense as above.
``sparse_bsr.safetensors``  format ``"bsr"``: the same with ``b x b`` blocks (``values`` of
                            shape ``(blocks, b, b)``, weight zero-padded to whole blocks).
``model.onnx``              format ``"onnx"``: the inference graph (eval mode) from
                            ``torch.onnx.export`` (the torch.export-based exporter, opset
                            :data:`ONNX_OPSET`, one self-contained file, batch dimension
                            dynamic where the model allows it), traced on the caller's
                            ``example_inputs`` (token ids stay ids) or a random batch of
                            ``input_shape``, and checked with ONNX Runtime against PyTorch
                            on the same inputs before it is kept.
``masks.safetensors``       when ``masks`` are given: one bool keep-mask per parameter name.
==========================  ===============================================================

**Architecture.** The JSON names the registered model (:func:`learnprune.models.build_model`
name and options) and records every Conv, Linear and BatchNorm layer's constructor
arguments (``in_features`` / ``out_channels`` / ``kernel_size`` / ``num_features`` ...).
:func:`load` builds the reference model and gives each layer whose recorded arguments differ
from the reference's the recorded ones, then loads the tensors. A layer that differs only in
its sizes (``in/out_features``, ``in/out_channels``, ``groups``, ``num_features``: what
compaction changes) is resized in place: new size attributes and right-shaped parameters
and buffers, its class and ``forward`` kept, so subclasses of ``nn.Conv2d`` / ``nn.Linear``
with constructors of their own (transformers' ``EfficientNetDepthwiseConv2d``, timm's
``Conv2dSame``) load too; a plain layer that differs in anything else is replaced by a fresh
one built from the record. That is what rebuilds a *compacted* model (channels physically
removed, every affected layer narrower) without pickling its code; a plain pruned model has
no differing layer. What compaction changes outside those layers is recorded too
(``attributes``: a ``Conv1D``'s ``nf``/``nx``, an attention module's head counts,
``all_head_size`` and ``split_size``; ``tensor_shapes``: every other parameter and buffer,
e.g. a sliced layer scale) and given to the model in place; tied weights stay one tensor.
A model that is not in the registry (a Hugging Face model, your own) is
exported the same way (tensors and layer records); give :func:`load` an instance of it, as
built before compaction, as ``model=``: it is resized in place.

**Atomicity.** Every file is written to a temporary name in the same directory and renamed
over its target (``os.replace``, :mod:`learnprune.files`). Once everything that can fail
has been done in memory or in temporary files, a *manifest* replaces ``model.json`` first
(``"complete": false`` and the names of the files about to be written or removed), then
the files are written, and the full ``model.json`` (``"complete": true``) comes last. An
interrupted export therefore leaves a directory that :func:`load` rejects as interrupted,
never a mix of two exports, and the next :func:`export` into it replaces the listed files
as its own, without ``overwrite``.

**The user's files.** :func:`export` writes into a new or empty directory, or one holding
an interrupted export. A directory that holds another export, or any file learnprune did
not write (a ``model.onnx`` of your own, ``notes.txt``), is refused unless
``overwrite=True``; even then only the export's own files are replaced or removed: the
names it writes, the files the replaced (or interrupted) export's ``model.json`` lists, and
temporaries an interrupted write left. Nothing else is touched.

**Errors.** Anything wrong with the files (a missing directory or file, a truncated or
malformed safetensors or JSON file, a newer format version, tensors that do not fit the
described model) raises :class:`~learnprune.errors.CheckpointError` with a one-line message
that names the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from learnprune.checkpoint import json_text
from learnprune.compact import output_tensors
from learnprune.errors import (
    CheckpointError,
    ConfigError,
    LearnpruneError,
    UnsupportedModelError,
    relayed,
)
from learnprune.files import (
    atomic_write_bytes,
    atomic_write_text,
    is_temporary_leftover,
    replace_with,
    temporary_file,
)
from learnprune.groups import tied_parameters
from learnprune.models import build_model
from learnprune.sparse_linear import DEFAULT_BLOCK, SparseLinear, densify, sparsify
from learnprune.transformer_groups import HEAD_COUNT_ATTRS

__all__ = [
    "EXPORT_FORMAT",
    "FILES",
    "FORMATS",
    "FORMAT_VERSION",
    "LOAD_FORMATS",
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "check_export_directory",
    "describe_layers",
    "export",
    "load",
    "load_masks",
    "read_metadata",
]

EXPORT_FORMAT = "learnprune-export"
#: Version of the directory layout and ``model.json`` schema this module writes and reads.
FORMAT_VERSION = 1
#: What :func:`export` can write.
FORMATS = ("safetensors", "csr", "bsr", "onnx")
#: What :func:`load` can read back into an ``nn.Module``.
LOAD_FORMATS = ("safetensors", "csr", "bsr")
METADATA_FILE = "model.json"
MASKS_FILE = "masks.safetensors"
#: The file each format is written to.
FILES = {
    "safetensors": "model.safetensors",
    "csr": "sparse_csr.safetensors",
    "bsr": "sparse_bsr.safetensors",
    "onnx": "model.onnx",
}
_ALL_FILES = (*FILES.values(), MASKS_FILE)
ONNX_OPSET = 18
#: ONNX Runtime must agree with PyTorch within ``atol = rtol = ONNX_TOLERANCE``.
ONNX_TOLERANCE = 1e-4
_ONNX_INPUT, _ONNX_OUTPUT = "input", "output"

# Layers whose shapes the architecture records, and their constructor arguments.
_CONV_FIELDS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)
_BN_FIELDS = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_LAYER_KINDS: dict[str, tuple[type[nn.Module], tuple[str, ...], bool]] = {
    # name: (class, constructor fields, has a ``bias`` flag)
    "Linear": (nn.Linear, ("in_features", "out_features"), True),
    "Conv1d": (nn.Conv1d, _CONV_FIELDS, True),
    "Conv2d": (nn.Conv2d, _CONV_FIELDS, True),
    "Conv3d": (nn.Conv3d, _CONV_FIELDS, True),
    "BatchNorm1d": (nn.BatchNorm1d, _BN_FIELDS, False),
    "BatchNorm2d": (nn.BatchNorm2d, _BN_FIELDS, False),
    "BatchNorm3d": (nn.BatchNorm3d, _BN_FIELDS, False),
}


def _require(module: str) -> ModuleType:
    """Import an optional dependency of the ``export`` extra, with an install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise LearnpruneError(
            f"exporting needs the Python package {module!r}, which is not installed; "
            "install it with: pip install 'learnprune[export]'"
        ) from err


def _jsonable(value: Any) -> Any:
    """``value`` as JSON will give it back (tuples become lists); ``ValueError`` for a
    non-finite number (NaN, ±inf are not JSON) and ``TypeError`` for a non-JSON value: what
    rebuilds the model must be written exactly, not as ``null``."""
    return json.loads(json.dumps(value, allow_nan=False))


# ------------------------------------------------------------------------------------------
# Architecture: layer records and rebuilding
# ------------------------------------------------------------------------------------------


def _kind(module: nn.Module) -> str | None:
    for name, (cls, _fields, _bias) in _LAYER_KINDS.items():
        if isinstance(module, cls):
            return name
    return None


def _describe(module: nn.Module, kind: str) -> dict[str, Any]:
    _cls, fields, has_bias = _LAYER_KINDS[kind]
    record: dict[str, Any] = {"type": kind}
    for field in fields:
        record[field] = getattr(module, field)
    if has_bias:
        record["bias"] = getattr(module, "bias", None) is not None
    return _jsonable(record)


def describe_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: constructor arguments}`` of every Conv, Linear and BatchNorm layer.

    SparseLinear layers are described as the ``Linear`` they stand for. This is what lets
    :func:`load` rebuild a compacted model from its reference architecture.
    """
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            layers[name] = {
                "type": "Linear",
                "in_features": module.in_features,
                "out_features": module.out_features,
                "bias": module.bias is not None,
            }
            continue
        kind = _kind(module)
        if kind is not None:
            try:
                layers[name] = _describe(module, kind)
            except (TypeError, ValueError) as err:
                raise UnsupportedModelError(
                    f"layer {name!r} ({type(module).__name__}) cannot be described in JSON: "
                    f"{relayed(err)}"
                ) from err
    return layers


def _build_layer(record: Mapping[str, Any]) -> nn.Module:
    """A fresh layer from its record (``ValueError``/``TypeError``/``KeyError`` if bad)."""
    cls, fields, has_bias = _LAYER_KINDS[record["type"]]
    kwargs = {field: record[field] for field in fields}
    for field in ("kernel_size", "stride", "padding", "dilation"):
        if isinstance(kwargs.get(field), list):
            kwargs[field] = tuple(kwargs[field])
    if has_bias:
        kwargs["bias"] = bool(record["bias"])
    return cls(**kwargs)


# The constructor arguments compaction changes; a layer whose record differs from it only in
# these is resized in place (whatever its class), any other difference needs a fresh layer.
_SIZE_FIELDS: dict[str, tuple[str, ...]] = {
    "Linear": ("in_features", "out_features"),
    **{f"Conv{d}d": ("in_channels", "out_channels", "groups") for d in (1, 2, 3)},
    **{f"BatchNorm{d}d": ("num_features",) for d in (1, 2, 3)},
}


def _resize_in_place(layer: nn.Module, kind: str, record: Mapping[str, Any]) -> None:
    """Give ``layer`` the sizes of ``record``: its size attributes and right-shaped (zero)
    parameters and buffers, ready for ``load_state_dict``; its class, forward and every
    other attribute stay. Works for subclasses of the layer kinds (transformers'
    ``EfficientNetDepthwiseConv2d``, timm's ``Conv2dSame``) whose constructors take other
    arguments.

    Shapes: Linear weight ``(out_features, in_features)``; Conv weight
    ``(out_channels, in_channels / groups, *kernel_size)``; bias ``(out,)``; BatchNorm
    weight, bias, ``running_mean`` and ``running_var`` ``(num_features,)``.
    Raises ``ValueError`` for sizes that do not fit together.
    """
    sizes = {field: record[field] for field in _SIZE_FIELDS[kind]}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes.values()):
        raise ValueError(f"sizes must be positive ints, got {sizes}")
    if kind == "Linear":
        shapes = {"weight": (sizes["out_features"], sizes["in_features"])}
        shapes["bias"] = (sizes["out_features"],)
    elif kind.startswith("Conv"):
        groups = sizes["groups"]
        if sizes["in_channels"] % groups or sizes["out_channels"] % groups:
            raise ValueError(f"channels {sizes} are not divisible by groups")
        kernel = tuple(layer.weight.shape[2:])
        shapes = {"weight": (sizes["out_channels"], sizes["in_channels"] // groups, *kernel)}
        shapes["bias"] = (sizes["out_channels"],)
    else:
        shapes = {name: (sizes["num_features"],) for name in ("weight", "bias")}
        shapes.update(running_mean=(sizes["num_features"],), running_var=(sizes["num_features"],))
    for name, shape in shapes.items():
        current = getattr(layer, name, None)
        if not isinstance(current, Tensor):  # no bias, affine=False, no running stats
            continue
        fresh = torch.zeros(shape, dtype=current.dtype, device=current.device)
        if name == "running_var":
            fresh += 1
        if isinstance(current, nn.Parameter):
            setattr(layer, name, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            layer.register_buffer(name, fresh)
    for field, value in sizes.items():
        setattr(layer, field, value)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _reference_model(architecture: Mapping[str, Any]) -> nn.Module:
    options = architecture.get("model_options") or {}
    return build_model(architecture["model_name"], **options)


def _recorded_module(model: nn.Module, name: str, missing: str) -> nn.Module:
    """The submodule ``name`` of ``model`` (``""``: the model) that a file records;
    :class:`CheckpointError` with ``missing`` when the model has none of that name."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise CheckpointError(missing) from None


def _apply_layers(model: nn.Module, layers: Mapping[str, Mapping[str, Any]], source: str) -> int:
    """Replace every layer of ``model`` whose constructor arguments differ from ``layers``.

    Returns how many were replaced. Raises :class:`CheckpointError` (naming ``source``) when
    a recorded layer is missing, of another kind, or cannot be built.
    """
    replaced = 0
    for name, record in layers.items():
        current = _recorded_module(
            model,
            name,
            f"{source} records a layer {name!r} that the model built from its name "
            "and options does not have",
        )
        kind = _kind(current)
        if kind != record.get("type"):
            raise CheckpointError(
                f"{source} records layer {name!r} as {record.get('type')}, "
                f"the rebuilt model has {type(current).__name__}"
            )
        described = _describe(current, kind)
        if described == dict(record):
            continue
        differing = {field for field in described if described[field] != record.get(field)}
        try:
            if differing <= set(_SIZE_FIELDS[kind]):
                _resize_in_place(current, kind, record)
            elif type(current) is _LAYER_KINDS[kind][0] and name:
                _set_module(model, name, _build_layer(record))
            else:
                raise CheckpointError(
                    f"{source} records layer {name!r} with other {', '.join(sorted(differing))} "
                    f"than the model's {type(current).__name__}, which cannot be rebuilt "
                    "(only its sizes can be changed in place)"
                )
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{source} has an invalid record for layer {name!r} ({relayed(err)})"
            ) from err
        replaced += 1
    return replaced


# The size attributes compaction changes outside the Conv/Linear/BatchNorm layers:
# transformers' ``Conv1D`` (``nf`` outputs, ``nx`` inputs) and an attention module's head
# counts, ``all_head_size`` and GPT-2's ``split_size`` (see learnprune.transformer_compact).
SIZE_ATTRIBUTES = (
    "nf",
    "nx",
    "split_size",
    *HEAD_COUNT_ATTRS,
    "num_key_value_heads",
    "all_head_size",
)


def describe_sizes(model: nn.Module) -> tuple[dict[str, dict[str, int]], dict[str, list[int]]]:
    """What a compacted model's recorded layers do not say about its sizes:
    ``({module name: {size attribute: int}}, {tensor name: shape})``, the second for every
    parameter and buffer held by a module that :func:`describe_layers` does not record
    (a ``Conv1D``'s weight, a layer scale, a LayerNorm), so that :func:`load` can give a
    model built before compaction the exported sizes."""
    attributes: dict[str, dict[str, int]] = {}
    shapes: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        sizes = {
            attr: value
            for attr in SIZE_ATTRIBUTES
            if isinstance(value := getattr(module, attr, None), int) and not isinstance(value, bool)
        }
        if sizes:
            attributes[name] = sizes
        if _kind(module) is not None or isinstance(module, SparseLinear):
            continue
        prefix = f"{name}." if name else ""
        owned = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for tensor_name, tensor in owned:
            if tensor is not None:
                shapes[prefix + tensor_name] = list(tensor.shape)
    return attributes, shapes


def _apply_sizes(
    model: nn.Module,
    attributes: Mapping[str, Mapping[str, int]],
    shapes: Mapping[str, Sequence[int]],
    source: str,
) -> None:
    """Give ``model`` the recorded size attributes and tensor shapes of
    :func:`describe_sizes` in place (zero tensors of the recorded shape, as
    :func:`_resize_in_place` does for layers, filled by ``load_state_dict``). Only an int
    attribute the module already has is changed, and only a tensor with as many axes as
    recorded is reshaped; anything else is left for the tensor check to name."""
    for name, sizes in attributes.items():
        module = _recorded_module(
            model, name, f"{source} records sizes of a module {name!r} the model does not have"
        )
        for attr, value in sizes.items():
            current = getattr(module, attr, None)
            if isinstance(current, int) and not isinstance(current, bool) and current != value:
                setattr(module, attr, value)
    for name, shape in shapes.items():
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = model.get_submodule(owner_name) if owner_name else model
        except AttributeError:
            continue  # the tensor check names the missing tensor
        current = getattr(owner, attr, None)
        if not isinstance(current, Tensor) or list(current.shape) == list(shape):
            continue
        if current.dim() != len(shape):
            continue
        fresh = torch.zeros(tuple(shape), dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(owner, attr, nn.Parameter(fresh, requires_grad=current.requires_grad))
        elif attr in owner._buffers:
            owner._buffers[attr] = fresh


def _tie_again(
    model: nn.Module, ties: Mapping[str, tuple[str, ...]], tensors: Mapping[str, Tensor]
) -> None:
    """Make the tensors that were one before ``load_state_dict(assign=True)`` one again.

    Assigning gives every state-dict name its own tensor, which unties tied weights (GPT-2's
    ``lm_head.weight`` *is* ``transformer.wte.weight``): they would then be trained apart
    and counted twice. Each name of ``ties`` (:func:`~learnprune.groups.tied_parameters`,
    taken before loading) gets its first name's tensor back, when the file holds equal
    values under both names (it does for a tied model's export)."""
    order = {key: position for position, key in enumerate(tensors)}
    for name, others in ties.items():
        names = (name, *others)
        if not all(n in order for n in names):
            continue
        first = min(names, key=order.__getitem__)
        if name == first or not torch.equal(tensors[name], tensors[first]):
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, attr, model.get_parameter(first))


def _tensor_mismatch(
    expected: Mapping[str, Tensor], found: Mapping[str, Tensor], limit: int = 3
) -> str | None:
    """One line saying how ``found`` differs from ``expected`` (names, shapes), or None."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            more = f" (+{len(missing) - limit} more)" if len(missing) > limit else ""
            parts.append(f"missing {', '.join(missing[:limit])}{more}")
        if unexpected:
            more = f" (+{len(unexpected) - limit} more)" if len(unexpected) > limit else ""
            parts.append(f"unexpected {', '.join(unexpected[:limit])}{more}")
        return "; ".join(parts)
    for key, tensor in expected.items():
        other = found[key]
        if tuple(other.shape) != tuple(tensor.shape):
            return (
                f"tensor {key!r} has shape {list(other.shape)}, "
                f"the model expects {list(tensor.shape)}"
            )
        if other.is_floating_point() != tensor.is_floating_point():
            return f"tensor {key!r} has dtype {other.dtype}, the model expects {tensor.dtype}"
    return None


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def _state_tensors(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` as independent, contiguous CPU tensors."""
    tensors = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            raise UnsupportedModelError(
                f"the model's state_dict holds a {type(value).__name__} at {key!r}; "
                "only tensors can be exported"
            )
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    return tensors


def _safetensors_bytes(tensors: Mapping[str, Tensor], content: str) -> bytes:
    st = _require("safetensors.torch")
    metadata = {"format": EXPORT_FORMAT, "content": content}
    return st.save(dict(tensors), metadata=metadata)


def _file_record(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# Loggers of torch.export that print at ERROR level while an export fails (the fake-tensor
# traceback of the op that failed, "always_classified is unsupported"): the failure reaches
# the caller as one UnsupportedModelError line instead.
_EXPORT_FAILURE_LOGGERS = ("torch._subclasses.fake_tensor", "torch.export", "torch._export")


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines, warnings and 'torchvision missing' logs, and
    the tracebacks torch.export logs for a failed export (relayed as one line instead)."""
    levels = {"torch.onnx": logging.ERROR}
    levels.update((name, logging.CRITICAL + 1) for name in _EXPORT_FAILURE_LOGGERS)
    loggers = {name: logging.getLogger(name) for name in levels}
    before = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(levels[name])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(before[name])


def _map_tensors(
    value: Any, on_tensor: Callable[[Tensor], Any], on_other: Callable[[Any], Any]
) -> Any:
    """``value`` with every tensor inside its tuples, lists and mappings passed through
    ``on_tensor`` and every other leaf through ``on_other``."""
    if isinstance(value, Tensor):
        return on_tensor(value)
    if isinstance(value, Mapping):
        return {key: _map_tensors(item, on_tensor, on_other) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(item, on_tensor, on_other) for item in value)
    return on_other(value)


@dataclasses.dataclass(frozen=True)
class _OnnxCall:
    """How the exporter and the check call the model: ``model(*args, **kwargs)``.

    :meth:`of` takes ``example_inputs`` the way
    :func:`~learnprune.transformer_compact.call_model` does: a mapping is
    ``model(**inputs)`` (``{"input_ids": ..., "attention_mask": ...}``), a tuple or list
    ``model(*inputs)``, anything else ``model(inputs)``. The arguments are bound to
    ``forward``'s signature (``bound``: parameter name -> value, in its order, which is the
    order and the names of the graph's inputs), and a model whose ``forward`` takes
    ``use_cache`` (a Hugging Face decoder) gets ``use_cache=False`` unless the inputs set
    it: the key/value cache is state for the next call, not an output of this one, and
    torch.export cannot return it.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    bound: dict[str, Any] | None  # None: forward has no signature to bind to
    single_tensor: bool  # model(x): the graph's one input is named _ONNX_INPUT

    @classmethod
    def of(cls, model: nn.Module, inputs: Any) -> _OnnxCall:
        if isinstance(inputs, Mapping):
            args, kwargs = (), dict(inputs)
        elif isinstance(inputs, (tuple, list)):
            args, kwargs = tuple(inputs), {}
        else:
            args, kwargs = (inputs,), {}
        try:
            signature = inspect.signature(model.forward)
        except (TypeError, ValueError):
            return cls(args, kwargs, None, isinstance(inputs, Tensor))
        if "use_cache" in signature.parameters:
            kwargs.setdefault("use_cache", False)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise ConfigError(
                f"example_inputs do not fit {type(model).__name__}.forward ({err})"
            ) from err
        return cls(bound.args, bound.kwargs, dict(bound.arguments), isinstance(inputs, Tensor))

    def tensors(self) -> list[Tensor]:
        """The tensors among the arguments, in the order of the ONNX graph's inputs."""
        return output_tensors((self.args, self.kwargs))

    def dynamic_shapes(self) -> dict[str, Any] | None:
        """Axis 0 of every argument tensor (of at least one axis) is the batch dimension;
        ``None`` when the arguments could not be bound to names."""
        if self.bound is None:
            return None
        batch = torch.export.Dim("batch")
        return {
            name: _map_tensors(value, lambda t: {0: batch} if t.dim() else None, lambda _: None)
            for name, value in self.bound.items()
        }

    def mapped(self, on_tensor: Callable[[Tensor], Tensor]) -> _OnnxCall:
        """The same call with ``on_tensor`` applied to every argument tensor."""

        def apply(value: Any) -> Any:
            return _map_tensors(value, on_tensor, lambda other: other)

        return dataclasses.replace(
            self,
            args=apply(self.args),
            kwargs=apply(self.kwargs),
            bound=None if self.bound is None else apply(self.bound),
        )

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


def _export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...] | None,
    example_inputs: Any,
    path: Path,
) -> tuple[dict[str, Any], bytes]:
    """Write ``model`` (in eval mode) to ``path`` as ONNX and check it with ONNX Runtime.

    The model is exported and checked on ``example_inputs`` (:class:`_OnnxCall`; integer
    token ids stay integer token ids), or, without them, on random batches of
    ``input_shape``. The batch dimension (axis 0 of every input) is dynamic unless the
    model fixes it (then the export keeps the example's batch size); a dynamic export is
    checked on the example and on the example twice over (batch doubled). Returns the
    record for ``model.json`` and the file's bytes.
    """
    for module in ("onnx", "onnxscript"):
        _require(module)
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    if example_inputs is None:
        assert input_shape is not None
        example_inputs = torch.randn(2, *input_shape, generator=generator)
        random_batch = True
    else:
        random_batch = False
    call = _OnnxCall.of(model, example_inputs).mapped(lambda t: t.detach().to(device))
    was_training = model.training
    model.eval()
    try:
        dynamic = call.dynamic_shapes() is not None
        if dynamic:
            try:
                _onnx_export(model, call, path, dynamic=True)
            except Exception:  # a model that fixes its batch size: export it as it is
                dynamic = False
        if not dynamic:
            try:
                _onnx_export(model, call, path, dynamic=False)
            except Exception as err:
                raise UnsupportedModelError(
                    f"ONNX export of {type(model).__name__} failed: {relayed(err)}"
                ) from err
        if random_batch:
            assert input_shape is not None
            batch = torch.randn(3 if dynamic else 2, *input_shape, generator=generator)
            checks = [_OnnxCall.of(model, batch.to(device))]
        else:
            checks = [call]
            if dynamic:
                checks.append(call.mapped(lambda t: torch.cat([t, t]) if t.dim() else t))
        session = _onnx_session(path)
        max_diff = max(_verify_onnx(model, session, check, random_batch) for check in checks)
    finally:
        model.train(was_training)
    inputs = []
    for argument, tensor in zip(session.get_inputs(), call.tensors(), strict=True):
        shape: list[int | str] = list(tensor.shape)
        if dynamic and shape:
            shape[0] = "batch"
        inputs.append(
            {"name": argument.name, "shape": shape, "dtype": str(tensor.dtype).split(".")[-1]}
        )
    record = {
        "opset": ONNX_OPSET,
        "input_name": inputs[0]["name"] if inputs else None,
        "input_shape": inputs[0]["shape"] if inputs else None,
        "inputs": inputs,
        "dynamic_batch": dynamic,
        "verified_max_abs_diff": max_diff,
        "verified_on": "random batches" if random_batch else "example_inputs",
        "tolerance": ONNX_TOLERANCE,
    }
    return record, path.read_bytes()


def _onnx_session(path: Path) -> Any:
    ort = _require("onnxruntime")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise UnsupportedModelError(
            f"ONNX Runtime cannot load the exported model ({relayed(err)})"
        ) from err


def _verify_onnx(model: nn.Module, session: Any, call: _OnnxCall, random_batch: bool) -> float:
    """Run ``call``'s inputs through ONNX Runtime and PyTorch; the largest difference, or
    raise :class:`UnsupportedModelError` unless they agree within ``ONNX_TOLERANCE``."""
    with torch.no_grad():
        expected = [t.detach().cpu() for t in output_tensors(call(model), strict=True)]
    names = [arg.name for arg in session.get_inputs()]
    tensors = call.tensors()
    if len(names) != len(tensors):
        raise UnsupportedModelError(
            f"the ONNX model takes {len(names)} inputs ({', '.join(names)}), "
            f"the example has {len(tensors)} tensors"
        )
    feed = {
        name: tensor.detach().cpu().numpy() for name, tensor in zip(names, tensors, strict=True)
    }
    try:
        got = [torch.as_tensor(out) for out in session.run(None, feed)]
    except Exception as err:
        raise UnsupportedModelError(
            f"ONNX Runtime cannot run the exported model ({relayed(err)})"
        ) from err
    if len(got) != len(expected):
        raise UnsupportedModelError(
            f"the ONNX model gives {len(got)} outputs, PyTorch {len(expected)}"
        )
    on = "a random batch" if random_batch else "example_inputs"
    max_diff = 0.0
    for ours, theirs in zip(expected, got, strict=True):
        if theirs.shape != ours.shape:
            raise UnsupportedModelError(
                f"the ONNX model's output has shape {list(theirs.shape)}, "
                f"PyTorch's {list(ours.shape)}"
            )
        diff = max_difference(ours, theirs)
        if not torch.allclose(theirs, ours, rtol=ONNX_TOLERANCE, atol=ONNX_TOLERANCE):
            raise UnsupportedModelError(
                f"the ONNX export does not reproduce the model: ONNX Runtime and PyTorch "
                f"differ by {diff:.3g} (tolerance {ONNX_TOLERANCE}) on {on}"
            )
        max_diff = max(max_diff, diff)
    return max_diff


def max_difference(ours: Tensor, theirs: Tensor) -> float:
    """``max |theirs - ours|`` over the elements, an element equal on both sides counting
    0 (the same infinity gives ``inf - inf = nan``, which would hide every other
    difference); 0 for empty tensors."""
    if not ours.numel():
        return 0.0
    gap = (theirs.double() - ours.double()).abs()
    gap[theirs == ours] = 0.0
    return gap.max().item()


def _onnx_export(model: nn.Module, call: _OnnxCall, path: Path, *, dynamic: bool) -> None:
    options: dict[str, Any] = {}
    if dynamic:
        options["dynamic_shapes"] = call.dynamic_shapes()
    if call.single_tensor:
        options["input_names"] = [_ONNX_INPUT]
    with _quiet_onnx_exporter():
        torch.onnx.export(
            model,
            call.args,
            str(path),
            kwargs=call.kwargs,
            dynamo=True,
            external_data=False,
            opset_version=ONNX_OPSET,
            output_names=[_ONNX_OUTPUT],
            verbose=False,
            **options,
        )


def _check_formats(formats: str | Iterable[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    chosen: list[str] = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown export format {fmt!r}; known formats: {list(FORMATS)}")
        if fmt not in chosen:
            chosen.append(fmt)
    if not chosen:
        raise ConfigError(f"give at least one export format of {list(FORMATS)}")
    return chosen


def _check_masks(
    masks: Mapping[str, Tensor] | None, tensors: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    checked = {}
    for name, mask in (masks or {}).items():
        if not isinstance(mask, Tensor):
            raise ConfigError(f"the mask of {name!r} is a {type(mask).__name__}, not a tensor")
        if name not in tensors:
            raise ConfigError(f"a mask is given for {name!r}, which is not in the model")
        if tuple(mask.shape) != tuple(tensors[name].shape):
            raise ConfigError(
                f"the mask of {name!r} has shape {list(mask.shape)}, "
                f"the tensor {list(tensors[name].shape)}"
            )
        keep = mask.detach().cpu()
        checked[name] = (keep if keep.dtype == torch.bool else keep != 0).contiguous()
    return checked


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _files_of_export(directory: Path) -> tuple[set[str], bool]:
    """The files a learnprune export in ``directory`` wrote or was writing: its
    ``model.json`` and every file that lists (plain names only), or nothing when
    ``model.json`` is absent or not a learnprune export description; and whether that
    export was interrupted (its ``model.json`` is the manifest, ``"complete": false``)."""
    try:
        meta = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return set(), False
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        return set(), False
    listed = meta.get("files") if isinstance(meta.get("files"), (dict, list)) else []
    interrupted = meta.get("complete") is False
    return {METADATA_FILE, *(name for name in listed if _plain_name(name))}, interrupted


def _claim_directory(
    directory: Path, overwrite: bool, extra_files: Iterable[str] = ()
) -> tuple[set[str], set[str]]:
    """Check that an export may be written to ``directory``; returns the files an earlier
    export there wrote and the temporaries an interrupted write left (both learnprune's).

    The directory may be new or empty, or hold an interrupted export (its manifest lists
    the files it was writing: they are replaced). It may hold an earlier, complete export
    only with ``overwrite``; it may hold any file learnprune did not write only with
    ``overwrite``, and even then such a file is never removed (only replaced when it has
    the name of a file this export writes).
    """
    if not directory.exists():
        return set(), set()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    names = {entry.name for entry in directory.iterdir()}
    listed, interrupted = _files_of_export(directory)
    previous = listed & names
    ours = {METADATA_FILE, *_ALL_FILES, *extra_files, *previous}
    leftovers = {name for name in names if is_temporary_leftover(name, tuple(ours))}
    foreign = sorted(names - previous - leftovers)
    if overwrite:
        return previous, leftovers
    if previous and not interrupted:
        raise CheckpointError(
            f"{directory} already holds an export ({METADATA_FILE}); "
            "choose another directory or pass overwrite=True (learnprune: --overwrite)"
        )
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise CheckpointError(
            f"{directory} holds files learnprune did not write ({', '.join(foreign[:3])}{more}); "
            "choose a new or empty directory, or pass overwrite=True (learnprune: --overwrite), "
            "which replaces only the export's own files and leaves the others"
        )
    return previous, leftovers


def check_export_directory(
    path_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    extra_files: Iterable[str] = (),
) -> None:
    """Raise :class:`CheckpointError` unless :func:`export` may write to ``path_dir`` (the
    rules of its ``overwrite`` argument); for callers that check before slow work."""
    _claim_directory(Path(path_dir), overwrite, extra_files)


def _check_extra_files(extra_files: Mapping[str, bytes] | None) -> dict[str, bytes]:
    checked = {}
    for name, data in (extra_files or {}).items():
        if not _plain_name(name) or name.startswith(".") or name in (METADATA_FILE, *_ALL_FILES):
            raise ConfigError(
                f"extra file name {name!r} must be a plain file name, not hidden and not one "
                f"of the export's own ({METADATA_FILE}, {', '.join(_ALL_FILES)})"
            )
        if not isinstance(data, bytes):
            raise ConfigError(f"extra file {name!r} must be bytes, got {type(data).__name__}")
        checked[name] = data
    return checked


def _sparse_payload(
    model: nn.Module, fmt: str, min_sparsity: float, block: int
) -> tuple[bytes, dict[str, Any]]:
    """The sparse file's bytes and its ``model.json`` section."""
    sparse_model = sparsify(model, fmt, min_sparsity, block=block)
    layers = {
        name: {
            "shape": [m.out_features, m.in_features],
            "nonzero": int(torch.count_nonzero(m.to_dense_weight())),
            "stored_values": m.nnz,
            "sparsity": round(m.sparsity, 6),
            "bytes": m.nbytes,
            "dense_bytes": m.dense_nbytes,
        }
        for name, m in sparse_model.named_modules()
        if isinstance(m, SparseLinear)
    }
    if "" in layers:
        raise UnsupportedModelError("a model that is one Linear layer cannot be stored sparse")
    data = _safetensors_bytes(_state_tensors(sparse_model), f"sparse-{fmt}")
    section = {
        "file": FILES[fmt],
        "block": block if fmt == "bsr" else None,
        "min_sparsity": float(min_sparsity),
        "index_dtype": "int32",
        "layers": layers,
    }
    return data, section


def export(
    model: nn.Module,
    path_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    formats: str | Iterable[str] = ("safetensors",),
    min_sparsity: float = 0.0,
    block: int = DEFAULT_BLOCK,
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` to the directory ``path_dir`` in the given formats (module docstring).

    Args:
        model: a plain model: finalized (no learnprune gates), possibly compacted; it is
            not changed. SparseLinear layers are exported as the Linear layers they hold.
        path_dir: the directory; created if needed.
        model_name: its :func:`~learnprune.models.build_model` name, so :func:`load` can
            rebuild it; ``None`` for a model outside the registry.
        model_options: the ``build_model`` arguments it was built with (``num_classes``,
            ``in_channels``, ``shortcut``, ...), JSON values.
        masks: ``{parameter name: keep mask}`` (bool or 0/1) to store beside the weights,
            e.g. :func:`learnprune.masking.read_masks` taken before finalizing.
        input_shape: one example's shape ``(C, H, W)``; default ``model.input_shape``.
            Needed for ``"onnx"`` without ``example_inputs``; recorded in ``model.json``.
        example_inputs: what ``"onnx"`` exports and checks the model on, instead of random
            batches of ``input_shape``: a tensor (``model(x)``), a tuple (``model(*x)``) or
            a dict (``model(**x)``), e.g. ``{"input_ids": ids, "attention_mask": mask}``
            for a text model (token ids must be real ids, not noise). Each tensor's axis 0
            is the batch.
        formats: any of ``"safetensors"``, ``"csr"``, ``"bsr"``, ``"onnx"``.
        min_sparsity: for ``"csr"`` / ``"bsr"``, store a Linear weight sparse only if at
            least this fraction of it is zero (the others stay dense in the same file).
            CSR int32 is smaller than dense above 0.5 and faster from about 0.6 (SPEED.md).
        block: BSR block size.
        extra_files: ``{file name: bytes}`` written with the export and listed (size,
            SHA-256) in ``model.json``, so they count as the export's own files, e.g.
            :func:`learnprune.deployment.compact_run`'s ``compact.json``.
        overwrite: replace an existing export in ``path_dir``, or write into a directory
            that holds other files. Only the export's own files are ever replaced or
            removed (those it writes, and those the replaced export's ``model.json``
            lists); every other file in the directory stays.

    Returns:
        The directory.

    Raises:
        ConfigError: bad arguments, or ``model_name`` / ``model_options`` that do not
            describe ``model``.
        UnsupportedModelError: the model carries gates, holds non-tensor state, or cannot
            be exported to ONNX faithfully.
        CheckpointError: ``path_dir`` holds another export, or files learnprune did not
            write, and ``overwrite`` is False.
    """
    import learnprune

    chosen = _check_formats(formats)
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ConfigError(f"min_sparsity must lie in [0, 1], got {min_sparsity!r}")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise UnsupportedModelError(
            "the model still carries learnprune gates (parametrizations); call the method's "
            "finalize() first and pass its masks() as masks="
        )
    if any(isinstance(m, SparseLinear) for m in model.modules()):
        model = densify(model)
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is not None:
        shape = tuple(shape)
        if not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
        ):
            raise ConfigError(f"input_shape must be positive ints, got {input_shape!r}")
    if example_inputs is not None and not isinstance(
        example_inputs, (Tensor, tuple, list, Mapping)
    ):
        raise ConfigError(
            "example_inputs must be a tensor, a tuple of arguments or a dict of keyword "
            f"arguments, got {type(example_inputs).__name__}"
        )
    if "onnx" in chosen and shape is None and example_inputs is None:
        raise ConfigError(
            "ONNX export needs example_inputs (e.g. {'input_ids': ...} for a text model) or "
            "input_shape, one example's shape such as (1, 28, 28)"
        )

    tensors = _state_tensors(model)
    layers = describe_layers(model)
    attributes, shapes = describe_sizes(model)
    architecture: dict[str, Any] = {
        "model_name": model_name,
        "model_options": {},
        "input_shape": None if shape is None else list(shape),
        "resized_layers": 0,
        "layers": layers,
        "attributes": attributes,
        "tensor_shapes": shapes,
    }
    if model_name is not None:
        try:
            architecture["model_options"] = _jsonable(dict(model_options or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model_options must be JSON values ({relayed(err)})") from err
        skeleton = _reference_model(architecture)  # ConfigError for a bad name / option
        try:
            architecture["resized_layers"] = _apply_layers(skeleton, layers, "the exported model")
            _apply_sizes(skeleton, attributes, shapes, "the exported model")
        except CheckpointError as err:
            raise ConfigError(
                f"model_name={model_name!r} does not describe this model: {err}"
            ) from err
        mismatch = _tensor_mismatch(skeleton.state_dict(), tensors)
        if mismatch:
            raise ConfigError(
                f"model_name={model_name!r} with options {architecture['model_options']} "
                f"does not describe this model: {mismatch}"
            )
    elif model_options:
        raise ConfigError("model_options need a model_name")
    keep_masks = _check_masks(masks, tensors)

    extra = _check_extra_files(extra_files)
    directory = Path(path_dir)
    previous, leftovers = _claim_directory(directory, overwrite, extra)
    metadata: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "learnprune_version": learnprune.__version__,
        "torch_version": torch.__version__,
        "formats": chosen,
        "architecture": architecture,
        "sparse": {},
        "onnx": None,
        "masks": None,
        "files": {},
        "complete": True,
    }
    # 1. everything that can fail, in memory or in temporary files: an existing export in
    #    the directory stays intact until all of it has succeeded
    payloads: dict[str, bytes] = {}
    if "safetensors" in chosen:
        payloads[FILES["safetensors"]] = _safetensors_bytes(tensors, "state_dict")
    for fmt in ("csr", "bsr"):
        if fmt in chosen:
            payloads[FILES[fmt]], metadata["sparse"][fmt] = _sparse_payload(
                model, fmt, min_sparsity, block
            )
    if keep_masks:
        payloads[MASKS_FILE] = _safetensors_bytes(keep_masks, "masks")
        metadata["masks"] = {
            "file": MASKS_FILE,
            "tensors": [
                {
                    "name": name,
                    "shape": list(keep.shape),
                    "nonzero": int(keep.sum()),
                    "numel": keep.numel(),
                }
                for name, keep in keep_masks.items()
            ],
        }
    with contextlib.ExitStack() as stack:
        onnx_file = None
        if "onnx" in chosen:
            directory.mkdir(parents=True, exist_ok=True)
            onnx_file = stack.enter_context(temporary_file(directory / FILES["onnx"]))
            onnx_record, onnx_bytes = _export_onnx(model, shape, example_inputs, onnx_file)
            metadata["onnx"] = {"file": FILES["onnx"], **onnx_record}
            metadata["files"][FILES["onnx"]] = _file_record(onnx_bytes)

        for name, data in {**payloads, **extra}.items():
            metadata["files"][name] = _file_record(data)
        # the files of the export this one replaces that it does not rewrite: learnprune's
        # own, like the temporaries an interrupted write left; nothing else is ever removed
        stale = previous - set(metadata["files"]) - {METADATA_FILE}

        # 2. commit: the manifest replaces the old description first, so an interruption
        #    from here on leaves a directory that load() rejects as interrupted (not a mix
        #    of two exports) and that the next export may write into without overwrite
        manifest = {
            key: metadata[key]
            for key in ("format", "format_version", "learnprune_version", "formats")
        }
        manifest.update(complete=False, files=sorted({*metadata["files"], *stale}))
        atomic_write_text(directory / METADATA_FILE, json_text(manifest) + "\n")
        for name, data in {**payloads, **extra}.items():
            atomic_write_bytes(directory / name, data)
        if onnx_file is not None:
            replace_with(onnx_file, directory / FILES["onnx"])
    for name in stale | leftovers:
        (directory / name).unlink(missing_ok=True)
    atomic_write_text(directory / METADATA_FILE, json_text(metadata, indent=2) + "\n")
    return directory


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def _malformed(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is malformed: {what}")


def _check_metadata(meta: Any, path: Path) -> dict[str, Any]:
    """Validate the parsed ``model.json``; returns it."""
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not a learnprune export description")
    if meta.get("complete") is False:
        raise CheckpointError(
            f"the export to {path.parent} was interrupted before it finished ({path} lists "
            "the files it was writing); export again into that directory"
        )
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _malformed(path, f"format_version is {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has export format version {version} (learnprune "
            f"{meta.get('learnprune_version', '?')}); this learnprune reads version "
            f"{FORMAT_VERSION}: upgrade learnprune"
        )
    formats = meta.get("formats")
    if not isinstance(formats, list) or not all(f in FORMATS for f in formats):
        raise _malformed(path, f"formats is {formats!r}")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(rec, dict)
        and isinstance(rec.get("bytes"), int)
        and isinstance(rec.get("sha256"), str)
        for rec in files.values()
    ):
        raise _malformed(path, "'files' must map file names to their bytes and sha256")
    architecture = meta.get("architecture")
    if not isinstance(architecture, dict):
        raise _malformed(path, "no 'architecture'")
    name = architecture.get("model_name")
    options = architecture.get("model_options")
    shape = architecture.get("input_shape")
    layers = architecture.get("layers")
    if name is not None and not isinstance(name, str):
        raise _malformed(path, f"model_name is {name!r}")
    if not isinstance(options, dict):
        raise _malformed(path, f"model_options is {options!r}")
    if shape is not None and not (
        isinstance(shape, list) and all(isinstance(s, int) and s >= 1 for s in shape)
    ):
        raise _malformed(path, f"input_shape is {shape!r}")
    if not isinstance(layers, dict) or not all(
        isinstance(rec, dict) and rec.get("type") in _LAYER_KINDS for rec in layers.values()
    ):
        raise _malformed(path, "'layers' must map layer names to Conv/Linear/BatchNorm records")
    attributes = architecture.get("attributes", {})  # absent in older exports
    shapes = architecture.get("tensor_shapes", {})
    if not isinstance(attributes, dict) or not all(
        isinstance(sizes, dict)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in sizes.values())
        for sizes in attributes.values()
    ):
        raise _malformed(path, "'attributes' must map module names to {size attribute: int}")
    if not isinstance(shapes, dict) or not all(
        isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
        for shape in shapes.values()
    ):
        raise _malformed(path, "'tensor_shapes' must map tensor names to shapes (lists of ints)")
    sparse = meta.get("sparse")
    if not isinstance(sparse, dict):
        raise _malformed(path, "no 'sparse' section")
    for fmt in ("csr", "bsr"):
        if fmt in formats:
            section = sparse.get(fmt)
            if not isinstance(section, dict) or not isinstance(section.get("layers"), dict):
                raise _malformed(path, f"no layer list for format {fmt!r}")
            if fmt == "bsr" and (
                isinstance(section.get("block"), bool)
                or not isinstance(section.get("block"), int)
                or section["block"] < 1
            ):
                raise _malformed(path, f"BSR block size is {section.get('block')!r}")
    masks = meta.get("masks")
    if masks is not None and not (
        isinstance(masks, dict)
        and isinstance(masks.get("tensors"), list)
        and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in masks["tensors"])
    ):
        raise _malformed(path, "'masks' must list the masked tensors")
    return meta


def read_metadata(path_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated contents of an export's ``model.json``.

    Raises:
        CheckpointError: no such directory, no ``model.json``, invalid JSON, not an export
            description, a newer format version, or a malformed field.
    """
    directory = Path(path_dir)
    if not directory.is_dir():
        raise CheckpointError(f"no export directory at {directory}")
    path = directory / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: {directory} is not a learnprune export "
            "(or its export was interrupted)"
        )
    try:
        text = path.read_text(encoding="utf-8")
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read ({relayed(err)})") from err
    return _check_metadata(meta, path)


def _read_tensors(directory: Path, name: str, meta: Mapping[str, Any]) -> dict[str, Tensor]:
    """Read one safetensors file of the export, checked against its size and SHA-256."""
    path = directory / name
    record = meta["files"].get(name)
    if record is None:
        raise _malformed(directory / METADATA_FILE, f"it does not list {name}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the export")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({relayed(err)})") from err
    if len(data) != record["bytes"]:
        raise CheckpointError(
            f"{path} has {len(data)} bytes, {METADATA_FILE} records {record['bytes']}: "
            "the file is truncated or was replaced"
        )
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise CheckpointError(
            f"{path} does not match the SHA-256 in {METADATA_FILE}: it was modified after export"
        )
    st = _require("safetensors.torch")
    try:
        tensors = st.load(data)
    except Exception as err:
        raise CheckpointError(
            f"{path} is corrupt or not a safetensors file ({relayed(err)})"
        ) from err
    return dict(tensors)


def _sparse_layer(
    name: str,
    linear: nn.Module,
    tensors: Mapping[str, Tensor],
    fmt: str,
    block: int | None,
    path: Path,
) -> SparseLinear:
    if not isinstance(linear, nn.Linear):
        raise CheckpointError(
            f"{path} stores layer {name!r} as a sparse Linear, the model has "
            f"{type(linear).__name__} there"
        )
    parts = {}
    for part in ("crow_indices", "col_indices", "values"):
        key = f"{name}.{part}"
        if key not in tensors:
            raise CheckpointError(f"{path} lacks {key!r}")
        parts[part] = tensors[key]
    bias = None
    if linear.bias is not None:
        if f"{name}.bias" not in tensors:
            raise CheckpointError(f"{path} lacks {name + '.bias'!r}")
        bias = tensors[f"{name}.bias"]
    try:
        return SparseLinear(
            linear.in_features,
            linear.out_features,
            parts["crow_indices"],
            parts["col_indices"],
            parts["values"],
            bias,
            format=fmt,
            block=block,
        )
    except ConfigError as err:
        raise CheckpointError(f"{path}: layer {name!r}: {err}") from err


def load(
    path_dir: str | os.PathLike[str],
    *,
    format: str = "safetensors",
    model: nn.Module | None = None,
) -> nn.Module:
    """Rebuild an exported model, in eval mode.

    Args:
        path_dir: a directory written by :func:`export`.
        format: ``"safetensors"`` for the dense model, ``"csr"`` / ``"bsr"`` for the model
            with its sparse Linear layers as :class:`~learnprune.sparse_linear.SparseLinear`.
            (Run ``model.onnx`` with ``onnxruntime.InferenceSession``.)
        model: an instance of the exported architecture to load into (changed in place);
            required when the export names no registered model, optional otherwise. Its
            Conv/Linear/BatchNorm layers (subclasses included) are resized in place to the
            recorded sizes where they differ.

    Raises:
        ConfigError: an unknown ``format``.
        CheckpointError: a missing, truncated, malformed or newer-version file, a format
            the directory does not hold, or tensors that do not fit the described model.
    """
    if format == "onnx":
        raise ConfigError(
            "load() returns a PyTorch module; run model.onnx with onnxruntime.InferenceSession"
        )
    if format not in LOAD_FORMATS:
        raise ConfigError(f"unknown load format {format!r}; known formats: {list(LOAD_FORMATS)}")
    directory = Path(path_dir)
    meta = read_metadata(directory)
    json_path = directory / METADATA_FILE
    if format not in meta["formats"]:
        raise CheckpointError(
            f"{directory} holds no {format!r} export (it has {meta['formats']}); "
            f"export again with formats including {format!r}"
        )
    architecture = meta["architecture"]
    if model is None:
        if architecture["model_name"] is None:
            raise CheckpointError(
                f"{json_path} names no registered model (exported without model_name); "
                "pass model= an instance of the exported architecture"
            )
        try:
            model = _reference_model(architecture)
        except ConfigError as err:
            raise CheckpointError(
                f"{json_path} describes a model this learnprune cannot build: {err}"
            ) from err
    _apply_layers(model, architecture["layers"], str(json_path))
    _apply_sizes(
        model,
        architecture.get("attributes", {}),
        architecture.get("tensor_shapes", {}),
        str(json_path),
    )

    name = FILES[format]
    path = directory / name
    tensors = _read_tensors(directory, name, meta)
    if format in ("csr", "bsr"):
        section = meta["sparse"][format]
        block = section.get("block") if format == "bsr" else None
        for layer in section["layers"]:
            try:
                linear = model.get_submodule(layer) if layer else model
            except AttributeError:
                raise CheckpointError(
                    f"{json_path} lists a sparse layer {layer!r} the model does not have"
                ) from None
            if not layer:
                raise _malformed(json_path, "the root module cannot be a sparse layer")
            _set_module(model, layer, _sparse_layer(layer, linear, tensors, format, block, path))
    mismatch = _tensor_mismatch(model.state_dict(), tensors)
    if mismatch:
        raise CheckpointError(
            f"{path} does not fit the model described by {json_path.name}: {mismatch}"
        )
    ties = tied_parameters(model)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} cannot be loaded ({relayed(err)})") from err
    _tie_again(model, ties, tensors)
    if architecture["input_shape"] is not None:
        model.input_shape = tuple(architecture["input_shape"])
    return model.eval()


def load_masks(path_dir: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The keep-masks stored with an export (``{}`` when it has none), as bool tensors.

    Raises:
        CheckpointError: as :func:`load`, or masks that disagree with ``model.json``.
    """
    directory = Path(path_dir)
    meta = read_metadata(directory)
    if meta["masks"] is None:
        return {}
    tensors = _read_tensors(directory, MASKS_FILE, meta)
    path = directory / MASKS_FILE
    listed = {t["name"]: t for t in meta["masks"]["tensors"]}
    if set(listed) != set(tensors):
        raise CheckpointError(f"{path} holds other masks than {METADATA_FILE} lists")
    for name, keep in tensors.items():
        if keep.dtype != torch.bool or list(keep.shape) != listed[name].get("shape"):
            raise CheckpointError(f"{path}: the mask of {name!r} is not the bool tensor listed")
    return {name: tensors[name] for name in listed}
