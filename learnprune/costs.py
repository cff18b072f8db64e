"""What keeping a group costs: its connections, or its FLOPs.

Learned methods penalise kept groups and adapt ``λ`` to a budget (:mod:`learnprune.budget`).
Both need the *cost* ``c_g`` of keeping group ``g``:

* for a sparsity budget (and the plain penalty) ``c_g = n_g``, the number of Conv/Linear
  weights in the group;
* for a FLOPs budget each weight counts its output positions, normalised so that the mean
  weight costs 1: ``c_g = Σ_{i ∈ g} P_{l(i)} / P̄`` with ``P_l`` the output positions of layer
  ``l`` (1 for a Linear layer, ``H_out·W_out`` for a conv) and ``P̄`` their weight-weighted
  mean. A penalty ``λ Σ_g c_g z_g`` then has the same scale under both budgets.

A group set whose groups all cost the same (element sets, one layer's filters under a
sparsity budget) gets one number instead of a tensor, which keeps the hot paths cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnprune.accounting import prunable_modules, trace_layers
from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan
from learnprune.masking import effective_parameters

Cost = Tensor | float
"""Per-group costs of one set: a ``(G,)`` tensor, or one number shared by every group."""


def group_costs(
    model: nn.Module,
    plan: GroupPlan,
    *,
    flops: bool = False,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    normalise: bool = True,
) -> dict[str, Cost]:
    """``{set name: c_g}`` for every group set of ``plan`` (see the module docstring).

    With ``flops`` and ``normalise=False`` each weight counts its raw output positions, so
    ``c_g`` is the group's multiply-adds per example.

    The FLOPs trace runs on the first of the user's ``example_inputs`` when given (token
    ids stay token ids), else on a random example of ``input_shape``.

    Raises:
        ConfigError: ``flops=True`` with neither an input shape nor example inputs to trace
            the model with.
    """
    weights = {name: m.weight.numel() for name, m in prunable_modules(model)}
    per_weight: dict[str, Tensor] = {}
    if flops:
        if input_shape is None and example_inputs is None:
            raise ConfigError("a flops budget needs input_shape=(C, H, W) or example_inputs")
        positions, _flops = trace_layers(model, input_shape, example_inputs)
        total = sum(positions.get(name, 0) * n for name, n in weights.items())
        mean = total / max(sum(weights.values()), 1) if normalise else 1.0
        for name, tensor in effective_parameters(model):
            layer = name.rpartition(".")[0]
            if layer in positions and name.endswith("weight"):
                per_weight[name] = torch.full(tensor.shape, positions[layer] / mean)
    else:
        for name, tensor in effective_parameters(model):
            per_weight[name] = torch.ones(tensor.shape)
    costs: dict[str, Cost] = {}
    for group_set in plan.sets:
        cost = group_set.gather(per_weight, weights_only=True)
        uniform = cost.numel() > 0 and bool((cost == cost[0]).all())
        costs[group_set.name] = float(cost[0]) if uniform else cost
    return costs


def total_cost(plan: GroupPlan, costs: dict[str, Cost]) -> float:
    """``Σ_sets Σ_g c_g``: the cost of keeping everything."""
    total = 0.0
    for group_set in plan.sets:
        cost = costs[group_set.name]
        total += float(cost.sum()) if isinstance(cost, Tensor) else cost * group_set.num_groups
    return total


def weighted_sum(cost: Cost, values: Tensor) -> Tensor:
    """``Σ_g c_g v_g`` as a 0-dim tensor (differentiable in ``values``)."""
    if isinstance(cost, float):
        return values.sum() * cost
    return torch.dot(cost.to(values.device, values.dtype), values)
