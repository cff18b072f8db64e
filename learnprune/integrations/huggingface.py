"""Hugging Face ``transformers.Trainer`` integration: :class:`LearnpruneCallback`.

Learn which attention heads and MLP neurons of a BERT/ViT to keep, with the Trainer's own
loop (needs the ``hf`` extra: ``transformers`` and ``accelerate``)::

    from learnprune.integrations.huggingface import LearnpruneCallback

    callback = LearnpruneCallback.build(model, "diffprune", groups="heads+mlp_neurons",
                                        lam=0.5, gate_lr=0.05)      # gates attached now
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback],
                      optimizers=callback.optimizers(args))
    trainer.train()                       # finalized at the end: a plain model again
    small = learnprune.compact(model, callback.final_masks, example_inputs=batch).model

The method is built on the model *before* ``Trainer(...)``: the gates are parameters of
the model, so they must exist when the Trainer creates its optimizer. What the callback
does, event by event:

* **loss** — a forward hook on the model adds ``method.regularizer()`` to ``outputs.loss``
  (or to a tuple output's leading scalar) on every forward pass in training mode with
  gradients on, so the Trainer backpropagates ``task loss + regularizer``. With gradient
  accumulation it is added to every micro-batch's loss, so it is scaled exactly as the
  Trainer scales that loss. Limitation: when the Trainer computes the loss itself from the
  logits (``label_smoothing_factor > 0``, ``compute_loss_func``, a ``compute_loss``
  override that ignores ``outputs.loss``) the regularizer is lost; the callback refuses
  label smoothing up front and raises :class:`~learnprune.errors.ConfigError` after the
  first optimizer step if the hook never added anything.
* **optimizer** — :meth:`optimizers` gives the optimizer to pass as ``optimizers=``: AdamW
  like the Trainer's default (``args.learning_rate``, betas, eps; weight decay on tensors
  of 2+ dimensions), plus the method's own groups (no weight decay, their own rate such as
  ``gate_lr`` / ``mask_lr``, which the Trainer's schedule then scales like every group);
  for DessiLBI the learnprune DessiLBI optimizer. Without ``optimizers=`` the Trainer's
  own AdamW trains the gates with the weights; the callback then checks at train begin
  that no weight decay reaches them and that no method rate is asked for, and raises
  ``ConfigError`` otherwise (weight decay on gate variables closes gates by itself).
* **after_step** — ``method.after_step()`` once per optimizer step (``on_step_end``, which
  the Trainer calls once per update, not per micro-batch).
* **logs** — every log gets ``sparsity`` (all Conv/Linear weights), ``lam`` (methods with a
  λ), ``regularizer`` (last value), ``kept/<kind>`` and ``groups/<kind>`` (kept and total
  groups, e.g. ``kept/heads``; under grouped-query attention a heads group is one
  key/value head with its query heads), and with ``log_layers`` ``sparsity/<layer>`` per gated
  tensor; they are also written into ``state.log_history``. Reporting integrations
  (TensorBoard, W&B) run before user callbacks and do not see them.
* **DessiLBI** — when the Trainer's optimizer is a learnprune :class:`DessiLBI`, its path is
  recorded at every epoch end (``record_epoch``).
* **train end** — ``method.masks()`` is kept in :attr:`final_masks`, then
  ``method.finalize()`` bakes the masks into the weights (unless ``finalize=False``).

* **before each optimizer step** — ``method.before_optimizer_step()`` (``on_pre_optimizer_step``),
  once the step's gradients are complete (accumulated over ``gradient_accumulation_steps``,
  averaged over DDP ranks): SCL normalises its mask gradient and adds λ there, once per step.

* **checkpoints** — the Trainer saves the gates with the model's ``state_dict()``; the
  callback adds the method's own state (step count, λ controller, DessiLBI's path) as
  ``learnprune_method.pt`` in each ``checkpoint-<step>`` folder (rank 0), and reads it back
  when ``trainer.train(resume_from_checkpoint=...)`` resumes, so schedules and budgets go on
  where they stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from learnprune import checkpoint
from learnprune.errors import CheckpointError, ConfigError
from learnprune.groups import GroupSet
from learnprune.masking import kept_fractions
from learnprune.methods import METHODS, DessiLBI, DessiLBIMethod, PruningMethod
from learnprune.methods.budgeted import BudgetedMethod

__all__ = ["LearnpruneCallback"]

_UNSTRUCTURED = ("element", "n:m")


METHOD_STATE = "learnprune_method.pt"
"""The method's state in a Trainer checkpoint folder (``checkpoint.save_checkpoint`` format)."""


def _checkpoint_folder(args: Any, step: int) -> Path:
    """The Trainer's checkpoint folder of ``step`` (``<output_dir>/checkpoint-<step>``)."""
    return Path(args.output_dir) / f"checkpoint-{step}"


