"""Gating tensors through ``torch.nn.utils.parametrize``.

A method attaches one :class:`GroupGate` per :class:`~learnprune.groups.GroupSet`. The gate
computes ``G`` values ``z_g`` (``0`` drops group ``g``; methods with soft gates may give
values in between), and every member tensor gets a :class:`GatedTensor` parametrization::

    W̃ = W ⊙ scatter(z)          (z_g broadcast onto the slices of group g)

so ``model(x)`` always runs the gated weights, gradients reach both ``W`` and the gate's
own parameters, ``model.state_dict()`` holds the gates' state next to ``W`` (keys
``<layer>.parametrizations.<tensor>.<k>.gate.*``), ``copy.deepcopy(model)`` copies the gates
along, and :func:`finalize` bakes ``W ⊙ scatter(z)`` into plain parameters and removes every
parametrization. A tensor in several group sets (a conv's rows in its own set, its columns
in the previous layer's coupled set) simply gets several parametrizations, applied in turn.

Keys of every mask dictionary are the parameter names of the *unmasked* model
(``fc1.weight``, not ``fc1.parametrizations.weight.original``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, GroupSet, TensorSlices, scatter_values, tied_parameters


class GroupGate(nn.Module):
    """The gate of one group set: ``forward()`` gives the gate values ``z`` (shape ``(G,)``).

    Subclasses hold the method's state for the set (a fixed keep mask, mask variables,
    gate logits) and define ``forward`` and ``keep``.
    """

    stores_zeros: bool = False
    """Whether the gate's zeros may be written into the weights (see :func:`store_zeros`)."""

    def __init__(self, group_set: GroupSet) -> None:
        super().__init__()
        self.group_set_name = group_set.name
        self.num_groups = group_set.num_groups

    def forward(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def keep(self) -> Tensor:
        """Which groups the forward pass keeps: ``z_g ≠ 0`` (bool, shape ``(G,)``)."""
        with torch.no_grad():
            return self.forward() != 0

    def gated(self, weight: Tensor, member: GatedTensor) -> Tensor:
        """``W ⊙ scatter(z)`` for one member tensor. Gates of one value per element (SCL's,
        DiffPrune's) override it with one fused autograd function that gives both
        gradients in a single node."""
        return weight * member.multiplier()


class FixedMask(GroupGate):
    """A keep mask set from outside (magnitude pruning, a lottery ticket): ``z_g ∈ {0, 1}``.

    The mask is held as 0/1 in the weights' floating dtype: multiplying a float tensor by
    a bool one promotes element by element and is about 30 times slower on CPU. Its zeros
    may be stored in the weights (:func:`store_zeros`), which lets training skip the
    product.
    """

    stores_zeros = True

    def __init__(self, group_set: GroupSet) -> None:
        super().__init__(group_set)
        self.register_buffer("keep_mask", torch.ones(group_set.num_groups))
        self.all_kept = True

    def forward(self) -> Tensor:
        return self.keep_mask

    def keep(self) -> Tensor:
        return self.keep_mask != 0

    def set(self, keep_mask: Tensor) -> None:
        """Replace the keep mask (bool or 0/1, shape ``(G,)``)."""
        self.keep_mask.copy_(keep_mask.reshape(-1).to(self.keep_mask.device, torch.bool))
        self.all_kept = bool(self.keep_mask.all())

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.all_kept = bool(self.keep_mask.all())


class GatedTensor(nn.Module):
    """Parametrization ``W ↦ W ⊙ scatter(z)`` for one member tensor of a group set.

    Fast path for fixed masks: once :func:`store_zeros` has written the mask's zeros into
    ``W`` it records ``W``'s version counter; while that counter is unchanged, ``W`` already
    equals ``W ⊙ scatter(z)`` and is returned as it is, saving the product (and its memory
    traffic) in every forward and backward pass. Any other change to ``W`` (an optimizer
    step, ``load_state_dict``, an in-place init) bumps the counter and the product is
    computed again, so the forward pass always sees exactly ``W ⊙ scatter(z)``.

    One gate serves every member tensor of its group set, but only the first member's
    parametrization registers it as a submodule (``owner``); the others hold a plain
    reference. So the gate's tensors appear once in ``state_dict()`` and ``parameters()``
    — serializers that refuse shared tensors (safetensors, the Hugging Face Trainer's
    checkpoints) save a gated model as it is — while ``.to()``, ``train()`` and ``eval()``
    reach the gate through its owner.
    """

    def __init__(self, gate: GroupGate, piece: TensorSlices, *, owner: bool = True) -> None:
        super().__init__()
        if owner:
            self.gate = gate
        else:
            self.__dict__["gate"] = gate  # not a submodule: its owner registers it
        self.dim = piece.dim
        self.shape = piece.shape
        self.role = piece.role
        self.register_buffer("index", piece.index, persistent=False)
        self.zeros_stored_at: int | None = None  # version of W when its zeros were stored

    def forward(self, weight: Tensor) -> Tensor:
        if self.zeros_stored_at is not None and weight._version == self.zeros_stored_at:
            return weight
        return self.gate.gated(weight, self)

    @property
    def elementwise(self) -> bool:
        """Whether the gate has one value per element of the tensor (element groups)."""
        return self.dim is None and self.index is None

    def multiplier(self) -> Tensor:
        """``scatter(z)``, broadcastable to the tensor."""
        return scatter_values(self.gate(), self.dim, self.index, self.shape)

    def keep_mask(self) -> Tensor:
        """The tensor-shaped keep mask this gate imposes (bool)."""
        keep = scatter_values(self.gate.keep(), self.dim, self.index, self.shape)
        return keep.expand(self.shape).to(torch.bool)


def attach(
    model: nn.Module, plan: GroupPlan, make_gate: Callable[[GroupSet], GroupGate]
) -> dict[str, GroupGate]:
    """Give every group set of ``plan`` a gate and parametrize its member tensors.

    Returns the gates keyed by group set name. Raises :class:`ConfigError` if the model
    already carries learnprune gates (``finalize()`` the earlier method first), or if a
    group set holds a tied tensor (one reached by two modules, see
    :func:`learnprune.groups.tied_parameters`): a parametrization gates one module's
    attribute, so the other module would read the tensor unmasked, and ``finalize()`` would
    untie them.
    """
    if any(True for _ in gated_tensors(model)):
        raise ConfigError(
            "this model already carries learnprune gates; call finalize() on the earlier "
            "method before attaching another"
        )
    tied = tied_parameters(model)
    for group_set in plan.sets:
        shared = next((name for name in group_set.params if name in tied), None)
        if shared is not None:
            raise ConfigError(
                f"group set {group_set.name} holds {shared}, which is tied to "
                f"{', '.join(tied[shared])} (the same tensor); a gate on one module would "
                "leave the other unmasked: leave it out of the groups"
            )
    gates: dict[str, GroupGate] = {}
    for group_set in plan.sets:
        gate = make_gate(group_set)
        gates[group_set.name] = gate
        for position, piece in enumerate(group_set.slices):
            module = model.get_submodule(piece.module)
            if not hasattr(module, "_learnprune_order"):
                module._learnprune_order = list(module._parameters)  # restored by finalize
            gated = GatedTensor(gate, piece, owner=position == 0)
            parametrize.register_parametrization(module, piece.attr, gated)
    return gates


def gated_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, list[GatedTensor]]]:
    """``(name, module, attribute, gates)`` for every tensor gated by learnprune."""
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, chain in module.parametrizations.items():
            gated = [p for p in chain if isinstance(p, GatedTensor)]
            if gated:
                name = f"{module_name}.{attr}" if module_name else attr
                yield name, module, attr, gated


