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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnprune.accounting import prunable_modules, trace_layers
from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, gather, scatter
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
    per_weight = weight_costs(
        model,
        flops=flops,
        input_shape=input_shape,
        example_inputs=example_inputs,
        normalise=normalise,
    )
    costs: dict[str, Cost] = {}
    for group_set in plan.sets:
        cost = group_set.gather(per_weight, weights_only=True)
        uniform = cost.numel() > 0 and bool((cost == cost[0]).all())
        costs[group_set.name] = float(cost[0]) if uniform else cost
    return costs


def weight_costs(
    model: nn.Module,
    *,
    flops: bool = False,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    normalise: bool = True,
) -> dict[str, Tensor]:
    """``{tensor name: c_i}``, each weight's cost (module docstring) for every tensor:
    ``1`` (sparsity), or for a FLOPs budget the output positions of its Conv/Linear layer
    (over their mean with ``normalise``; Conv/Linear weights only). Raises ConfigError as
    :func:`group_costs`."""
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
    return per_weight


def shares_weights(plan: GroupPlan) -> bool:
    """Whether some Conv/Linear weight tensor is cut by two group slices (coupled channels:
    a conv's filters belong to one channel's group, its input slices to another's), so the
    cost of a kept set is not the sum of its groups' costs (:class:`KeptCost`)."""
    seen: set[str] = set()
    for group_set in plan.sets:
        for piece in group_set.slices:
            if not piece.counts_toward_sparsity:
                continue
            if piece.param in seen:
                return True
            seen.add(piece.param)
    return False


class KeptCost:
    """The cost of what a keep assignment leaves, when groups share weights::

        C(k) = Σ_i c_i Π_{p ∋ i} k_{g_p(i)}

    over every Conv/Linear weight ``i`` (``c_i`` of :func:`weight_costs`; ``p`` the group
    slices that cut ``i``'s tensor, ``g_p(i)`` its group there): a weight stays only while
    every group it belongs to is kept, so the weight between two coupled channels costs
    once, and nothing once either channel is dropped. For a FLOPs cost this is the FLOPs of
    the compacted model's Conv/Linear layers (up to the factor of the normalisation);
    weights in no group always count. ``k`` may be 0/1 or keep probabilities (then ``C`` is
    the expectation under independent gates). With unit costs and 0/1 keeps,
    ``C(1) − C(k)`` is :func:`learnprune.selection.removed_weights` (GMP's count).
    """

    def __init__(self, plan: GroupPlan, per_weight: dict[str, Tensor], weights: Sequence[str]):
        self.sets = {s.name: s for s in plan.sets}
        self.cost = {name: per_weight[name].double() for name in weights if name in per_weight}
        self.cuts: dict[str, list[tuple[str, Any]]] = {name: [] for name in self.cost}
        for group_set in plan.sets:
            for piece in group_set.slices:
                if piece.param in self.cuts and piece.counts_toward_sparsity:
                    self.cuts[piece.param].append((group_set.name, piece))
        self.total = float(sum(float(c.sum()) for c in self.cost.values()))
        """``C`` with everything kept."""
        self._on_device: dict[torch.device, dict[str, Tensor]] = {}

    def _alive(self, name: str, keep: Mapping[str, Tensor], skip: Any = None) -> Tensor | None:
        alive = None
        for set_name, piece in self.cuts[name]:
            if piece is skip or set_name not in keep:  # a set not given: all kept
                continue
            value = scatter(keep[set_name].double(), piece)
            alive = value if alive is None else alive * value
        return alive

    def __call__(self, keep: Mapping[str, Tensor]) -> float:
        """``C(k)`` for ``{set name: k (G,)}``."""
        device = next(iter(keep.values())).device if keep else torch.device("cpu")
        if device not in self._on_device:
            self._on_device[device] = {n: c.to(device) for n, c in self.cost.items()}
        total = None
        for name, cost in self._on_device[device].items():
            alive = self._alive(name, keep)
            part = cost.sum() if alive is None else (cost * alive).sum()
            total = part if total is None else total + part
        return float(total) if total is not None else 0.0

    def marginal(self, keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{set name: ∂C/∂k_g (G,)}``: what keeping each group adds to ``C(k)`` with the
        other groups as they are (exact for a group not kept yet, since ``C`` is linear in
        each ``k_g``). It only grows as more groups are kept."""
        result = {
            name: torch.zeros(s.num_groups, dtype=torch.float64) for name, s in self.sets.items()
        }
        keep = {name: k.detach().cpu() for name, k in keep.items()}
        for name, cost in self.cost.items():
            for set_name, piece in self.cuts[name]:
                others = self._alive(name, keep, skip=piece)
                weighted = cost if others is None else cost * others
                result[set_name] += gather(
                    weighted.expand(piece.shape), piece, self.sets[set_name].num_groups
                )
        return result


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
