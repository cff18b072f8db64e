"""Lightning integration: :class:`LearnpruneCallback` lets ``Trainer.fit`` train a pruning
method.

::

    import lightning as L
    from learnprune import DessiLBI
    from learnprune.integrations.lightning import LearnpruneCallback, parameter_groups

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build_my_network()          # built here, not in setup/configure_model

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.model(x), y)   # the callback adds the regularizer

        def configure_optimizers(self):               # the gates are parameters by now
            return torch.optim.SGD(parameter_groups(self, weight_decay=5e-4), lr=0.1,
                                   momentum=0.9)

    prune = LearnpruneCallback("gmp", module="model", target=0.9, end_epoch=7)
    L.Trainer(max_epochs=10, callbacks=[prune]).fit(Classifier(), train_loader)
    prune.sparsity()                                 # 0.9; the masks are in the weights now

What the callback does in each of Lightning's hooks:

* ``setup("fit")`` (before ``configure_optimizers``): builds the method on the module, or
  on its submodule ``module``, from a method name and options (through
  :func:`~learnprune.methods.build_method`, with a :class:`TrainingContext` read from the
  trainer: ``max_epochs``, optimizer steps per epoch and in all, counting
  ``accumulate_grad_batches``, ``limit_train_batches`` and ``max_steps``; the input shape
  from ``input_shape=`` or the module's ``example_input_array``) or from a factory
  ``callable(model) -> PruningMethod``. The gates are then in ``self.parameters()``.
* automatic optimization: the module instance's ``training_step`` is wrapped so that the
  loss it returns (a tensor, or a dict with ``"loss"``) gets ``+ method.regularizer()``
  (logged as ``learnprune/regularizer``); ``teardown`` unwraps it.
* ``on_train_batch_end``: ``method.after_step()`` once for every optimizer step, i.e. only
  when ``trainer.global_step`` advanced (with ``accumulate_grad_batches > 1``, every k-th
  batch); logs ``learnprune/sparsity``.
* ``on_train_epoch_end``: logs ``learnprune/kept/<layer>`` and ``learnprune/sparsity/<layer>``
  of every gated Conv/Linear weight.
* checkpoints: the callback's ``state_dict`` holds the method's (its step count, gates,
  schedule state), so ``fit(ckpt_path=...)`` continues the method's schedule where it was.
* ``on_fit_end``: ``method.finalize()`` (masks baked into the weights, a plain module
  again) unless ``finalize=False``.

**Optimizer groups.** The method's own tensors (mask variables, gate logits) should not get
weight decay, and may carry their own learning rate: build the optimizer over
``parameter_groups(self, weight_decay=...)`` (or ``callback.parameter_groups(...)``), which
lists every trainable tensor of the module but the gates with ``weight_decay``, then the
method's groups (``weight_decay=0``; a method's own rate, e.g. SCL's ``mask_lr``, as the
group's ``lr``). ``torch.optim.SGD(self.parameters(), ...)`` works too, with decay on gates.

**Manual optimization** (``self.automatic_optimization = False``): nothing is wrapped; add
``regularizer(self)`` (or ``callback.regularizer()``) to the loss before
``self.manual_backward``. ``after_step()`` still follows ``trainer.global_step``, which
advances with every ``optimizer.step()``; with several optimizers stepped in one batch it is
called once for that batch.

**DessiLBI** is an optimizer: return ``DessiLBI.for_model(self, lr=..., kappa=..., nu=...)``
from ``configure_optimizers`` and give the callback no method (``LearnpruneCallback()``)
or ``"dessilbi"`` (the optimizer's options then govern). The callback finds the optimizer,
records its path after every train epoch (:meth:`~learnprune.DessiLBI.record_epoch`; kept in
the optimizer's state, so in checkpoints), logs ``learnprune/support`` (the size of
``supp(Γ)``), ``learnprune/support/<layer>`` and ``learnprune/sparsity`` (the weights outside
``supp(Γ)``), and finalizes to ``W* = W ⊙ 1[Γ ≠ 0]``.

Limits: the pruned network must exist when ``setup`` runs (built in ``__init__``, not in the
module's ``setup`` or ``configure_model``, which Lightning calls after the callbacks'
``setup``). Checkpoints hold the gated module (``...parametrizations.weight.original``):
load them into a module with a callback of the same method attached (``fit(ckpt_path=)``
does), or use ``finalize=False`` to keep testing from checkpoints after the fit.

Gradients: Lightning runs ``training_step`` and ``backward()`` inside ``optimizer.step``'s
closure, so the callback calls :meth:`~learnprune.PruningMethod.before_optimizer_step` in
``on_before_optimizer_step``, once the step's gradients are complete (accumulated over
``accumulate_grad_batches`` micro-batches, averaged over DDP ranks): SCL normalises its mask
gradient and adds λ there, once per optimizer step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # only the standalone package installed
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer
    except ImportError as err:
        raise ImportError(
            "learnprune.integrations.lightning needs Lightning: pip install 'learnprune[lightning]'"
        ) from err

from learnprune.accounting import count, prunable_modules
from learnprune.errors import ConfigError
from learnprune.masking import kept_fractions
from learnprune.methods import METHODS, build_method
from learnprune.methods.base import PruningMethod, TrainingContext
from learnprune.methods.dessilbi import DessiLBI, DessiLBIMethod

MethodFactory = Callable[[nn.Module], PruningMethod]


class LearnpruneCallback(Callback):
    """Attach a pruning method to a LightningModule and train it with ``Trainer.fit`` (see
    the module docstring for what happens in which hook).

    Args:
        method: a method name of :data:`~learnprune.METHODS` (``"gmp"``, ``"scl"``, ...) with
            its recipe ``options`` as keyword arguments (epochs rather than steps, as in a
            recipe), a factory ``callable(model) -> PruningMethod``, or ``None`` with a
            DessiLBI optimizer.
        module: the name of the submodule to prune (``"model"``: ``pl_module.model``);
            default the whole LightningModule.
        finalize: bake the masks into the weights at the end of the fit.
        input_shape: one example's shape (coupled groups, FLOPs budgets); default the
            module's ``example_input_array`` without its batch dimension.
        train_size: the number of training examples (hard-concrete's ``N``); default the
            length of the training data loader's data set.
        pretrained: the module starts trained (:class:`TrainingContext`, e.g. one-shot
            magnitude pruning then prunes at once).
        log_sparsity_every: log ``learnprune/sparsity`` every this many optimizer steps
            (``0``: never).
        **options: the method's recipe options (with a method name only).
    """

    def __init__(
        self,
        method: str | MethodFactory | None = None,
        *,
        module: str | None = None,
        finalize: bool = True,
        input_shape: Sequence[int] | None = None,
        train_size: int | None = None,
        pretrained: bool = False,
        log_sparsity_every: int = 1,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(method, str):
            if method.strip().lower() not in METHODS:
                raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        elif method is not None and not callable(method):
            raise ConfigError(
                f"method must be a name, a factory callable(model) or None, got {method!r}"
            )
        if options and not isinstance(method, str):
            raise ConfigError(
                f"options ({', '.join(options)}) go with a method name; a factory takes none"
            )
        if log_sparsity_every < 0:
            raise ConfigError(f"log_sparsity_every must be >= 0, got {log_sparsity_every}")
        self.method_spec = method
        self.options = dict(options)
        self.module_name = module
        self.finalize_at_end = finalize
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.train_size = train_size
        self.pretrained = pretrained
        self.log_sparsity_every = log_sparsity_every
        self.method: PruningMethod | None = None
        """The method, once ``setup`` has built it."""
        self.dessilbi: DessiLBI | None = None
        """The module's DessiLBI optimizer, found when training starts."""
        self.finalized = False
        self._module: LightningModule | None = None
        self._last_global_step = 0
        self._pending_state: Mapping[str, Any] | None = None
        self._original_training_step: tuple[bool, Any] | None = None
        self._dessilbi_weights = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module_name)

    # --- building ---------------------------------------------------------------------
    def target(self, pl_module: LightningModule) -> nn.Module:
        """The module the method prunes: ``pl_module`` or its submodule ``module``."""
        if self.module_name is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module_name)
        except AttributeError as err:
            raise ConfigError(
                f"the LightningModule has no submodule {self.module_name!r} when the "
                "callback's setup runs; build it in __init__"
            ) from err

    def training_context(self, trainer: Trainer, pl_module: LightningModule) -> TrainingContext:
        """The run as a method built from recipe options sees it: epochs, optimizer steps per
        epoch and in all (after ``accumulate_grad_batches``, ``limit_train_batches`` and
        ``max_steps``), the input shape, the training set's size."""
        total = trainer.estimated_stepping_batches  # loads the train data loader if needed
        if not math.isfinite(total) or total < 1:
            raise ConfigError(
                "cannot tell how many optimizer steps the fit takes (endless epochs or an "
                "iterable data set without max_steps); set max_steps or max_epochs"
            )
        total = int(total)
        batches = trainer.num_training_batches
        per_epoch = (
            math.ceil(batches / trainer.accumulate_grad_batches)
            if math.isfinite(batches)
            else total
        )
        per_epoch = max(per_epoch, 1)
        epochs = trainer.max_epochs
        if epochs is None or epochs < 1:
            epochs = math.ceil(total / per_epoch)
        return TrainingContext(
            epochs=epochs,
            steps_per_epoch=per_epoch,
            total_steps=total,
            input_shape=self.input_shape or _example_shape(pl_module),
            pretrained=self.pretrained,
            train_size=self.train_size or _dataset_size(trainer),
        )

    def _build(self, trainer: Trainer, pl_module: LightningModule) -> PruningMethod:
        target = self.target(pl_module)
        if isinstance(self.method_spec, str):
            context = self.training_context(trainer, pl_module)
            return build_method(self.method_spec, target, self.options, context)
        assert self.method_spec is not None
        method = self.method_spec(target)
        if not isinstance(method, PruningMethod):
            raise ConfigError(
                f"the method factory returned {type(method).__name__}, not a PruningMethod"
            )
        return method

    # --- Lightning hooks ----------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Build the method (first fit only) and wrap ``training_step``."""
        if stage != "fit":
            return
        if self.finalized:
            raise ConfigError(
                "this callback's method was finalized at the end of an earlier fit; "
                "use a new LearnpruneCallback (and module) for another"
            )
        if self._module is not None and self._module is not pl_module:
            raise ConfigError("a LearnpruneCallback prunes one LightningModule; make another")
        self._module = pl_module
        if self.method is None and self.method_spec is not None:
            self.method = self._build(trainer, pl_module)
            if self._pending_state is not None:
                self.method.load_state_dict(self._pending_state)
                self._pending_state = None
        if pl_module.automatic_optimization and self.method is not None:
            self._wrap_training_step(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Find a DessiLBI optimizer; start counting optimizer steps (restored on resume)."""
        self._last_global_step = trainer.global_step
        self.dessilbi = next((o for o in trainer.optimizers if isinstance(o, DessiLBI)), None)
        if isinstance(self.method, DessiLBIMethod):
            if self.dessilbi is None:
                raise ConfigError(
                    "dessilbi is its own optimizer: return DessiLBI.for_model(self, lr=...) "
                    "from configure_optimizers"
                )
            self.method.optimizer = self.dessilbi
        elif self.method is None:
            if self.dessilbi is None:
                raise ConfigError(
                    "LearnpruneCallback got no method and the module's optimizer is not "
                    "DessiLBI: give a method name or a factory"
                )
            target = self.target(pl_module)
            self._dessilbi_weights = sum(m.weight.numel() for _n, m in prunable_modules(target))

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        """The step's gradients are complete: the method may transform them (SCL)."""
        if self.method is not None:
            self.method.before_optimizer_step()

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """``after_step()`` when an optimizer step was taken; log the sparsity."""
        if trainer.global_step == self._last_global_step:
            return  # accumulating gradients, no step yet
        self._last_global_step = trainer.global_step
        if self.method is not None:
            self.method.after_step()
        every = self.log_sparsity_every
        if every and trainer.global_step % every == 0:
            pl_module.log(
                "learnprune/sparsity",
                self.sparsity(),
                on_step=True,
                on_epoch=False,
                rank_zero_only=True,  # the same on every rank: nothing to reduce
            )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record DessiLBI's path; log each layer's kept fraction and sparsity."""
        metrics: dict[str, float] = {}
        if self.dessilbi is not None:
            support = self.dessilbi.record_epoch(trainer.current_epoch + 1)
            metrics["learnprune/support"] = float(sum(support.values()))
            for name, size in support.items():
                metrics[f"learnprune/support/{_layer(name)}"] = float(size)
        for name, kept in kept_fractions(self.masks()).items():
            metrics[f"learnprune/kept/{_layer(name)}"] = kept
            metrics[f"learnprune/sparsity/{_layer(name)}"] = 1.0 - kept
        if metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Finalize, unless ``finalize=False``."""
        if self.finalize_at_end:
            self.finalize()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._unwrap_training_step()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._unwrap_training_step()

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The method's state (``None`` before it is built and after finalize)."""
        saved = self.method.state_dict() if self.method and not self.finalized else None
        return {"method": saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the method's state (kept until ``setup`` builds the method, if it has
        not yet)."""
        saved = state_dict.get("method")
        if saved is None:
            return
        if self.method is None:
            self._pending_state = saved
        else:
            self.method.load_state_dict(saved)

    # --- what a module may ask for --------------------------------------------------------
    def parameter_groups(self, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: every trainable tensor of the module but the method's
        own with ``weight_decay``, then the method's groups (no weight decay; a group's own
        rate, the method's ``base_lr``, as its ``lr``). Call in ``configure_optimizers``."""
        if self._module is None:
            raise ConfigError("parameter_groups() is for configure_optimizers, after setup")
        own = self.method.external_optimizer_groups() if self.method is not None else []
        own_ids = {id(p) for group in own for p in group["params"]}
        weights = [p for p in self._module.parameters() if p.requires_grad and id(p) not in own_ids]
        return [{"params": weights, "weight_decay": weight_decay}, *own]

    def regularizer(self) -> Tensor:
        """The method's regularizer (zero without a method): for manual optimization."""
        if self.method is None:
            device = self._module.device if self._module is not None else None
            return torch.zeros((), device=device)
        return self.method.regularizer()

    def masks(self) -> dict[str, Tensor]:
        """The keep masks: the method's, or ``1[Γ ≠ 0]`` of a DessiLBI optimizer."""
        if self.method is not None and not isinstance(self.method, DessiLBIMethod):
            return self.method.masks()
        if self.dessilbi is not None:
            return self.dessilbi.masks()
        return {}

    def sparsity(self) -> float:
        """The fraction of Conv/Linear weights removed (outside ``supp(Γ)`` for DessiLBI;
        after finalize, the zeros in the weights)."""
        if self.finalized and self._module is not None:
            return count(self.target(self._module)).sparsity
        if self.method is not None and not isinstance(self.method, DessiLBIMethod):
            return self.method.sparsity()
        if self.method is not None:
            return self.method.sparsity() if self.dessilbi is not None else 0.0
        if self.dessilbi is None or not self._dessilbi_weights:
            return 0.0
        zeros = sum(int((~keep).sum()) for keep in self.dessilbi.masks().values())
        return zeros / self._dessilbi_weights

    @torch.no_grad()
    def finalize(self) -> None:
        """Bake the masks into the weights (``W ⊙ 1[Γ ≠ 0]`` for DessiLBI); remove the gates.
        Called at the end of the fit unless ``finalize=False``."""
        if self.finalized:
            return
        if self.method is not None:
            self.method.finalize()
        elif self.dessilbi is not None:
            for _name, param in self.dessilbi.coupled():
                param.mul_(self.dessilbi.state[param]["gamma"] != 0)
        self.finalized = True

    # --- the wrapped training_step -----------------------------------------------------
    def _wrap_training_step(self, pl_module: LightningModule) -> None:
        current = pl_module.training_step
        if getattr(current, "learnprune_callback", None) is self:
            return  # already wrapped (an earlier fit ended in an exception)
        method = self.method
        assert method is not None

        @functools.wraps(current)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            output = current(*args, **kwargs)
            if output is None:  # the batch is skipped
                return None
            reg = method.regularizer()
            pl_module.log(
                "learnprune/regularizer",
                reg.detach(),
                on_step=True,
                on_epoch=False,
                rank_zero_only=True,
            )
            if isinstance(output, Tensor):
                return output + reg
            if isinstance(output, Mapping) and "loss" in output:
                return {**output, "loss": output["loss"] + reg}
            raise ConfigError(
                f"training_step returned {type(output).__name__}; the callback adds the "
                "regularizer to a loss tensor or to the 'loss' of a dict"
            )

        training_step.learnprune_callback = self  # type: ignore[attr-defined]
        had_own = "training_step" in vars(pl_module)
        self._original_training_step = (had_own, vars(pl_module).get("training_step"))
        pl_module.training_step = training_step

    def _unwrap_training_step(self) -> None:
        if self._original_training_step is None or self._module is None:
            return
        had_own, original = self._original_training_step
        if had_own:
            self._module.training_step = original
        else:
            del self._module.training_step
        self._original_training_step = None


def _callback_of(module: LightningModule) -> LearnpruneCallback:
    trainer = module.trainer  # raises if the module is not attached to a Trainer
    found = [c for c in trainer.callbacks if isinstance(c, LearnpruneCallback)]
    if len(found) != 1:
        raise ConfigError(
            f"the trainer has {len(found)} LearnpruneCallbacks; call the one you mean's "
            "parameter_groups() / regularizer()"
        )
    return found[0]


def parameter_groups(module: LightningModule, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """:meth:`LearnpruneCallback.parameter_groups` of the trainer's (one) callback, for
    ``configure_optimizers``."""
    return _callback_of(module).parameter_groups(weight_decay)


def regularizer(module: LightningModule) -> Tensor:
    """:meth:`LearnpruneCallback.regularizer` of the trainer's callback (manual
    optimization: add it to the loss)."""
    return _callback_of(module).regularizer()


def _layer(name: str) -> str:
    """``"model.fc1.weight"`` -> ``"model.fc1"``."""
    return name.rpartition(".")[0] or name


def _example_shape(pl_module: LightningModule) -> tuple[int, ...] | None:
    example = getattr(pl_module, "example_input_array", None)
    return tuple(example.shape[1:]) if isinstance(example, Tensor) else None


def _dataset_size(trainer: Trainer) -> int | None:
    try:
        return len(trainer.train_dataloader.dataset)  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        return None


__all__ = ["LearnpruneCallback", "parameter_groups", "regularizer"]