ZeroTargets = list[tuple[Tensor, list["GatedTensor"]]]


def zero_targets(model: nn.Module) -> ZeroTargets:
    """The weights whose gates all store their zeros, with those gates (for
    :func:`store_zeros`; compute once, after the gates are attached)."""
    return [
        (raw_tensor(module, attr), gated)
        for _name, module, attr, gated in gated_tensors(model)
        if all(g.gate.stores_zeros for g in gated)
    ]


@torch.no_grad()
def store_zeros(targets: ZeroTargets, *, force: bool = False) -> None:
    """Write the zeros of fixed masks into the weights, ``W ← W ⊙ scatter(z)``, in place.

    Methods with fixed masks call it after every optimizer step: the product then costs
    one in-place multiply per step instead of one in each forward and backward pass. The
    gradient of a stored zero is not masked (it is overwritten by the next call), which
    changes nothing for per-element optimizers (SGD, Adam, weight decay) but counts
    towards a gradient-norm clip. Pass ``force=True`` after a mask changed.
    """
    for weight, gated in targets:
        if not force and all(g.zeros_stored_at == weight._version for g in gated):
            continue
        for g in gated:
            if not g.gate.all_kept:
                weight.mul_(g.multiplier())
        for g in gated:
            g.zeros_stored_at = weight._version


