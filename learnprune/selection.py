"""Choosing which groups to keep from per-group scores under a sparsity budget.

Given a score ``s_g`` for every group (higher = more worth keeping) and a target sparsity
``t`` (the fraction of the model's Conv/Linear weights to remove, the same scope as the
reported sparsity, see :mod:`learnprune.accounting`), keep the highest-scoring groups:

* ``scope="global"``: one ranking over every group of every set; drop the lowest groups
  until the removed weights reach ``t · (all Conv/Linear weights)``. For element groups this
  is exactly ``torch.nn.utils.prune.global_unstructured`` (``k = round(t · n)`` smallest
  scores by ``torch.topk``).
* ``scope="layer"``: every group set loses the fraction ``t`` of its own weights.
* ``n:m`` sets keep the ``n`` best of every ``m`` consecutive weights of an input row,
  whatever ``t``.

Structured sets always keep at least one group, so no layer is cut off entirely.
Coupled sets overlap (a conv's columns belong to the previous layer's channels, its rows
to its own), so removed weights are counted on the resulting masks, not by adding up group
sizes: the number of groups to drop is found by bisection on the real count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, GroupSet, scatter


def keep_top_n_of_m(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep mask (flat) with the ``n`` highest scores of every ``m`` consecutive groups (the
    ``n:m`` groups of a layer run along its input rows, whose length ``m`` divides)."""
    blocks = scores.reshape(-1, m)
    best = blocks.topk(n, dim=-1).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, best, True)
    return keep.reshape(-1)


def select(
    plan: GroupPlan,
    scores: Mapping[str, Tensor],
    target: float,
    total_weights: int,
    scope: str = "global",
) -> dict[str, Tensor]:
    """Keep masks ``{set name: bool (G,)}`` that reach sparsity ``target``.

    Args:
        plan: the method's group sets.
        scores: a score per group for every set (higher = keep).
        target: fraction of all Conv/Linear weights to remove.
        total_weights: number of all Conv/Linear weights of the model (the scope of
            ``target``).
        scope: ``"global"`` or ``"layer"``.
    """
    keep: dict[str, Tensor] = {}
    ranked: list[GroupSet] = []
    for group_set in plan.sets:
        if group_set.n_of_m is not None:
            n, m = group_set.n_of_m
            keep[group_set.name] = keep_top_n_of_m(scores[group_set.name], n, m)
        else:
            ranked.append(group_set)
    if not ranked:
        return keep
    if scope == "layer":
        for group_set in ranked:
            own = int(group_set.sizes().sum())
            keep.update(_select_global([group_set], scores, round(target * own)))
        return keep
    keep.update(_select_global(ranked, scores, round(target * total_weights)))
    return keep


def _select_global(
    sets: list[GroupSet], scores: Mapping[str, Tensor], budget: int
) -> dict[str, Tensor]:
    """Drop the lowest-scoring groups of ``sets`` until ``budget`` weights are removed."""
    if all(s.kind == "element" for s in sets):
        return _select_elements(sets, scores, budget)
    flat_scores = []
    for group_set in sets:
        set_scores = scores[group_set.name].detach().float().cpu().clone()
        if group_set.kind != "element" and group_set.num_groups > 0:
            set_scores[set_scores.argmax()] = float("inf")  # never cut a layer off entirely
        flat_scores.append(set_scores)
    order = torch.cat(flat_scores).argsort(stable=True)
    candidates = int(torch.isfinite(torch.cat(flat_scores)).sum())
    offsets = torch.tensor([0] + [s.num_groups for s in sets]).cumsum(0)

    def masks_for(dropped: int) -> dict[str, Tensor]:
        keep_flat = torch.ones(int(offsets[-1]), dtype=torch.bool)
        keep_flat[order[:dropped]] = False
        return {s.name: keep_flat[offsets[i] : offsets[i + 1]] for i, s in enumerate(sets)}

    _check_budget(budget, removed_weights(sets, masks_for(candidates)))
    low, high = 0, candidates  # smallest number of dropped groups reaching the budget
    while low < high:
        middle = (low + high) // 2
        if removed_weights(sets, masks_for(middle)) >= budget:
            high = middle
        else:
            low = middle + 1
    return masks_for(low)


def _select_elements(
    sets: list[GroupSet], scores: Mapping[str, Tensor], budget: int
) -> dict[str, Tensor]:
    """Element groups: the ``budget`` smallest scores overall, as torch's global pruning."""
    flat = torch.cat([scores[s.name].detach().reshape(-1) for s in sets])
    _check_budget(budget, flat.numel())
    keep_flat = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if budget > 0:
        keep_flat[torch.topk(flat, budget, largest=False).indices] = False
    out, start = {}, 0
    for group_set in sets:
        out[group_set.name] = keep_flat[start : start + group_set.num_groups]
        start += group_set.num_groups
    return out


def check_target(plan: GroupPlan, target: float, total_weights: int, scope: str = "global") -> None:
    """Raise :class:`ConfigError` now if ``target`` cannot be reached by ``plan``'s groups.

    Call it when a method is built, so an impossible target fails before any training.
    """
    ones = {s.name: torch.ones(s.num_groups) for s in plan.sets}
    select(plan, ones, target, total_weights, scope)


def _check_budget(budget: int, removable: int) -> None:
    if budget > removable:
        raise ConfigError(
            f"the target sparsity needs {budget:,} weights removed but only {removable:,} can "
            "be (excluded layers, and one group in each structured layer, stay); lower the "
            "target or exclude fewer layers"
        )


def removed_weights(sets: list[GroupSet], keep: Mapping[str, Tensor]) -> int:
    """How many Conv/Linear weights the keep masks of ``sets`` zero, overlaps counted once."""
    tensor_keep: dict[str, Tensor] = {}
    for group_set in sets:
        values = keep[group_set.name]
        for piece in group_set.slices:
            if not piece.counts_toward_sparsity:
                continue
            mask = scatter(values, piece).expand(piece.shape).to(torch.bool)
            previous = tensor_keep.get(piece.param)
            tensor_keep[piece.param] = mask if previous is None else previous & mask
    return sum(int((~mask).sum()) for mask in tensor_keep.values())
