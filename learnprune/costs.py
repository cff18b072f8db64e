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

A FLOPs budget is measured on the model as compaction will leave it: dropping a filter also
removes the next layer's input slice, and dropping the only input slice that reads a channel
removes the filter that writes it (:func:`compaction_plan` adds those slices to the groups,
:class:`KeptCost` counts each weight once). A sparsity budget counts each group's own
weights.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from learnprune.accounting import prunable_modules, trace_layers
from learnprune.errors import ConfigError, UnsupportedModelError
from learnprune.groups import (
    GroupPlan,
    GroupSet,
    TensorSlices,
    example_input,
    gather,
    output_layer,
    prunable_layers,
    scatter,
)
from learnprune.masking import GroupGate, _own_class, effective_parameters, gated_tensors

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


def compaction_plan(
    model: nn.Module,
    plan: GroupPlan,
    *,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> GroupPlan:
    """``plan`` with, in each one-layer ``out_channel``/``in_channel`` set, the slices that
    :func:`learnprune.compact.compact` removes along with a dropped group, so that
    :class:`KeptCost` of it is the cost of the compacted model:

    * filter (output unit) ``k`` of layer ``P``, when ``P``'s row and bias are all that
      write channel ``k`` (no BatchNorm shift, no residual add): the slices of every layer
      that reads channel ``k`` (the next layer's input columns, all of a flattened map's);
    * input ``j`` of layer ``R``, when it is the only slice that reads its channel (``R`` is
      the channel's one reader, one column per channel): what writes that channel (the
      previous layer's row ``j`` and bias).

    A weight then survives only if its own group is kept and the channel it reads and the
    one it writes survive. An input that is not its channel's one reader (a pixel of the
    model's input, a column of a flattened conv map, a channel read by two layers) stays in
    the compacted layer, zero but computed: it is taken out of its own weight's cut, so
    dropping it saves nothing. (Compaction does remove a channel once all its readers drop
    it, which a product of keeps cannot say: the budget errs on the kept side there.)
    Which layer reads which channel is the dependency graph compaction cuts along
    (:func:`learnprune.coupling.coupled_group_sets`, traced on an unmasked copy of the
    model); a model it cannot trace, or a plan with no such set, gives ``plan`` itself.
    """
    single = [s for s in plan.sets if s.kind in ("out_channel", "in_channel")]
    if not single or (input_shape is None and example_inputs is None):
        return plan
    from learnprune.coupling import coupled_group_sets

    try:
        clean = _bare_copy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layers, _skipped = prunable_layers(clean)
            classifier = output_layer(clean, input_shape, example_inputs)
            inputs = (
                example_inputs if example_inputs is not None else example_input(clean, input_shape)
            )
            channels, _left = coupled_group_sets(clean, layers, classifier, inputs)
    except UnsupportedModelError:
        return plan
    writers: dict[str, list[tuple[GroupSet, TensorSlices]]] = {}
    readers: dict[str, list[tuple[GroupSet, TensorSlices]]] = {}
    for channel_set in channels:  # a layer reading a concat reads several channel sets
        for piece in channel_set.slices:
            if piece.counts_toward_sparsity:
                table = writers if piece.role == "out" else readers
                table.setdefault(piece.param, []).append((channel_set, piece))
    sets = []
    for group_set in plan.sets:
        own = [p for p in group_set.slices if p.counts_toward_sparsity and p.index is None]
        if group_set.kind not in ("out_channel", "in_channel") or len(own) != 1:
            sets.append(group_set)
            continue
        extra, removed = _removed_with(group_set, own[0], writers, readers)
        slices = tuple(
            p
            if p is not own[0] or removed is None
            else dataclasses.replace(p, index=torch.where(removed, _positions(p), -1))
            for p in group_set.slices
        )
        sets.append(dataclasses.replace(group_set, slices=slices + tuple(extra)))
    return GroupPlan(sets, plan.skipped)


def _bare_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without learnprune's gates: its weights as they were before
    masking (the gates are not copied: their caches need not be copyable)."""
    memo: dict[int, Any] = {id(m): None for m in model.modules() if isinstance(m, GroupGate)}
    try:
        clean = copy.deepcopy(model, memo)
    except Exception as err:  # a module that cannot be copied
        raise UnsupportedModelError(f"cannot copy the model ({err})") from err
    for _name, module, attr, _gated in list(gated_tensors(clean)):
        _own_class(module)  # the copy shares parametrize's class with the model
        parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    return clean


def _positions(piece: TensorSlices) -> Tensor:
    """The channel of each position along ``piece.dim`` (``-1``: none)."""
    assert piece.dim is not None
    if piece.index is None:
        return torch.arange(piece.shape[piece.dim])
    return piece.index


def _removed_with(
    group_set: GroupSet,
    own: TensorSlices,
    writers: Mapping[str, list[tuple[GroupSet, TensorSlices]]],
    readers: Mapping[str, list[tuple[GroupSet, TensorSlices]]],
) -> tuple[list[TensorSlices], Tensor | None]:
    """The other layers' slices that compaction removes with ``group_set``'s groups, cut by
    its group ids (:func:`compaction_plan`); ``own`` is the set's Conv/Linear weight slice.
    For an input set also which of its inputs compaction removes (``None`` for a filter
    set: all of them): the others stay in the compacted layer, zero but computed."""
    table = writers if group_set.kind == "out_channel" else readers
    extra = []
    removed = (
        None
        if group_set.kind == "out_channel"
        else torch.zeros(group_set.num_groups, dtype=torch.bool)
    )
    for channel_set, mine in table.get(own.param, []):
        if mine.dim is None or mine.dim != own.dim:
            continue
        channel = _positions(mine)  # the channel of each of the set's groups (-1: none)
        members = [p for p in channel_set.slices if p.role == mine.role]
        if group_set.kind == "out_channel":  # the set's rows and biases alone write it
            if {p.param for p in members} - set(group_set.params):
                continue
        elif len(members) != 1 or bool((torch.bincount(channel[channel >= 0]) > 1).any()):
            continue  # other readers, or several columns per channel (a flattened map)
        group_of = torch.full((channel_set.num_groups,), -1, dtype=torch.long)
        inside = channel >= 0
        group_of[channel[inside]] = torch.arange(len(channel))[inside]
        if removed is not None:
            removed |= inside
        for piece in channel_set.slices:
            if piece.role != mine.role and piece.dim is not None:
                at = _positions(piece)
                index = torch.where(at >= 0, group_of[at.clamp(min=0)], -1)
                extra.append(dataclasses.replace(piece, index=index))
    return extra, removed


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
