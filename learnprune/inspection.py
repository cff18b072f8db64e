"""Prunability report: what a group kind makes prunable in a model, what it skips, and why.

Any ``nn.Module`` can be handed to a method, and most hold more than Conv/Linear layers:
attention, embeddings, normalisation, recurrent layers, raw ``nn.Parameter`` s, layers that
the forward pass never calls. :func:`prunability_report` builds the group plan of a kind
(:func:`learnprune.groups.build_groups`) and gives one row per module that owns trainable
parameters::

    report = learnprune.prunability_report(model, "coupled", input_shape=(3, 32, 32))
    print(report.table())
    report.row("attn").reason   # "attention's q/k/v projection (in_proj_weight) is ..."

Each row is **pruned** (which tensors the groups mask, the kind, how many groups),
**skipped** with the reason (excluded by pattern, the classifier's outputs under structured
kinds, a layer type no kind covers, a coupled group that ties in such a layer), or, when an
``input_shape`` lets the report run one example, **unused** ("not used in forward": no
parameter of the module takes part in the output).

What the kinds do with layers beyond plain Conv/Linear
------------------------------------------------------

* ``nn.MultiheadAttention``: its ``out_proj`` is a ``Linear`` and is pruned like one; the
  fused ``in_proj_weight`` (q, k, v) is a raw parameter that no kind covers (skipped). A
  ``coupled`` group that reaches the attention is skipped as a whole.
* Depthwise convs (``groups == in_channels``): ``out_channel`` masks filters; ``in_channel``
  gives input map ``c`` its own filters; ``coupled`` ties each filter to its input channel.
* Grouped convs (``1 < groups < in_channels``): ``out_channel`` masks filters;
  ``in_channel`` groups hold, for input map ``i``, the column of each filter that reads it
  (:func:`learnprune.groups.grouped_input_index`); ``coupled`` skips the dependency groups
  they are in (learnprune cannot mask them as one group yet).
* Concatenations: ``coupled`` groups follow ``torch.cat`` (Torch-Pruning's graph maps each
  branch's channels onto their slice of the consumer's inputs).
* transformers' ``Conv1D`` (GPT-2; weight ``(in, out)``) is a Linear layer to every kind
  except ``coupled`` (Torch-Pruning does not know it: use ``heads`` / ``mlp_neurons``).
* Tied tensors (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) stay dense under
  every kind (:mod:`learnprune.groups` says why) and are counted once, on the row of their
  first module; each of their rows names the other.
* Norm layers stay dense, except under ``coupled``, where BatchNorm entries follow their
  channel; Embedding, ConvTranspose, RNN/LSTM/GRU and raw parameters are never covered.

The same rule keeps :func:`~learnprune.groups.build_groups` from ignoring anything silently:
:func:`warn_uncovered` lists uncovered modules in ``plan.skipped`` (so every method's
``describe()`` shows them) and warns when they hold a significant share of the model.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from learnprune.checkpoint import json_text
from learnprune.errors import ConfigError, LearnpruneError, UnsupportedModelError, relayed
from learnprune.groups import (
    STRUCTURED_KINDS,
    GroupPlan,
    GroupSet,
    _matches,
    build_groups,
    evaluation_mode,
    is_prunable_layer,
    model_input_shape,
    output_layer,
    run_example,
    tied_parameters,
)

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Normalisation layers: per-channel scales, small, left dense without a warning."""

WARN_SHARE = 0.01
"""Uncovered parameters (see :func:`warn_uncovered`) from this share of the model on warn."""

ROOT = "(model)"
"""How the report names the model itself (the owner of raw parameters set on the root)."""

PRUNED, SKIPPED, UNUSED = "pruned", "skipped", "unused"


class UncoveredParametersWarning(UserWarning):
    """Trainable parameters that no group covers make up a significant share of the model."""


@dataclass(frozen=True)
class ModuleRow:
    """One module that owns trainable parameters.

    Attributes:
        name: qualified module name (:data:`ROOT` for the model itself).
        type: the module's class name.
        params: number of trainable parameters it owns (not its children's).
        status: ``"pruned"``, ``"skipped"`` or ``"unused"`` (not used in forward).
        tensors: its tensors that groups mask; ``"weight (inputs)"`` where only the input
            slices are (the consumer side of a coupled group).
        kind: the group kinds of the sets that mask it (``""`` if none).
        groups: number of groups of those sets.
        group_sets: names of those sets.
        reason: why it is skipped or unused, or a note on how it is pruned.
    """

    name: str
    type: str
    params: int
    status: str
    tensors: tuple[str, ...] = ()
    kind: str = ""
    groups: int = 0
    group_sets: tuple[str, ...] = ()
    reason: str = ""