class LearnpruneCallback(TrainerCallback):
    """Drives a learnprune method from ``transformers.Trainer`` (see the module docstring).

    Args:
        method: a :class:`~learnprune.methods.PruningMethod` already built on the model
            that the Trainer trains (or use :meth:`build`).
        finalize: call ``method.finalize()`` at train end.
        log_layers: log ``sparsity/<layer>`` for every gated tensor.

    Attributes:
        steps: ``after_step()`` calls so far (optimizer steps).
        regularizer_calls: forward passes whose loss received the regularizer.
        final_masks: ``method.masks()`` read just before finalizing (for
            :func:`learnprune.compact`), ``None`` before train end.
        support_history: DessiLBI support sizes recorded at each epoch end.
    """

    def __init__(
        self, method: PruningMethod, *, finalize: bool = True, log_layers: bool = True
    ) -> None:
        if not isinstance(method, PruningMethod):
            raise ConfigError(
                f"LearnpruneCallback takes a built PruningMethod, got {type(method).__name__}; "
                "use LearnpruneCallback.build(model, 'scl', groups=...) to build one"
            )
        self.method = method
        self.finalize_at_end = finalize
        self.log_layers = log_layers
        self.steps = 0
        self.regularizer_calls = 0
        self.final_masks: dict[str, Tensor] | None = None
        self.support_history: list[dict[str, int]] = []
        self._last_regularizer: Tensor | None = None
        self._final_sparsity: float | None = None
        self._dessilbi: DessiLBI | None = None
        self._hook = method.model.register_forward_hook(self._add_regularizer)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        method: str,
        groups: str | Sequence[GroupSet] = "heads+mlp_neurons",
        *,
        finalize: bool = True,
        log_layers: bool = True,
        **options: Any,
    ) -> LearnpruneCallback:
        """Build ``METHODS[method](model, groups=groups, **options)`` and its callback.

        ``method`` is a learnprune method name (``scl``, ``diffprune``, ``hardconcrete``,
        ``gmp``, ``magnitude``, ``dessilbi``, ...); ``options`` are its keyword arguments
        (``lam=``, ``target=``, ``gate_lr=``, GMP's ``end_step=`` ...). Methods without
        groups (``dessilbi``, ``dense``) take no ``groups``.
        """
        key = method.strip().lower()
        if key not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        method_cls = METHODS[key]
        if method_cls.has_masks:
            built = method_cls(model, groups=groups, **options)
        else:
            built = method_cls(model, **options)
        return cls(built, finalize=finalize, log_layers=log_layers)

    # --- the optimizer ------------------------------------------------------------------
    def optimizers(self, args: Any, *, momentum: float = 0.9) -> tuple[torch.optim.Optimizer, None]:
        """``(optimizer, None)`` to pass as ``Trainer(optimizers=...)`` (the Trainer then
        builds its learning-rate schedule over every group). ``momentum`` is DessiLBI's."""
        lr = float(args.learning_rate)
        weight_decay = float(getattr(args, "weight_decay", 0.0))
        if isinstance(self.method, DessiLBIMethod):
            config = SimpleNamespace(
                optimizer="sgd",
                lr=lr,
                momentum=momentum,
                nesterov=False,
                weight_decay=weight_decay,
            )
            return self.method.build_optimizer(config), None
        weights = [p for p in self.method.model_parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [
            {"params": [p for p in weights if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in weights if p.dim() < 2], "weight_decay": 0.0},
            *self.method.external_optimizer_groups(),
        ]
        optimizer = torch.optim.AdamW(
            [group for group in groups if group["params"]],
            lr=lr,
            betas=(getattr(args, "adam_beta1", 0.9), getattr(args, "adam_beta2", 0.999)),
            eps=getattr(args, "adam_epsilon", 1e-8),
        )
        return optimizer, None

    # --- the loss -----------------------------------------------------------------------
    def _add_regularizer(self, module: nn.Module, _args: object, output: Any) -> Any:
        if not (module.training and torch.is_grad_enabled() and _has_regularizer(self.method)):
            return None
        loss = _loss_of(output)
        if loss is None:
            return None
        regularizer = self.method.regularizer()
        self.regularizer_calls += 1
        self._last_regularizer = regularizer.detach()
        return _with_loss(output, loss + regularizer)

    # --- Trainer events -----------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restore_method_state(args, state)
        optimizer = _unwrap(kwargs.get("optimizer"))
        if isinstance(optimizer, DessiLBI):
            self._dessilbi = optimizer
            if isinstance(self.method, DessiLBIMethod):
                self.method.optimizer = optimizer
        elif isinstance(self.method, DessiLBIMethod):
            raise ConfigError(
                "dessilbi is its own optimizer: pass optimizers=callback.optimizers(args) "
                "to the Trainer"
            )
        elif optimizer is not None:
            self._check_optimizer(optimizer)
        if _has_regularizer(self.method) and getattr(args, "label_smoothing_factor", 0.0):
            raise ConfigError(
                "with label_smoothing_factor the Trainer computes the loss from the logits and "
                "the learnprune regularizer would be lost; set label_smoothing_factor=0"
            )

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The Trainer's own optimizer must hold the method's tensors without weight decay,
        and at the rate the method asks for, if any."""
        wanted = {
            id(p): group.get("base_lr")
            for group in self.method.optimizer_groups()
            for p in group["params"]
        }
        remedy = "pass optimizers=callback.optimizers(args) to the Trainer"
        found: set[int] = set()
        for group in optimizer.param_groups:
            for param in group["params"]:
                if id(param) not in wanted:
                    continue
                found.add(id(param))
                if group.get("weight_decay", 0.0):
                    raise ConfigError(
                        f"the Trainer's optimizer applies weight decay "
                        f"{group['weight_decay']:g} to the {self.method.name} gates; {remedy}"
                    )
                own_lr = wanted[id(param)]
                lr = group.get("initial_lr", group.get("lr"))
                if own_lr is not None and not math.isclose(float(lr), float(own_lr)):
                    raise ConfigError(
                        f"{self.method.name} asks for its own learning rate {own_lr:g}, the "
                        f"Trainer's optimizer uses {lr:g}; {remedy}"
                    )
        if len(found) < len(wanted):
            raise ConfigError(
                f"the Trainer's optimizer does not train the method's gates; {remedy}"
            )

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.method.before_optimizer_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.method.after_step()
        self.steps += 1
        if self.steps == 1 and self.regularizer_calls == 0 and _has_regularizer(self.method):
            raise ConfigError(
                "the learnprune regularizer never reached the loss: the model returned no "
                "loss (no labels in the batch?) or the Trainer computed the loss itself "
                "(compute_loss_func, label smoothing, a compute_loss override)"
            )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if getattr(state, "is_world_process_zero", True):
            folder = _checkpoint_folder(args, state.global_step)
            if folder.is_dir():
                checkpoint.save_checkpoint(
                    folder / METHOD_STATE, {"method_state": self.method.state_dict()}
                )

    def _restore_method_state(self, args: Any, state: Any) -> None:
        """On a resumed train (the Trainer has restored ``global_step`` and the weights),
        the method's state saved with that checkpoint."""
        step = int(getattr(state, "global_step", 0) or 0)
        if step == 0 or self.method.step == step:
            return
        path = _checkpoint_folder(args, step) / METHOD_STATE
        if not path.is_file():
            raise CheckpointError(
                f"resuming at step {step} but {path} is missing: the method's schedule "
                "and budget cannot be restored"
            )
        self.method.load_state_dict(checkpoint.load_checkpoint(path)["method_state"])
        self.steps = step

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._dessilbi is not None:
            epoch = round(state.epoch) if state.epoch is not None else None
            self.support_history.append(self._dessilbi.record_epoch(epoch))

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None:
            return
        entries = self.metrics()
        logs.update(entries)
        history = getattr(state, "log_history", None)
        if history and history[-1].get("step") == getattr(state, "global_step", None):
            history[-1].update(entries)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.finalize_at_end and self._final_sparsity is None:
            self.final_masks = {k: v.clone() for k, v in self.method.masks().items()}
            self._final_sparsity = self.method.sparsity()
            self.method.finalize()
            self.close()

    def close(self) -> None:
        """Remove the loss hook (done at train end when finalizing)."""
        self._hook.remove()

    # --- what is logged -------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The entries :meth:`on_log` adds (see the module docstring)."""
        if self._final_sparsity is not None:
            return {"sparsity": self._final_sparsity}
        entries: dict[str, float] = {"sparsity": self.method.sparsity()}
        if isinstance(self.method, BudgetedMethod):
            entries["lam"] = float(self.method.current_lam)
        if self._last_regularizer is not None:
            entries["regularizer"] = float(self._last_regularizer)
        kept: dict[str, list[int]] = {}
        for group_set in self.method.plan.sets:
            gate = self.method.gates.get(group_set.name)
            if gate is None or group_set.kind in _UNSTRUCTURED:
                continue
            counts = kept.setdefault(group_set.kind, [0, 0])
            counts[0] += int(gate.keep().sum())
            counts[1] += group_set.num_groups
        for kind, (alive, total) in kept.items():
            entries[f"kept/{kind}"] = alive
            entries[f"groups/{kind}"] = total
        if self.log_layers:
            for name, kept in kept_fractions(self.method.masks()).items():
                entries[f"sparsity/{name.removesuffix('.weight')}"] = 1.0 - kept
        return entries


def _has_regularizer(method: PruningMethod) -> bool:
    """Whether the method overrides :meth:`PruningMethod.regularizer` (a zero one does not)."""
    return type(method).regularizer is not PruningMethod.regularizer


def _loss_of(output: Any) -> Tensor | None:
    """The loss in a model output: ``output["loss"]`` of a mapping (``ModelOutput``), or the
    leading 0-dim tensor of a tuple (``return_dict=False`` with labels)."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
        return loss if isinstance(loss, Tensor) else None
    if isinstance(output, (tuple, list)) and output:
        first = output[0]
        return first if isinstance(first, Tensor) and first.dim() == 0 else None
    return None


def _with_loss(output: Any, loss: Tensor) -> Any:
    if isinstance(output, Mapping):
        output["loss"] = loss  # a ModelOutput sets the attribute too
        return output
    return type(output)((loss, *output[1:]))


def _unwrap(optimizer: Any) -> Any:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` (itself an Optimizer)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer
