"""Groups: the sets of parameter slices that a method keeps or drops together.

Every method in learnprune decides *per group*. A :class:`GroupSet` holds ``G`` groups
over one or more parameter tensors; each tensor is cut into the groups by a
:class:`TensorSlices` (which axis carries the groups and which group each position
belongs to). Two operations connect the per-group world to the tensor world:

* ``gather``: reduce a tensor-shaped quantity (``w²``, ``|w|``, a gradient ...) to one
  number per group, ``r_g = Σ_{i ∈ g} x_i``, summed over all member tensors;
* ``scatter``: broadcast one value per group back onto a tensor, ``x_i = v_{g(i)}``.

Group kinds (``build_groups(model, kind)``):

==============  ==============================================================
``element``     one group per weight (unstructured)
``out_channel`` one group per output unit / filter: weight row ``W[o]`` and ``b[o]``
``in_channel``  one group per input unit / input map: weight column ``W[:, i]``; for a
                grouped or depthwise conv, the weights of every filter reading input
                map ``i`` (its column within that filter's conv group)
``l0_units``    the hard-concrete L0 reference's gates: ``in_channel`` for Linear
                layers (input neurons, the first layer's pixels included),
                ``out_channel`` for convs (feature maps); LeNet-5-Caffe's kept
                architecture ``20-25-45-462`` counts these groups
``n:m``         one group per weight, selected so that ``n`` of every ``m``
                consecutive weights of an input row are kept (e.g. ``"2:4"``)
``coupled``     one group per channel of a Torch-Pruning dependency group: every
                slice tied to that channel (the producing filters, their biases, the
                BatchNorm entries, the consumers' input slices, every layer joined
                by a residual add or a concat) lives or dies together
``heads``       one group per attention head of a transformer block: the head's rows
                of Q, K, V (weights, biases) and its columns of the output projection
                (:mod:`learnprune.transformer_groups`)
``mlp_neurons`` one group per hidden unit of a transformer block's feed-forward net:
                its ``intermediate``/``fc1`` row and bias, its ``output``/``fc2`` column
(both)          ``"heads+mlp_neurons"``: both kinds (``"neuron"`` alone is an alias of
                ``out_channel``)
custom          a list of :class:`GroupSet` built with :func:`custom_group_set`
==============  ==============================================================

Targets by default are the weights of every ``Conv1d/2d/3d`` and ``Linear``, and of
transformers' ``Conv1D`` (GPT-2), a Linear whose weight is stored transposed, ``(in, out)``:
its output units are *columns* (``out_channel`` masks ``W[:, o]`` and ``b[o]``), its inputs
rows (``in_channel`` masks ``W[i, :]``), and ``n:m`` keeps ``n`` of every ``m`` consecutive
inputs of an output unit (down a column) as for a Linear (:func:`weight_axes`);
``exclude`` removes layers by ``fnmatch`` pattern on the module or parameter name.

Tied weights, one tensor reached by two module paths (GPT-2's ``lm_head.weight`` *is*
``transformer.wte.weight``, :func:`tied_parameters`), are left out of every kind and listed
in :attr:`GroupPlan.skipped` as tied: a gate parametrizes one module's attribute, so
masking the tensor through one path would leave the other path reading it unmasked (soft
gates during training), zero the embedding rows once the zeros are stored, and untie the
two at ``finalize()``. Left dense, the tensor is counted once and is truthfully reported
as skipped on both paths (LLM pruning usually keeps the embedding and its tied head dense).
Structured kinds never cut the classifier's outputs (they are the classes). Modules with
trainable parameters that no kind covers (attention's ``in_proj_weight``, Embedding,
ConvTranspose, RNN/LSTM, raw ``nn.Parameter`` s) stay dense and are listed in
:attr:`GroupPlan.skipped`; :func:`learnprune.inspection.prunability_report` shows the whole
picture, and a warning names them when they hold a significant share of the model
(:func:`learnprune.inspection.warn_uncovered`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import validation
from learnprune.errors import ConfigError, LearnpruneError, UnsupportedModelError, relayed

PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layer types whose ``weight`` is a default pruning target (and counts toward sparsity);
:func:`prunable_layer_types` adds transformers' ``Conv1D``."""