@dataclass
class PrunabilityReport:
    """What ``kind`` prunes in a model; see the module docstring."""

    model: str
    kind: str
    input_shape: tuple[int, ...] | None
    rows: list[ModuleRow]
    skipped_groups: dict[str, str] = field(default_factory=dict)
    """Coupled dependency groups left whole, ``{"coupled:<root>": reason}``."""
    notes: list[str] = field(default_factory=list)
    traced: bool = False
    """Whether one example ran through the model (so unused modules are detected)."""

    def row(self, name: str) -> ModuleRow:
        """The row of module ``name`` (:data:`ROOT` for the model's own parameters)."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row for module {name!r}; rows: {[r.name for r in self.rows]}")

    def by_status(self, status: str) -> list[ModuleRow]:
        """Rows with ``status`` (``"pruned"``, ``"skipped"``, ``"unused"``)."""
        return [row for row in self.rows if row.status == status]

    @property
    def params(self) -> int:
        """Trainable parameters of the model."""
        return sum(row.params for row in self.rows)

    def share(self, status: str) -> float:
        """Fraction of the trainable parameters in modules with ``status``."""
        held = sum(row.params for row in self.by_status(status))
        return held / self.params if self.params else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready)."""
        return {
            "model": self.model,
            "kind": self.kind,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "params": self.params,
            "rows": [asdict(row) for row in self.rows],
            "skipped_groups": dict(self.skipped_groups),
            "notes": list(self.notes),
            "traced": self.traced,
        }

    def table(self) -> str:
        """The rows as a text table, then a summary."""
        given = f"input {self.input_shape}" if self.input_shape else "the example inputs"
        traced = f"traced with {given}" if self.traced else "not traced"
        lines = [f"prunability of {self.model} with groups={self.kind} ({traced})"]
        width = max([len("module"), *(len(row.name) for row in self.rows)])
        type_width = max([len("type"), *(len(row.type) for row in self.rows)])
        header = (
            f"{'module':<{width}}  {'type':<{type_width}} {'params':>10}  {'status':<8} "
            f"{'kind':<12} {'groups':>8}  tensors / reason"
        )
        lines += [header, "-" * len(header)]
        for row in self.rows:
            detail = ", ".join(row.tensors)
            if row.reason:
                detail = f"{detail}; {row.reason}" if detail else row.reason
            groups = f"{row.groups:,}" if row.groups else ""
            lines.append(
                f"{row.name:<{width}}  {row.type:<{type_width}} {row.params:>10,}  "
                f"{row.status:<8} {row.kind:<12} {groups:>8}  {detail}"
            )
        lines.append("-" * len(header))
        for status in (PRUNED, SKIPPED, UNUSED):
            rows = self.by_status(status)
            if rows:
                lines.append(
                    f"{status}: {len(rows)} modules, {sum(r.params for r in rows):,} of "
                    f"{self.params:,} trainable params ({self.share(status):.1%})"
                )
        lines += [f"skipped group {name}: {why}" for name, why in self.skipped_groups.items()]
        lines += self.notes
        return "\n".join(lines)