def read_masks(model: nn.Module) -> dict[str, Tensor]:
    """``{parameter name: bool keep mask of its shape}`` for every gated tensor."""
    masks = {}
    for name, _module, _attr, gated in gated_tensors(model):
        keep = gated[0].keep_mask()
        for more in gated[1:]:
            keep = keep & more.keep_mask()
        masks[name] = keep
    return masks


def kept_fractions(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """``{tensor name: fraction kept}`` of the Conv/Linear weights among ``masks`` (the
    tensors sparsity is counted over: weights of two or more dimensions)."""
    return {
        name: float(keep.float().mean())
        for name, keep in masks.items()
        if name.endswith("weight") and keep.dim() >= 2
    }


def raw_tensor(module: nn.Module, attr: str) -> Tensor:
    """The tensor under the gates (``W``), whether or not it is parametrized."""
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def finalize(model: nn.Module) -> nn.Module:
    """Bake ``W ⊙ scatter(z)`` into plain parameters and remove learnprune's parametrizations.

    The gates are put in eval mode first so stochastic gates give their deterministic value.
    Returns the same model object, now free of parametrizations added by learnprune.
    """
    for gated in {
        id(g.gate): g.gate for _n, _m, _a, chain in gated_tensors(model) for g in chain
    }.values():
        gated.eval()
    with torch.no_grad():
        for _name, module, attr, _gated in list(gated_tensors(model)):
            _own_class(module)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    for module in model.modules():
        order = module.__dict__.pop("_learnprune_order", None)
        if order is not None:  # the parameters' original order, so state_dict keys match
            rank = {name: i for i, name in enumerate(order)}
            items = sorted(module._parameters.items(), key=lambda kv: rank.get(kv[0], len(rank)))
            module._parameters = dict(items)
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its class before a parametrization is
    removed. ``copy.deepcopy`` of a parametrized module shares parametrize's generated class
    (``ParametrizedLinear``) between original and copy, and removal deletes the tensor's
    property from that class: finalizing one would break the other."""
    cls = module.__class__
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` for every model parameter as the forward pass sees it.

    Gated tensors give their gated value ``W ⊙ scatter(z)`` under their unmasked name; the
    gates' own parameters (mask variables, gate logits) are not model parameters and are
    left out. A tied tensor (two modules holding one parameter) is given once, under its
    first name, as ``model.named_parameters()`` does.
    """
    seen: set[int] = set()

    def first_time(tensor: Tensor | None) -> bool:
        if tensor is None:  # a parametrization with several originals: not shared by us
            return True
        if id(tensor) in seen:
            return False
        seen.add(id(tensor))
        return True

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, Tensor]]:
        # gated tensors first: for Conv/Linear/BatchNorm this restores (weight, bias) order
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                if first_time(getattr(module.parametrizations[attr], "original", None)):
                    yield prefix + attr, getattr(module, attr)
        for attr, param in module._parameters.items():
            if param is not None and first_time(param):
                yield prefix + attr, param
        for child_name, child in module._modules.items():
            if (
                child is None
                or isinstance(child, GroupGate)  # an activation gate held by its module
                or (child_name == "parametrizations" and parametrize.is_parametrized(module))
            ):
                continue
            yield from walk(child, f"{prefix}{child_name}.")

    yield from walk(model, "")


def model_weights(model: nn.Module, gate_params: list[Tensor]) -> list[nn.Parameter]:
    """The model's trainable tensors (raw ``W`` under the gates), minus the gates' own."""
    excluded = {id(p) for p in gate_params}
    return [p for p in model.parameters() if id(p) not in excluded]