STRUCTURED_KINDS = ("out_channel", "in_channel", "coupled", "l0_units")
KINDS = ("element", "out_channel", "in_channel", "n:m", "coupled", "l0_units")
_N_OF_M = re.compile(r"^(\d+):(\d+)$")


def transposed_linear_types() -> tuple[type[nn.Module], ...]:
    """Layers computing ``y = x·W + b`` with ``W`` stored ``(in, out)``: transformers'
    ``Conv1D`` (GPT-2, GPT, Conv1D-based heads), once transformers is loaded (a model holding
    one has loaded it, so learnprune never imports transformers itself)."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    return (conv1d,) if isinstance(conv1d, type) else ()


def prunable_layer_types() -> tuple[type[nn.Module], ...]:
    """:data:`PRUNABLE_LAYERS` and the transposed Linears (:func:`transposed_linear_types`)."""
    return PRUNABLE_LAYERS + transposed_linear_types()


def is_prunable_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a Conv/Linear layer (a transposed Linear included)."""
    return isinstance(module, prunable_layer_types())


def is_linear_layer(module: object) -> bool:
    """Whether ``module`` multiplies the last axis of its input: ``nn.Linear`` or ``Conv1D``."""
    return isinstance(module, (nn.Linear, *transposed_linear_types()))


def weight_axes(module: nn.Module) -> tuple[int, int]:
    """``(output axis, input axis)`` of the layer's weight: ``(1, 0)`` for a transposed
    Linear (``Conv1D``, weight ``(in, out)``), ``(0, 1)`` for Linear and convs."""
    return (1, 0) if isinstance(module, transposed_linear_types()) else (0, 1)


def layer_features(module: nn.Module) -> tuple[int, int]:
    """``(outputs, inputs)`` of a Conv/Linear layer: features of a Linear or ``Conv1D``,
    channels of a conv."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, transposed_linear_types()):
        return module.nf, module.nx
    return module.out_channels, module.in_channels


def tied_parameters(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{name: the other names of the same tensor}`` for every parameter that two module
    paths reach (tied weights: GPT-2's ``lm_head.weight`` *is* ``transformer.wte.weight``).

    ``model.named_parameters()`` names each such tensor once, by its first path; here
    every path is listed.
    """
    paths: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        paths.setdefault(id(param), []).append(name)
    return {
        name: tuple(other for other in names if other != name)
        for names in paths.values()
        if len(names) > 1
        for name in names
    }


@dataclass(frozen=True)
class TensorSlices:
    """How one parameter tensor is cut into the groups of a :class:`GroupSet`.

    Attributes:
        module: qualified name of the module that owns the tensor (``""`` for the root).
        attr: the tensor's attribute name on that module (``"weight"``, ``"bias"``).
        shape: the tensor's shape.
        dim: the axis that carries the groups (``0`` output units, ``1`` inputs), or
            ``None`` for element-wise groups (group ``g`` = element ``g`` of the
            flattened tensor) and for custom groups and a grouped conv's input channels
            (``index`` has the tensor's shape).
        index: group id of every position along ``dim`` (``None``: position ``k`` is
            group ``k``), or for custom groups a tensor of the full shape; ids lie in
            ``[-1, G)``, ``-1`` meaning "in no group of this set, never masked by it".
        role: ``"out"`` where the slice produces the channel (filters, biases, norm
            entries), ``"in"`` where it consumes it (the next layer's input slice).
    """

    module: str
    attr: str
    shape: tuple[int, ...]
    dim: int | None = None
    index: Tensor | None = None
    role: str = "out"

    @property
    def param(self) -> str:
        """The tensor's name as ``model.named_parameters()`` gives it before masking."""
        return f"{self.module}.{self.attr}" if self.module else self.attr

    @property
    def counts_toward_sparsity(self) -> bool:
        """Whether this tensor is a Conv/Linear weight (see :mod:`learnprune.accounting`)."""
        return self.attr == "weight" and len(self.shape) >= 2