def prunability_report(
    model: nn.Module,
    groups: str | Sequence[GroupSet] = "element",
    *,
    input_shape: Sequence[int] | None = None,
    exclude: Sequence[str] = (),
    example_inputs: Any = None,
) -> PrunabilityReport:
    """One row per module with trainable parameters: pruned by ``groups``, or why not.

    Args:
        model: any ``nn.Module`` without learnprune gates (report before building a method).
        groups: a group kind (``"element"``, ``"out_channel"``, ``"coupled"``, ...) or
            custom group sets, as a method takes them.
        input_shape: one example's shape, e.g. ``(3, 32, 32)`` (default
            ``model.input_shape``); with it the report runs one example to find the
            classifier, the coupled groups and the modules not used in forward.
        exclude: ``fnmatch`` patterns on module or parameter names, as a method takes them.
        example_inputs: the model's real inputs instead of a random example of
            ``input_shape`` (a tensor, a tuple of positional or a dict of keyword
            arguments; token ids stay integers), for a model that a float tensor cannot
            run (an embedding's token ids).

    Raises:
        ConfigError: the model carries gates, an unknown kind, or ``coupled`` without an
            input shape.
        UnsupportedModelError: the model does not run on one example of ``input_shape``
            or on ``example_inputs`` (one line naming them and the model's own message).
    """
    from learnprune.masking import gated_tensors

    if any(True for _ in gated_tensors(model)):
        raise ConfigError(
            "prunability_report: the model carries learnprune gates; report on it before "
            "building a method, or after method.finalize()"
        )
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    shape = model_input_shape(model, input_shape)
    kind = groups if isinstance(groups, str) else "custom"
    notes: list[str] = []
    used: set[str] | None = None
    if shape is not None or example_inputs is not None:  # a model failing on them: refused
        used = _used_parameters(model, shape, example_inputs)
    else:
        notes.append("pass input_shape to run one example: finds the classifier and unused modules")
    try:
        with warnings.catch_warnings():  # the report itself says what is uncovered
            warnings.simplefilter("ignore", UncoveredParametersWarning)
            plan = build_groups(
                model,
                groups,
                exclude=exclude,
                input_shape=shape,
                allow_empty=True,
                example_inputs=example_inputs,
            )
    except UnsupportedModelError as err:  # coupled groups on a graph Torch-Pruning can't trace
        plan = GroupPlan([], {})
        notes.append(f"no {kind} groups: {err}")
    modules = dict(model.named_modules())
    tied = tied_parameters(model)
    rows = [
        _tied_note(
            _row(name, module, plan, exclude, used, kind, modules.get(name.rpartition(".")[0])),
            module,
            tied,
            set(tied) - set(dict(model.named_parameters())),
        )
        for name, module in _owners(model)
    ]
    if used is None and kind in STRUCTURED_KINDS:
        notes.append(
            f"without input_shape the classifier is taken to be the last layer registered, "
            f"{output_layer(model)}"
        )
    skipped_groups = {k: v for k, v in plan.skipped.items() if k.startswith("coupled:")}
    return PrunabilityReport(
        type(model).__name__, kind, shape, rows, skipped_groups, notes, traced=used is not None
    )


def warn_uncovered(model: nn.Module, plan: GroupPlan, exclude: Sequence[str] = ()) -> None:
    """Record in ``plan.skipped`` every module whose trainable parameters no group covers,
    and warn once (:class:`UncoveredParametersWarning`) when they hold a significant share.

    Rule: a module is *uncovered* when it owns trainable parameters, is not a Conv/Linear
    layer (those are targets or skipped with their own reason) nor a normalisation layer
    (small per-channel scales, dense by design), is not excluded by pattern, and no group
    set masks any of its tensors. The warning comes when the uncovered parameters make up
    at least :data:`WARN_SHARE` (1 %) of the model's trainable parameters; below that they
    are only listed in ``plan.skipped`` (and so in every method's ``describe()``).
    """
    masked = set(plan.params)
    uncovered = []
    for name, module in _owners(model):
        attrs = _own_trainable(module)
        prefix = "" if name == ROOT else f"{name}."
        if (
            is_prunable_layer(module)
            or isinstance(module, NORM_LAYERS)
            or _excluded(exclude, name, prefix, attrs)
            or any(f"{prefix}{attr}" in masked for attr in attrs)
        ):
            continue
        count = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        plan.skipped.setdefault(name, f"{type(module).__name__}, {count:,} params: {_why(module)}")
        uncovered.append((name, type(module).__name__, count))
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    held = sum(count for *_, count in uncovered)
    if total and held / total >= WARN_SHARE:
        listed = ", ".join(f"{name} ({kind}, {count:,})" for name, kind, count in uncovered[:6])
        more = f" and {len(uncovered) - 6} more" if len(uncovered) > 6 else ""
        warnings.warn(
            f"learnprune: {held / total:.1%} of the trainable parameters are in modules no "
            f"group covers; they stay dense: {listed}{more}. See "
            "learnprune.prunability_report(model) or `learnprune inspect`",
            UncoveredParametersWarning,
            stacklevel=3,
        )


def load_model(spec: str) -> nn.Module:
    """A user's model from ``"path.to.module:factory"``: ``factory`` is a class, a function
    taking no arguments, or an ``nn.Module`` instance, importable from Python (the current
    directory is searched too)."""
    module_path, colon, attr_path = spec.partition(":")
    if not colon or not module_path or not attr_path:
        raise ConfigError(f"--module takes path.to.module:factory, got {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        found: Any = importlib.import_module(module_path)
    except Exception as err:  # the user's module may fail in any way while importing
        raise ConfigError(
            f"--module {spec}: cannot import {module_path} ({_one_line(err)})"
        ) from err
    for part in attr_path.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"--module {spec}: {module_path} has no attribute {attr_path!r}")
        found = getattr(found, part)
    if not isinstance(found, nn.Module):
        if not callable(found):
            raise ConfigError(f"--module {spec}: {attr_path} is not a class or function")
        try:
            found = found()
        except Exception as err:  # the user's factory may fail in any way
            raise ConfigError(f"--module {spec}: {attr_path}() failed ({_one_line(err)})") from err
    if not isinstance(found, nn.Module):
        raise ConfigError(
            f"--module {spec}: {attr_path}() gave a {type(found).__name__}, not an nn.Module"
        )
    return found


def inspect_command(
    *,
    model: str | None,
    module: str | None,
    groups: str = "element",
    input_shape: str | None = None,
    exclude: Sequence[str] = (),
    as_json: bool = False,
) -> str:
    """The text ``learnprune inspect`` prints (the report's table, or its JSON)."""
    if (model is None) == (module is None):
        raise ConfigError("inspect takes one of --model NAME or --module path.to.module:factory")
    shape = _parse_shape(input_shape)
    if model is not None:
        from learnprune.models import build_model

        network = build_model(model, in_channels=shape[0] if shape else None)
    else:
        assert module is not None
        network = load_model(module)
    try:
        report = prunability_report(network, groups, input_shape=shape, exclude=exclude)
    except LearnpruneError:
        raise
    except Exception as err:  # a user's model can fail in Torch-Pruning or its own code
        raise UnsupportedModelError(f"inspect: {_one_line(err)}") from err
    return json_text(report.as_dict(), indent=2) if as_json else report.table()


# ------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------


