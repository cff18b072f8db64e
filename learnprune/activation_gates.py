"""Gates on activations: a module's output units or feature maps, multiplied by ``z``.

Parameter gates (:mod:`learnprune.masking`) multiply weights; activation gates multiply
what a module *outputs*, through a forward hook::

    y ↦ y ⊙ z          (z_g broadcast over the batch and the spatial positions of unit g)

A stochastic gate may draw its noise per example here (``z`` of shape ``(B, G)``), which a
weight gate cannot. The gated modules are Conv/Linear layers: output unit ``j`` of
``y = W x + b`` gated by ``z_j`` equals the layer with row ``W_j`` and bias ``b_j`` scaled by
``z_j``, so the final model folds the gates into the weights (:func:`fold`) and the keep
masks are those rows (:func:`read_masks`). The group sets are the layers' ``out_channel``
sets, whose member slices are exactly those rows and biases.

A gate in front of a BatchNorm would be divided out again by the batch statistics, so
models with BatchNorm are refused; gate their parameters (``coupled`` groups) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, GroupSet, scatter_values
from learnprune.masking import GroupGate

GATE_ATTRIBUTE = "learnprune_gate"
"""The gated module's submodule holding its gate: inside the model, the gate follows
``model.to(device)`` and ``train()``/``eval()`` and is saved with ``model.state_dict()``."""

Sampler = Callable[[GroupGate, int], Tensor]
"""``(gate, batch size) -> z`` of shape ``(B, G)``: per-example gate values in training."""

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def check_model(model: nn.Module, plan: GroupPlan) -> None:
    """Refuse models and plans activation gates cannot serve (with a :class:`ConfigError`)."""
    norms = [name for name, m in model.named_modules() if isinstance(m, NORM_LAYERS)]
    if norms:
        raise ConfigError(
            f"activation gates on a layer followed by normalisation ({norms[0]}) are scaled "
            "away by it; gate the parameters instead (groups='coupled')"
        )
    for group_set in plan.sets:
        if group_set.kind != "out_channel":
            raise ConfigError(f"activation gates need out_channel sets; {group_set.name} is not")


def attach(
    model: nn.Module,
    plan: GroupPlan,
    gates: Mapping[str, GroupGate],
    per_example: Sampler | None = None,
) -> list[RemovableHandle]:
    """Hook every set's module so its output is multiplied by the set's gate values (the
    gate becomes the module's ``learnprune_gate`` submodule).

    With ``per_example`` and the module in training mode, ``z`` comes from
    ``per_example(gate, batch)`` (one draw per example); otherwise ``z = gate()``.
    """
    handles = []
    for group_set in plan.sets:
        module = model.get_submodule(group_set.slices[0].module)
        module.add_module(GATE_ATTRIBUTE, gates[group_set.name])
        handles.append(module.register_forward_hook(_hook(gates[group_set.name], per_example)))
    return handles


def _hook(gate: GroupGate, per_example: Sampler | None) -> Callable[..., Tensor]:
    def hook(module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
        tail = (1,) * (output.dim() - 2)
        if per_example is not None and module.training:
            z = per_example(gate, output.shape[0])
            return output * z.view(*z.shape, *tail)
        z = gate()
        return output * z.view(1, -1, *tail)

    return hook


def _member_values(group_set: GroupSet, values: Tensor) -> dict[str, Tensor]:
    """``values`` (shape ``(G,)``) broadcast onto every member tensor of the set."""
    return {
        piece.param: scatter_values(values, piece.dim, piece.index, piece.shape).expand(piece.shape)
        for piece in group_set.slices
    }


def read_masks(plan: GroupPlan, gates: Mapping[str, GroupGate]) -> dict[str, Tensor]:
    """``{parameter name: bool keep mask}``: the rows and biases of closed units are off."""
    masks: dict[str, Tensor] = {}
    for group_set in plan.sets:
        keep = gates[group_set.name].keep()
        masks.update(
            {k: v.to(torch.bool) for k, v in _member_values(group_set, keep.float()).items()}
        )
    return masks


@torch.no_grad()
def fold(
    model: nn.Module,
    plan: GroupPlan,
    gates: Mapping[str, GroupGate],
    handles: list[RemovableHandle],
) -> None:
    """Remove the hooks and the gate submodules, and scale each unit's weight row and bias
    by its gate value (the gates in eval mode: deterministic values), so the plain model
    computes the same."""
    for handle in handles:
        handle.remove()
    for group_set in plan.sets:
        gate = gates[group_set.name]
        delattr(model.get_submodule(group_set.slices[0].module), GATE_ATTRIBUTE)
        gate.eval()
        params = dict(model.named_parameters())
        for name, multiplier in _member_values(group_set, gate().detach()).items():
            params[name].mul_(multiplier.to(params[name].device, params[name].dtype))