def scatter(values: Tensor, piece: TensorSlices) -> Tensor:
    """Broadcast per-group ``values`` (shape ``(G,)``) onto ``piece``'s tensor.

    Returns a tensor that broadcasts against the parameter: ``x_i = v_{g(i)}``. Positions
    that belong to no group of the set get ``1`` (kept).
    """
    index = None if piece.index is None else piece.index.to(values.device)
    return scatter_values(values, piece.dim, index, piece.shape)


def scatter_values(
    values: Tensor, dim: int | None, index: Tensor | None, shape: Sequence[int]
) -> Tensor:
    """:func:`scatter` on its parts (``index`` already on ``values``' device)."""
    if index is None:
        per_position = values
    else:
        picked = values[index.clamp(min=0)]
        per_position = torch.where(index >= 0, picked, torch.ones_like(picked))
    if dim is None:
        return per_position.view(tuple(shape))
    view = [1] * len(shape)
    view[dim] = -1
    return per_position.view(view)


def gather(tensor: Tensor, piece: TensorSlices, num_groups: int) -> Tensor:
    """Sum a tensor-shaped quantity over each group: ``r_g = Σ_{i ∈ g} x_i``, shape ``(G,)``."""
    if piece.dim is None:
        per_position = tensor.reshape(-1)
    else:  # sum over every other axis, without copying the tensor into a new layout
        others = [d for d in range(tensor.dim()) if d != piece.dim]
        per_position = tensor.sum(dim=others) if others else tensor
    if piece.index is None:
        return per_position
    ids = piece.index.reshape(-1).to(tensor.device)
    inside = ids >= 0
    out = torch.zeros(num_groups, dtype=tensor.dtype, device=tensor.device)
    return out.index_add_(0, ids[inside], per_position[inside])


@dataclass
class GroupSet:
    """``num_groups`` groups over the tensor slices in ``slices``.

    Attributes:
        name: a readable id, e.g. ``"fc1.weight"`` or ``"coupled:layer1.0.conv1"``.
        kind: one of :data:`KINDS` or ``"custom"``.
        num_groups: ``G``.
        slices: how each member tensor is cut into the groups.
        n_of_m: for ``n:m`` sets, ``(n, m)``.
    """

    name: str
    kind: str
    num_groups: int
    slices: tuple[TensorSlices, ...]
    n_of_m: tuple[int, int] | None = None

    def gather(self, tensors: Mapping[str, Tensor], *, weights_only: bool = False) -> Tensor:
        """``r_g = Σ_members Σ_{i ∈ g} x_i`` for tensors keyed by parameter name.

        With ``weights_only`` only Conv/Linear weights contribute (not biases or norm
        entries). Members missing from ``tensors`` contribute nothing.
        """
        total: Tensor | None = None
        for piece in self.slices:
            if piece.param not in tensors or (weights_only and not piece.counts_toward_sparsity):
                continue
            part = gather(tensors[piece.param], piece, self.num_groups)
            total = part if total is None else total + part
        if total is None:
            return torch.zeros(self.num_groups)
        return total

    def sizes(self, *, weights_only: bool = True) -> Tensor:
        """Number of tensor elements in each group (Conv/Linear weights only by default)."""
        ones = {piece.param: torch.ones(piece.shape) for piece in self.slices}
        return self.gather(ones, weights_only=weights_only)

    @property
    def params(self) -> list[str]:
        """Names of the member tensors."""
        return [piece.param for piece in self.slices]


@dataclass
class GroupPlan:
    """What a method prunes: its group sets, and what it left out and why."""

    sets: list[GroupSet]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> list[str]:
        """Every tensor that some group set masks, in model order of first appearance."""
        seen: dict[str, None] = {}
        for group_set in self.sets:
            for name in group_set.params:
                seen.setdefault(name, None)
        return list(seen)

    def describe(self) -> str:
        """A few lines for the log: what is pruned, what was skipped."""
        kinds = sorted({s.kind for s in self.sets})
        lines = [
            f"groups: {', '.join(kinds)}; {len(self.sets)} group sets, "
            f"{sum(s.num_groups for s in self.sets):,} groups over {len(self.params)} tensors"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def custom_group_set(name: str, model: nn.Module, index_by_param: Mapping[str, Tensor]) -> GroupSet:
    """A group set a user defines: for each parameter, a tensor of its shape with group ids.

    Ids run over ``[0, G)`` (``G`` = largest id + 1), shared across the listed tensors;
    ``-1`` leaves a position out of every group.

    Example: two 2x2 blocks of a 4x2 Linear weight as two groups::

        custom_group_set("blocks", model, {"fc.weight": torch.tensor([[0, 0], [0, 0],
                                                                      [1, 1], [1, 1]])})
    """
    params = dict(model.named_parameters())
    pieces = []
    num_groups = 0
    for param_name, index in index_by_param.items():
        if param_name not in params:
            raise ConfigError(f"custom groups: model has no parameter {param_name!r}")
        index = torch.as_tensor(index, dtype=torch.long)
        if tuple(index.shape) != tuple(params[param_name].shape):
            raise ConfigError(
                f"custom groups: index for {param_name} has shape {tuple(index.shape)}, "
                f"the parameter has {tuple(params[param_name].shape)}"
            )
        if index.numel() and int(index.min()) < -1:
            raise ConfigError(f"custom groups: ids for {param_name} must be >= -1")
        num_groups = max(num_groups, int(index.max()) + 1 if index.numel() else 0)
        module, _, attr = param_name.rpartition(".")
        pieces.append(TensorSlices(module, attr, tuple(index.shape), None, index))
    if num_groups == 0:
        raise ConfigError(f"custom groups {name!r}: no group ids >= 0")
    return GroupSet(name, "custom", num_groups, tuple(pieces))


def parse_kind(kind: str) -> tuple[str, tuple[int, int] | None]:
    """Normalise a group kind; ``"2:4"`` and ``"n:m"`` style strings give ``("n:m", (2, 4))``."""
    key = kind.strip().lower().replace("-", "_")
    aliases = {
        "unstructured": "element",
        "channel": "out_channel",
        "filter": "out_channel",
        "neuron": "out_channel",
        "input": "in_channel",
        "units": "l0_units",
    }
    key = aliases.get(key, key)
    matched = _N_OF_M.match(key)
    if matched:
        n, m = int(matched.group(1)), int(matched.group(2))
        if not 0 < n < m:
            raise ConfigError(f"group kind {kind!r}: need 0 < n < m in 'n:m'")
        return "n:m", (n, m)
    if key not in KINDS or key == "n:m":
        raise ConfigError(
            f"unknown group kind {kind!r}; choose one of element, out_channel, in_channel, "
            "coupled, l0_units, or 'n:m' such as '2:4'"
        )
    return key, None


def _names(model: nn.Module) -> list[str]:
    """Every module and parameter name of ``model`` (what ``exclude`` patterns can match)."""
    modules = [name for name, _ in model.named_modules(remove_duplicate=False)]
    return modules + [name for name, _ in model.named_parameters(remove_duplicate=False)]


def _matches(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def prunable_layers(
    model: nn.Module, exclude: Sequence[str] = ()
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Conv/Linear layers whose weights are targets, and the skipped ones with a reason."""
    chosen: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    tied = tied_parameters(model)
    for name, module in model.named_modules():
        if not is_prunable_layer(module) or "parametrizations" in name.split("."):
            continue
        if _matches(exclude, name, f"{name}.weight"):
            skipped[f"{name}.weight"] = "excluded by pattern"
            continue
        if f"{name}.weight" in tied:
            skipped[f"{name}.weight"] = tied_reason(f"{name}.weight", tied)
            continue
        chosen[name] = module
    return chosen, skipped


def tied_reason(name: str, tied: Mapping[str, Sequence[str]]) -> str:
    """Why a tied tensor stays dense (see the module docstring)."""
    return (
        f"tied to {', '.join(tied[name])} (the same tensor): left dense, since masking it "
        "through one module would leave the other unmasked and untie them"
    )


def output_layer(
    model: nn.Module, input_shape: Sequence[int] | None = None, example_inputs: Any = None
) -> str | None:
    """Name of the layer that produces the model's outputs (the classifier).

    With ``example_inputs`` or an ``input_shape`` it is the last Conv/Linear executed in a
    forward pass (:func:`run_example`); without either, the last Conv/Linear registered.
    """
    types = prunable_layer_types()
    layers = [n for n, m in model.named_modules() if isinstance(m, types)]
    if not layers:
        return None
    if input_shape is None and example_inputs is None:
        return layers[-1]
    order: list[str] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, types)
    ]
    try:
        with torch.no_grad(), evaluation_mode(model):
            run_example(model, input_shape, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return order[-1] if order else layers[-1]


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block (a probing forward pass must not update
    BatchNorm statistics), every module's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def example_input(model: nn.Module, input_shape: Sequence[int]) -> Tensor:
    """One random example of ``input_shape`` on the model's device."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return torch.randn(1, *input_shape, device=device)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple or list, else
    ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def first_example(inputs: Any) -> Any:
    """The batch cut to its first example (every tensor with a batch axis sliced ``[:1]``)."""
    if isinstance(inputs, Tensor):
        return inputs[:1] if inputs.dim() else inputs
    if isinstance(inputs, Mapping):
        return {key: first_example(value) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(first_example(value) for value in inputs)
    return inputs


def describe_inputs(inputs: Any) -> str:
    """Shapes and dtypes of a forward pass's inputs, for messages: ``(2, 7) int64``."""
    if isinstance(inputs, Tensor):
        return f"{tuple(inputs.shape)} {str(inputs.dtype).removeprefix('torch.')}"
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def run_example(
    model: nn.Module, input_shape: Sequence[int] | None = None, example_inputs: Any = None
) -> Any:
    """The model's outputs on ``example_inputs`` (:func:`call_model`: the user's real
    tensors, integer token ids kept) or, without them, on one random example of
    ``input_shape``.

    Raises:
        UnsupportedModelError: the model fails on them (a wrong ``input_shape``), in one
            line naming the inputs and the model's own message.
    """
    if example_inputs is None:
        if input_shape is None:
            raise ConfigError("running the model needs input_shape=(C, H, W) or example_inputs=")
        inputs, given = example_input(model, input_shape), f"input_shape {tuple(input_shape)}"
        hint = "give the shape of one example, without the batch axis, or example_inputs="
    else:
        inputs, given = example_inputs, f"example_inputs {describe_inputs(example_inputs)}"
        hint = "give inputs the model's forward takes"
    try:
        return call_model(model, inputs)
    except LearnpruneError:
        raise
    except Exception as err:  # a user's model fails in its own way on a wrong input
        raise UnsupportedModelError(
            f"the model does not run on {given} ({relayed(err)}); {hint}"
        ) from err


def model_input_shape(
    model: nn.Module, input_shape: Sequence[int] | None
) -> tuple[int, ...] | None:
    """``input_shape`` if given, else the model's own ``input_shape`` attribute, if any."""
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


def build_groups(
    model: nn.Module,
    kind: str | Sequence[GroupSet] = "element",
    *,
    exclude: Sequence[str] = (),
    input_shape: Sequence[int] | None = None,
    allow_empty: bool = False,
    example_inputs: Any = None,
) -> GroupPlan:
    """The group sets of ``kind`` over the model's Conv/Linear layers.

    Args:
        model: any ``nn.Module``.
        kind: a group kind (see the module docstring) or a list of custom group sets.
        exclude: ``fnmatch`` patterns on layer or parameter names to leave dense.
        input_shape: one example's shape (C, H, W); needed for ``coupled`` groups and used
            to find the classifier; defaults to ``model.input_shape`` where it exists.
        allow_empty: return a plan without sets instead of raising (for inspection).
        example_inputs: what to run the model on instead of a random example of
            ``input_shape`` (a tensor, a tuple of positional or a dict of keyword
            arguments; token ids stay integers), to trace ``coupled`` groups and find the
            classifier.

    Modules with trainable parameters that no kind covers go into ``plan.skipped``, with a
    warning when they hold a significant share (:func:`learnprune.inspection.warn_uncovered`).

    Raises:
        ConfigError: unknown kind, or nothing left to prune.
        UnsupportedModelError: the dependency graph cannot be built for ``coupled``.
    """
    exclude = validation.patterns("exclude", exclude)
    validation.warn_unmatched("exclude", exclude, _names(model))
    shape = model_input_shape(model, input_shape)
    if not isinstance(kind, str):
        plan = GroupPlan(list(kind) if isinstance(kind, (list, tuple)) else [])
        if not plan.sets or not all(isinstance(s, GroupSet) for s in plan.sets):
            raise ConfigError(
                f"groups must be a kind name or a non-empty list of GroupSet, got {kind!r:.60}"
            )
        return plan
    # transformer kinds (heads, mlp_neurons): learnprune.transformer_groups
    from learnprune.transformer_groups import parse_transformer_kind, transformer_group_sets

    transformer_parts = parse_transformer_kind(kind)
    kind_name, n_of_m = (kind, None) if transformer_parts else parse_kind(kind)
    if kind_name == "coupled":
        _refuse_transposed_linears(model)
    layers, skipped = prunable_layers(model, exclude)
    structured = kind_name in STRUCTURED_KINDS
    classifier = output_layer(model, shape, example_inputs) if structured else None
    if transformer_parts:
        sets, more_skipped = transformer_group_sets(model, transformer_parts, exclude)
        skipped.update(more_skipped)
    elif kind_name == "coupled":
        from learnprune.coupling import coupled_group_sets

        if shape is None and example_inputs is None:
            raise ConfigError(
                "coupled groups trace the model with one example: pass input_shape=(C, H, W) "
                "or example_inputs="
            )
        inputs = example_inputs if example_inputs is not None else example_input(model, shape)
        sets, more_skipped = coupled_group_sets(model, layers, classifier, inputs)
        skipped.update(more_skipped)
    else:
        sets = []
        for name, module in layers.items():
            group_set, reason = _layer_group_set(name, module, kind_name, n_of_m, classifier)
            if group_set is None:
                skipped[f"{name}.weight"] = reason
            else:
                sets.append(group_set)
    if not sets and not allow_empty:
        raise ConfigError(
            "nothing to prune: no Conv/Linear weight is left "
            + (f"(exclude={list(exclude)})" if exclude else "in this model")
            + (f"; skipped: {skipped}" if skipped else "")
        )
    from learnprune.inspection import warn_uncovered

    plan = GroupPlan(sets, skipped)
    warn_uncovered(model, plan, exclude)
    return plan


def first_transposed_linear(model: nn.Module) -> str | None:
    """The name of the first transposed Linear (``Conv1D``) in ``model``, if any."""
    transposed = transposed_linear_types()
    return next((n for n, m in model.named_modules() if isinstance(m, transposed)), None)


def _refuse_transposed_linears(model: nn.Module) -> None:
    """``coupled`` groups come from Torch-Pruning, whose graph does not know ``Conv1D``."""
    holder = first_transposed_linear(model)
    if holder is not None:
        raise UnsupportedModelError(
            f"coupled groups: Torch-Pruning's dependency graph does not know transformers' "
            f"Conv1D ({holder}, weight stored transposed); use groups='heads', "
            "'mlp_neurons' or 'heads+mlp_neurons' (or element, out_channel, in_channel)"
        )


def _layer_group_set(
    name: str,
    module: nn.Module,
    kind: str,
    n_of_m: tuple[int, int] | None,
    classifier: str | None,
) -> tuple[GroupSet | None, str]:
    weight = module.weight
    shape = tuple(weight.shape)
    out_axis, in_axis = weight_axes(module)
    weight_piece = TensorSlices(name, "weight", shape)
    label = f"{name}.weight"
    if kind == "l0_units":
        kind = "in_channel" if is_linear_layer(module) else "out_channel"
    if kind == "element":
        return GroupSet(label, kind, weight.numel(), (weight_piece,)), ""
    if kind == "n:m":
        assert n_of_m is not None
        row = weight.numel() // shape[out_axis]
        if row % n_of_m[1]:
            return None, f"input row of {row} weights is not a multiple of m={n_of_m[1]}"
        if out_axis:  # Conv1D: element g is entry g of the (out, in) transpose, W[i, o] ↦ o·I + i
            index = torch.arange(weight.numel()).view(shape[1], shape[0]).t().contiguous()
            weight_piece = TensorSlices(name, "weight", shape, None, index)
        return GroupSet(label, kind, weight.numel(), (weight_piece,), n_of_m), ""
    if kind == "out_channel":
        if name == classifier:
            return None, "classifier outputs (the classes) are never pruned"
        pieces = [TensorSlices(name, "weight", shape, out_axis)]
        if getattr(module, "bias", None) is not None:
            pieces.append(TensorSlices(name, "bias", tuple(module.bias.shape), 0))
        return GroupSet(label, kind, shape[out_axis], tuple(pieces)), ""
    # in_channel
    conv_groups = getattr(module, "groups", 1)
    if conv_groups > 1:  # column j of a grouped conv is input j of *each* group: index them
        index = grouped_input_index(shape, conv_groups)
        piece = TensorSlices(name, "weight", shape, None, index, "in")
        return GroupSet(label, kind, shape[1] * conv_groups, (piece,)), ""
    return GroupSet(
        label, kind, shape[in_axis], (TensorSlices(name, "weight", shape, in_axis, None, "in"),)
    ), ""


def grouped_input_index(shape: Sequence[int], conv_groups: int) -> Tensor:
    """Input channel of every weight of a grouped conv (weight shape ``(O, I/g, k...)``).

    Filter ``o`` belongs to conv group ``o // (O/g)`` and reads input channels
    ``[group · I/g, (group + 1) · I/g)``, so weight ``[o, j, ...]`` reads input channel
    ``(o // (O/g)) · I/g + j``. A depthwise conv (``g = I``) gives input ``c`` the filters of
    group ``c``.
    """
    out_channels, inputs_per_group = shape[0], shape[1]
    conv_group = torch.arange(out_channels) // (out_channels // conv_groups)
    channel = conv_group[:, None] * inputs_per_group + torch.arange(inputs_per_group)[None, :]
    tail = (1,) * (len(shape) - 2)
    return channel.view(out_channels, inputs_per_group, *tail).expand(tuple(shape)).contiguous()


def param_counts(model: nn.Module, names: Iterable[str]) -> dict[str, int]:
    """Number of elements of each named parameter."""
    params = dict(model.named_parameters())
    return {name: params[name].numel() for name in names}


def require_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with a clear error."""
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise UnsupportedModelError(f"model has no submodule {name!r}") from err
