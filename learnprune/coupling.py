"""Coupled channel groups from Torch-Pruning's dependency graph.

A channel of a network is more than one filter: removing output channel ``c`` of a conv
also removes ``c`` from its BatchNorm, from the next layer's inputs, and, where a
residual add or a concat ties layers together, from every layer joined there. Torch-Pruning's
``DependencyGraph`` traces these ties; this module turns each of its pruning groups into a
:class:`~learnprune.groups.GroupSet` whose group ``k`` is the root layer's channel ``k``
together with everything tied to it, so one keep/drop decision covers them all.

Group members that learnprune knows how to mask: Conv/Linear weights (output rows and
input columns), their biases, BatchNorm affine entries, depthwise convs (filter ``c``
with input channel ``c``; with a channel multiplier only in the group of their own
outputs), and raw parameters that scale or shift a channel (ConvNeXt's layer scale ``γ``:
entry ``c`` of the axis :func:`unwrapped_parameters` names). A dependency group that also
touches another parameterised layer (LayerNorm, GroupNorm, PReLU, Embedding, attention,
grouped convs, a depthwise conv's inputs under a channel multiplier) is skipped as a whole
and reported, never masked half-way; so are the layers whose outputs it holds
(``plan.skipped`` says which group).

Torch-Pruning is told about the raw parameters (:func:`unwrapped_parameters`), so it
neither warns "Unwrapped parameters detected" nor guesses their channel axis on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from learnprune.errors import UnsupportedModelError
from learnprune.groups import (
    PRUNABLE_LAYERS,
    GroupSet,
    TensorSlices,
    evaluation_mode,
)


def coupled_group_sets(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    classifier: str | None,
    example_inputs: Any,
) -> tuple[list[GroupSet], dict[str, str]]:
    """One :class:`GroupSet` per dependency group rooted at a target layer's outputs.

    Args:
        model: the (unmasked) model.
        layers: the target layers by name; every other Conv/Linear is treated as excluded
            (its outputs are never cut, its inputs follow their producers).
        classifier: the output layer's name; its outputs are never cut.
        example_inputs: what the graph is traced on, as Torch-Pruning takes it (a tensor,
            a tuple of positional or a dict of keyword arguments): the user's real inputs,
            or one random example of the input shape.

    Returns:
        the group sets, and ``{layer: reason}`` for target layers no set covers.
    """
    names = {module: name for name, module in model.named_modules()}
    ignored = [
        module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and (name not in layers or name == classifier)
    ]
    try:
        with evaluation_mode(model):  # Torch-Pruning calls model.eval() and does not restore
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                unwrapped_parameters=unwrapped_parameters(model),
            )
        groups = list(
            graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_LAYERS)
        )
    except Exception as err:  # Torch-Pruning raises many kinds of errors on odd graphs
        raise UnsupportedModelError(
            f"cannot trace the model's channel dependencies for coupled groups "
            f"({type(err).__name__}: {err}); use groups='out_channel' instead"
        ) from err

    sets: list[GroupSet] = []
    skipped: dict[str, str] = {}
    covered: set[str] = set()
    refused: dict[str, str] = {}  # layer or BatchNorm -> why the group of its outputs was skipped
    names.update((param, name) for name, param in model.named_parameters())
    for group in groups:
        root_name = names.get(group[0].dep.target.module, "?")
        pieces, problem = _group_pieces(graph, group, names)
        if problem:
            skipped[f"coupled:{root_name}"] = problem
            for item in group.items:
                module = item.dep.target.module
                layer = names.get(module)
                if (
                    layer is not None
                    and isinstance(module, (*PRUNABLE_LAYERS, _BatchNorm))
                    and graph.is_out_channel_pruning_fn(item.dep.handler)
                ):
                    refused.setdefault(layer, f"outputs in coupled:{root_name}, which {problem}")
            continue
        num_groups = len(group[0].idxs)
        sets.append(GroupSet(f"coupled:{root_name}", "coupled", num_groups, tuple(pieces)))
        covered.update(p.module for p in pieces if p.role == "out")
    for name in layers:
        if name != classifier and name not in covered:
            skipped.setdefault(
                f"{name}.weight",
                refused.get(name, "outputs not in any coupled group (not run in the trace?)"),
            )
    modules = dict(model.named_modules())
    for name, why in refused.items():  # BatchNorm entries of skipped groups
        if isinstance(modules[name], _BatchNorm) and name not in covered:
            skipped.setdefault(f"{name}.weight", why)
    if classifier in layers:
        skipped.setdefault(
            f"{classifier}.weight", "classifier outputs (the classes) are never pruned"
        )
    return sets, skipped


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """The model's raw parameters as Torch-Pruning takes them: ``(parameter, channel
    axis)`` for every parameter not owned by a module Torch-Pruning has a pruner for
    (its own rule), e.g. ConvNeXt's layer scale ``γ``. The channel axis is the last one
    longer than 1: a ``(C,)`` or ``(C, 1, 1)`` scale gives its channels, a ``(1, N, D)``
    position table its ``D`` features (Torch-Pruning's default, made explicit); a tensor
    with no such axis (a scalar) is left out."""
    graph = tp.DependencyGraph()
    wrapped: set[int] = set()
    for module in model.modules():
        op_type = tp.ops.module2type(module)
        pruned = op_type in graph.REGISTERED_PRUNERS and op_type != tp.ops.OPTYPE.ELEMENTWISE
        if pruned or type(module) in graph.CUSTOMIZED_PRUNERS:
            wrapped.update(id(p) for p in module.parameters())
    found = []
    for param in model.parameters():
        if id(param) in wrapped:
            continue
        axes = [dim for dim, size in enumerate(param.shape) if size > 1]
        if axes:
            found.append((param, axes[-1]))
    return found


def layer_scale_axes(graph: tp.DependencyGraph) -> dict[int, int]:
    """``{id(parameter): channel axis}`` of the graph's raw parameters that learnprune
    masks and cuts with their channel: those with exactly one axis longer than 1 (a layer
    scale ``γ`` of shape ``(C,)``, ``(C, 1, 1)`` or ``(1, C, 1, 1)``). A raw parameter
    with several (a position table, a weight used through ``F.linear``) has no axis one
    can be sure of; a group that ties it in is left whole."""
    return {
        id(param): dim
        for param, dim in graph.unwrapped_parameters
        if sum(size > 1 for size in param.shape) == 1
    }


def _group_pieces(
    graph: tp.DependencyGraph, group: tp.dependency.Group, names: Mapping[object, str]
) -> tuple[list[TensorSlices], str]:
    """The tensor slices of one dependency group, or a reason it cannot be masked.
    ``names`` holds the modules' and the parameters' qualified names."""
    axes = layer_scale_axes(graph)
    positions: dict[tuple[str, str, int, str], dict[int, int]] = {}
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        root_idxs = item.root_idxs if item.root_idxs is not None else idxs
        module = dep.target.module
        if isinstance(module, nn.Parameter) and id(module) in axes and module in names:
            owner, _, attr = names[module].rpartition(".")  # a layer scale: entry c is channel c
            dim = axes[id(module)]
            shapes[(owner, attr)] = tuple(module.shape)
            slot = positions.setdefault((owner, attr, dim, "out"), {})
            for position, root in zip(idxs, root_idxs, strict=True):
                slot[int(position)] = int(root)
            continue
        if not isinstance(module, nn.Module):
            return [], "ties in a raw nn.Parameter, which learnprune cannot mask yet"
        if not any(True for _ in module.parameters(recurse=False)):
            continue  # element-wise ops, concat, reshape: nothing to mask
        name = names.get(module)
        if name is None:
            return [], f"contains an untraceable {type(module).__name__}"
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        targets = _slices_for(module, is_out, module is group[0].dep.target.module)
        if targets is None:
            return [], f"ties in {name} ({_describe(module)}), which learnprune cannot mask yet"
        for attr, dim, role in targets:
            tensor = getattr(module, attr)
            shapes[(name, attr)] = tuple(tensor.shape)
            slot = positions.setdefault((name, attr, dim, role), {})
            for position, root in zip(idxs, root_idxs, strict=True):
                slot[int(position)] = int(root)
    pieces = []
    for (name, attr, dim, role), mapping in positions.items():
        shape = shapes[(name, attr)]
        index = torch.full((shape[dim],), -1, dtype=torch.long)
        for position, root in mapping.items():
            index[position] = root
        full = bool((index == torch.arange(shape[dim])).all())
        pieces.append(TensorSlices(name, attr, shape, dim, None if full else index, role))
    return pieces, ""


def _slices_for(
    module: nn.Module, is_out: bool, is_root: bool
) -> list[tuple[str, int, str]] | None:
    """``(attribute, dim, role)`` of a module's tensors that carry the channel, or None.

    A depthwise conv's filter ``c`` follows input channel ``c``. With a channel multiplier
    (``k`` filters per input channel) Torch-Pruning still maps input ``c`` to filter ``c``,
    not to filters ``c·k ... c·k + k - 1``, so only the group of its own outputs is taken.
    """
    if isinstance(module, PRUNABLE_LAYERS):
        groups = getattr(module, "groups", 1)
        depthwise = groups > 1 and groups == module.in_channels
        if groups > 1 and not depthwise:
            return None
        if depthwise and module.out_channels != module.in_channels and not is_root:
            return None
        if is_out or depthwise:
            out = [("weight", 0, "out")]
            if module.bias is not None:
                out.append(("bias", 0, "out"))
            return out
        return [("weight", 1, "in")]
    if isinstance(module, _BatchNorm):
        if not module.affine:
            return []
        return [("weight", 0, "out"), ("bias", 0, "out")]
    return None


def _describe(module: nn.Module) -> str:
    """A module's type, and what makes a conv's groups special."""
    what = type(module).__name__
    groups = getattr(module, "groups", 1)
    if groups > 1 and groups == getattr(module, "in_channels", None):
        return f"a depthwise {what}, {module.out_channels // groups} filters per input channel"
    if groups > 1:
        return f"a grouped {what}, groups={groups}"
    return what