def _owners(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own trainable parameters (not the gates' parametrization internals)."""
    return [
        (name or ROOT, module)
        for name, module in model.named_modules()
        if "parametrizations" not in name.split(".") and _own_trainable(module)
    ]


def _own_trainable(module: nn.Module) -> list[str]:
    return [attr for attr, p in module.named_parameters(recurse=False) if p.requires_grad]


def _excluded(exclude: Sequence[str], name: str, prefix: str, attrs: Sequence[str]) -> bool:
    return bool(exclude) and _matches(exclude, name, *(f"{prefix}{attr}" for attr in attrs))


def _row(
    name: str,
    module: nn.Module,
    plan: GroupPlan,
    exclude: Sequence[str],
    used: set[str] | None,
    kind: str,
    parent: nn.Module | None,
) -> ModuleRow:
    attrs = _own_trainable(module)
    prefix = "" if name == ROOT else f"{name}."
    count = sum(getattr(module, attr).numel() for attr in attrs)
    base = {"name": name, "type": type(module).__name__, "params": count}
    sets = [s for s in plan.sets if any(p.module == prefix.rstrip(".") for p in s.slices)]
    own_pieces = [p for s in sets for p in s.slices if p.module == prefix.rstrip(".")]
    unused = used is not None and not any(f"{prefix}{attr}" in used for attr in attrs)
    if own_pieces:
        tensors = []
        for attr in attrs:
            roles = {p.role for p in own_pieces if p.attr == attr}
            if roles:
                tensors.append(attr if "out" in roles else f"{attr} (inputs)")
        notes = [plan.skipped[f"{prefix}weight"]] if f"{prefix}weight" in plan.skipped else []
        notes += _conv_note(module, kind)
        status, reason = PRUNED, "; ".join(notes)
        if unused:
            status = UNUSED
            reason = "not used in forward: its groups are masked but change nothing" + (
                f"; {reason}" if reason else ""
            )
        return ModuleRow(
            **base,
            status=status,
            tensors=tuple(tensors),
            kind=", ".join(sorted({s.kind for s in sets})),
            groups=sum(s.num_groups for s in sets),
            group_sets=tuple(s.name for s in sets),
            reason=reason,
        )
    reason = _skip_reason(name, module, plan, exclude, prefix, attrs, kind, parent)
    if unused:
        return ModuleRow(**base, status=UNUSED, reason=f"not used in forward; {reason}")
    return ModuleRow(**base, status=SKIPPED, reason=reason)


def _tied_note(
    row: ModuleRow, module: nn.Module, tied: dict[str, tuple[str, ...]], aliases: set[str]
) -> ModuleRow:
    """A tied tensor (:func:`learnprune.groups.tied_parameters`) counts on the row of its
    first module only (``aliases``: its other names), and each of its rows says so."""
    prefix = "" if row.name == ROOT else f"{row.name}."
    shared = [f"{prefix}{a}" for a in _own_trainable(module) if f"{prefix}{a}" in tied]
    if not shared:
        return row
    uncounted = sum(getattr(module, n.removeprefix(prefix)).numel() for n in shared if n in aliases)
    note = "; ".join(
        f"{name} is {', '.join(tied[name])}, counted {'there' if name in aliases else 'here'}"
        for name in shared
    )
    reason = f"{row.reason}; {note}" if row.reason else note
    return replace(row, params=row.params - uncounted, reason=reason)


def _skip_reason(
    name: str,
    module: nn.Module,
    plan: GroupPlan,
    exclude: Sequence[str],
    prefix: str,
    attrs: Sequence[str],
    kind: str,
    parent: nn.Module | None,
) -> str:
    if _excluded(exclude, name, prefix, attrs):
        return "excluded by pattern"
    if isinstance(parent, nn.MultiheadAttention) and kind == "coupled":
        return (
            f"inside {name.rpartition('.')[0]} (MultiheadAttention), which Torch-Pruning "
            "traces as one layer: no coupled group of its own"
        )
    if f"{prefix}weight" in plan.skipped:
        return plan.skipped[f"{prefix}weight"]
    if is_prunable_layer(module):
        return f"{kind} groups do not cover it"
    return _why(module)


def _why(module: nn.Module) -> str:
    """Why no group kind covers a module of this type."""
    if isinstance(module, nn.MultiheadAttention):
        fused = "in_proj_weight" if module.in_proj_weight is not None else "q/k/v_proj_weight"
        return (
            f"attention's q/k/v projection ({fused}) is a raw parameter no group kind covers "
            "(its out_proj is a Linear, reported on its own row)"
        )
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "an embedding table (a lookup, not a matmul): no group kind covers it"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed conv (weight laid out in, out, k...): no group kind covers it yet"
    if isinstance(module, nn.RNNBase):
        return "recurrent layer (stacked gate weights per time step): no group kind covers it"
    if isinstance(module, NORM_LAYERS):
        return (
            "normalisation layer: stays dense (BatchNorm entries follow their channel "
            "under groups='coupled')"
        )
    if type(module).__module__.startswith("torch.nn"):
        return f"no group kind covers {type(module).__name__}"
    return "raw nn.Parameter of a custom module: no group kind covers it"


def _conv_note(module: nn.Module, kind: str) -> list[str]:
    """How a grouped or depthwise conv's groups are laid out."""
    conv_groups = getattr(module, "groups", 1)
    if not is_prunable_layer(module) or conv_groups == 1:
        return []
    what = "depthwise" if conv_groups == module.in_channels else f"grouped (groups={conv_groups})"
    if kind == "in_channel":
        return [f"{what} conv: input map i's group is the filter columns that read it"]
    if kind == "coupled":
        return [f"{what} conv: its filters follow their input channel's coupled group"]
    return [f"{what} conv"]


def _used_parameters(
    model: nn.Module, shape: Sequence[int] | None, example_inputs: Any = None
) -> set[str]:
    """Names of the parameters one forward pass (:func:`~learnprune.groups.run_example`)
    uses: those the outputs reach
    through autograd, and those of every module whose ``forward`` ran (a parameter read
    only on a non-differentiable path still counts)."""
    from learnprune.compact import output_tensors  # Torch-Pruning only when a shape is given

    names = {p: n for n, p in model.named_parameters()}
    ran: set[str] = set()
    hooks = [
        module.register_forward_pre_hook(lambda _m, _i, name=name: ran.add(name))
        for name, module in model.named_modules()
    ]
    try:
        with evaluation_mode(model), torch.enable_grad():
            outputs = output_tensors(run_example(model, shape, example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
    used = {
        f"{module}.{attr}" if module else attr
        for module in ran
        for attr, _p in model.get_submodule(module).named_parameters(recurse=False)
    }
    params = [p for p in names if p.requires_grad]
    differentiable = [out for out in outputs if out.requires_grad]
    if differentiable and params:
        total = sum(out.float().sum() for out in differentiable)
        grads = torch.autograd.grad(total, params, allow_unused=True)
        used.update(names[p] for p, grad in zip(params, grads, strict=True) if grad is not None)
    return used


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in re.split(r"[,x]", text.strip()))
    except ValueError:
        raise ConfigError(f"--input-shape takes C,H,W like 3,32,32, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape takes positive whole numbers, got {text!r}")
    return shape


def _one_line(err: BaseException) -> str:
    return relayed(err)
