"""A whole run from a :class:`~learnprune.config.RunConfig`: build, train, finalize, report.

The flow is the one of the design: recipe -> data + model -> method attaches -> engine trains
-> masks baked in -> accounting -> ``final.json``. A run directory holds

====================  ==========================================================
``config.json``       the full configuration (written first)
``metrics.jsonl``     one line per epoch
``checkpoint.pt``     the last epoch's model, method, optimizer and RNG states
``model.pt``          the final weights, masks baked in (a plain ``state_dict``)
``init.pt``           the starting weights, for methods that find lottery tickets
``final.json``        the results (written last: its presence means the run is done)
``.learnprune.lock``  held while a process writes the directory (removed at the end)
====================  ==========================================================

A run never writes into a directory that holds another run's files (unless resuming it),
so a failed or mistaken run cannot destroy earlier results. It claims its directory
(:mod:`learnprune.run_directory`: created exclusively, or locked) before anything slow
happens, so a second run into the same directory stops at once. A run that fails before it
wrote ``config.json`` removes what it created. Every state a kill can leave is resumable or
can be started again: before ``config.json`` exists the directory holds nothing of the run
and a new run may use it (temporary files of killed writes are removed on the next start);
once it exists, ``--resume`` continues (and writes ``init.pt`` if the kill came before it).

Under ``torchrun`` every rank builds and trains; rank 0 alone chooses, claims and checks the
directory and writes to it (an error there stops every rank with the same message), and its
results are returned on every rank.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learnprune import __version__, checkpoint, distributed, run_directory
from learnprune.accounting import DEFINITIONS, count
from learnprune.config import RunConfig
from learnprune.data import Dataset, load_dataset
from learnprune.engine import (
    CHECKPOINT,
    METRICS,
    Schedule,
    configure_torch,
    evaluate,
    resolve_device,
    seed_everything,
    train,
)
from learnprune.errors import (
    CheckpointError,
    ConfigError,
    LearnpruneError,
    TrainingDivergedError,
    relayed,
)
from learnprune.methods import build_method
from learnprune.methods.base import PruningMethod, TrainingContext
from learnprune.models import build_model

CONFIG = "config.json"
FINAL = "final.json"
WEIGHTS = "model.pt"
INITIAL_WEIGHTS = "init.pt"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, WEIGHTS, INITIAL_WEIGHTS, FINAL)


def default_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<model>-<method>-<date>-<time>``; claiming it adds a suffix ``-2``, ``-3``, …
    if a run started in the same second took the name
    (:func:`learnprune.run_directory.claim_new`)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.model}-{config.method}-{stamp}"


def load_data(config: RunConfig) -> Dataset:
    """The run's data set, with the data options of the config."""
    options = dict(config.data_options)
    root = options.pop("root", None)
    return load_dataset(config.data, root, **options)


def model_for(config: RunConfig, data: Dataset) -> nn.Module:
    """The config's model, sized for the data (classes, input channels), input checked."""
    options = dict(config.model_options)
    model = build_model(
        config.model,
        num_classes=options.pop("num_classes", data.num_classes),
        in_channels=options.pop("in_channels", data.input_shape[0]),
        **options,
    )
    _check_input(model, config, data)
    return model


def build(config: RunConfig, data: Dataset) -> tuple[nn.Module, PruningMethod]:
    """The model (with ``init`` weights, if any) and the method attached to it."""
    seed_everything(config.train.seed)
    model = model_for(config, data)
    if config.init:
        load_init(model, config.init)
    method = build_method(
        config.method, model, config.method_options, training_context(config, data)
    )
    return model, method


def training_context(config: RunConfig, data: Dataset) -> TrainingContext:
    """What the method learns about the run: its length in epochs and steps, the input
    shape, whether it starts from trained weights, the number of examples, the phases."""
    train_size = min(len(data.x_train), config.train.train_subset or len(data.x_train))
    schedule = Schedule.of(train_size, config.train)
    return TrainingContext(
        epochs=config.train.epochs,
        steps_per_epoch=schedule.steps_per_epoch,
        total_steps=schedule.total_steps,
        input_shape=tuple(data.input_shape),
        pretrained=bool(config.init),
        train_size=train_size,
        phases=config.train.run_phases,
    )


def phases_record(context: TrainingContext) -> dict[str, Any] | None:
    """``final.json``'s ``phases``: each phase's length in epochs and in steps (the steps
    a run compressed by ``max_steps`` really took), ``None`` for a run without phases."""
    if context.phases is None or context.phase_bounds is None:
        return None
    begin, end = context.phase_bounds
    return {
        "epochs": context.phases.as_dict(),
        "steps": {"warmup": begin, "learn": end - begin, "finetune": context.total_steps - end},
    }


def init_record(config: RunConfig) -> dict[str, Any] | None:
    """``final.json``'s ``init``: where the starting weights came from (``None``: scratch)."""
    if not config.init:
        return None
    path = Path(config.init)
    weights = path / WEIGHTS if path.is_dir() else path
    return {"source": str(config.init), "weights": str(weights.resolve())}


def _check_input(model: nn.Module, config: RunConfig, data: Dataset) -> None:
    expected = tuple(getattr(model, "input_shape", data.input_shape))
    if expected != tuple(data.input_shape):
        raise ConfigError(
            f"model {config.model} expects inputs of shape {expected}, data {config.data} "
            f"gives {tuple(data.input_shape)}"
            + ("; try data_options pad_to_32 = true" if expected[-1] == 32 else "")
        )


def load_init(model: nn.Module, source: str | Path) -> None:
    """Load starting weights from a run directory (its ``model.pt``) or a weights file."""
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS
    state = checkpoint.load_state_dict_file(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model: {relayed(err)}") from err


def claim_run_dir(
    out: str | Path | None, config: RunConfig, resume: bool
) -> run_directory.ClaimedDirectory:
    """The run directory, claimed and checked: new (or holding nothing but what killed
    writes left) unless resuming an unfinished run. Leftover temporary files are removed."""
    if resume:
        if out is None:
            raise ConfigError("--resume needs the run directory")
        if not Path(out).is_dir():
            raise CheckpointError(f"{out} is not a learnprune run directory (no {CONFIG})")
        claimed = run_directory.claim(out, create=False)
    elif out is None:
        claimed = run_directory.claim_new(default_run_dir(config))
    else:
        claimed = run_directory.claim(out)
    try:
        _check_run_dir(claimed, resume)
        claimed.remove_leftovers(RUN_FILES)
    except BaseException:
        claimed.release()
        raise
    return claimed


def _check_run_dir(claimed: run_directory.ClaimedDirectory, resume: bool) -> None:
    run_dir = claimed.path
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise _not_a_run_directory(run_dir)
        if (run_dir / FINAL).is_file():
            raise CheckpointError(f"the run in {run_dir} is already complete (see {FINAL})")
    elif claimed.foreign_files(RUN_FILES):
        raise ConfigError(
            f"{run_dir} already holds files; choose another --out (or --resume {run_dir} to "
            "continue that run); nothing was overwritten"
        )


def _not_a_run_directory(run_dir: Path) -> CheckpointError:
    """The error for a directory without ``config.json``; if it holds only what a killed
    start leaves (a lock and a temporary ``config.json``), it says that the run can be
    started again into it."""
    traces = run_dir.is_dir() and any(run_dir.iterdir())
    restart = (
        f"; it holds nothing of a run: start it again with --out {run_dir}"
        if traces and not run_directory.foreign_files(run_dir, RUN_FILES)
        else ""
    )
    return CheckpointError(f"{run_dir} is not a learnprune run directory (no {CONFIG}){restart}")


def initial_weights(run_dir: str | Path) -> Path:
    """The run's ``init.pt`` (its starting weights, what a lottery ticket is retrained
    from), or a :class:`CheckpointError` saying how to get it: an interrupted run writes it
    on ``--resume``; a finished one (resumed by a learnprune that did not write it again)
    has to be trained again.
    """
    path = Path(run_dir) / INITIAL_WEIGHTS
    if path.is_file():
        return path
    if (Path(run_dir) / FINAL).is_file():
        raise CheckpointError(
            f"{run_dir} has no {INITIAL_WEIGHTS}, the starting weights a ticket is retrained "
            "from, and the run is finished, so --resume cannot write it: train the run again "
            f"(same recipe and seed, see its {CONFIG}) and take the ticket from the new run"
        )
    raise CheckpointError(
        f"{run_dir} has no {INITIAL_WEIGHTS}, the starting weights a ticket is retrained from: "
        f"run `learnprune train --resume {run_dir}`, which writes it, then the ticket again"
    )


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The :class:`RunConfig` saved in a run directory."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise _not_a_run_directory(Path(run_dir))
    try:
        return RunConfig.from_dict(checkpoint.read_json(path))
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from err


def run(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
    progress: bool | None = None,
    data: Dataset | None = None,
) -> dict[str, Any]:
    """Train, finalize and report one run; return what ``final.json`` holds.

    The run directory is claimed first (no other run can write into it meanwhile); a run
    that fails before it wrote ``config.json`` removes the directories it created.
    A ``KeyboardInterrupt`` after that carries the directory as ``resumable_run_dir``.
    """
    configure_torch()
    config.validate()
    claimed: run_directory.ClaimedDirectory | None = None
    started_directory = resume  # config.json is there: the run can be resumed

    def claim_now() -> Path:
        nonlocal claimed
        claimed = claim_run_dir(out, config, resume)
        return claimed.path

    run_dir = distributed.on_main(claim_now)
    try:
        quiet = quiet or not distributed.is_main()
        resolve_device(config.train.device)
        if data is None:
            data = load_data(config)
        subset = config.train.train_subset
        if subset is not None and subset > len(data.x_train):
            raise ConfigError(
                f"train_subset {subset} is larger than the training set of "
                f"{config.data} ({len(data.x_train)} examples)"
            )
        model, method = build(config, data)
        started = time.perf_counter()

        def start_directory() -> None:
            if not resume:
                checkpoint.atomic_write_json(run_dir / CONFIG, config.as_dict())
            # the starting point of lottery tickets; on resume, if a kill came before it
            # was written: the model is still the one build() made, the run's start
            if method.saves_initial_weights and not (run_dir / INITIAL_WEIGHTS).is_file():
                checkpoint.save_torch(run_dir / INITIAL_WEIGHTS, model.state_dict())

        distributed.on_main(start_directory)
        started_directory = True
        if not quiet:
            print(f"run {run_dir}: {config.model} on {config.data}, {method.describe()}")
        last = train(
            model,
            method,
            data,
            config.train,
            out_dir=run_dir,
            resume=resume,
            run_info={"model": config.model, "method": config.method, "data": config.data},
            quiet=quiet,
            progress=progress,
        )
        return distributed.on_main(
            lambda: _finish(config, model, method, data, run_dir, last, started)
        )
    except KeyboardInterrupt as interrupt:
        if started_directory:
            interrupt.resumable_run_dir = run_dir  # type: ignore[attr-defined]
        raise
    finally:
        if claimed is not None:
            claimed.release()


def _finish(
    config: RunConfig,
    model: nn.Module,
    method: PruningMethod,
    data: Dataset,
    run_dir: Path,
    last: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Bake the masks in, measure, write ``model.pt`` and ``final.json``; the results."""
    device = next(model.parameters()).device
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)

    def evaluate_now() -> tuple[float, float]:
        return evaluate(model, x_test, y_test, config.train.eval_batch_size)

    masks = method.masks()
    before_finalize = method.final_metrics(evaluate_now)
    method.finalize()
    model.eval()
    test_loss, test_accuracy = evaluate_now()
    if not math.isfinite(test_loss):
        raise TrainingDivergedError(
            f"the finalized model's test loss is {test_loss}; nothing was written for it "
            f"(the last checkpoint is {run_dir / CHECKPOINT})"
        )
    counts = count(model.cpu(), data.input_shape)
    checkpoint.save_torch(run_dir / WEIGHTS, model.state_dict())
    compacted, small = compact_summary(model, data.input_shape)
    speed = speed_summary(model, small, data.input_shape)
    result = {
        "method": config.method,
        "model": config.model,
        "data": config.data,
        "epochs": config.train.epochs,
        "steps": last.get("steps"),
        "phases": phases_record(training_context(config, data)),
        "init": init_record(config),
        "test_accuracy": test_accuracy,
        "test_error": 1.0 - test_accuracy,
        "test_loss": test_loss,
        **before_finalize,
        **counts.as_dict(),
        "compact": compacted,
        "speed": speed,
        "masked_tensors": sorted(masks),
        "seconds": last.get("elapsed", 0.0),
        "wall_seconds_this_process": time.perf_counter() - started,
        "definitions": DEFINITIONS,
        "config": config.as_dict(),
        "environment": environment(),
    }
    checkpoint.atomic_write_json(run_dir / FINAL, result)
    result["run_dir"] = str(run_dir)
    return result


def compact_summary(
    model: nn.Module, input_shape: Sequence[int]
) -> tuple[dict[str, Any], nn.Module | None]:
    """What the finalized model becomes once its dropped channels are removed for real
    (:func:`learnprune.compact.compact`, outputs checked): kept units, parameters, FLOPs;
    and the compact model itself. A model compaction cannot handle gets ``{"error":
    reason}`` and ``None``; the run still succeeds."""
    from learnprune.compact import UncutStructureWarning, compact

    try:
        # What compaction leaves is recorded in final.json, not warned about in every run
        # (`learnprune compact RUN_DIR` warns).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UncutStructureWarning)
            result = compact(model, None, input_shape)
    except LearnpruneError as err:
        return {"error": str(err)}, None
    for warning in caught:
        if not issubclass(warning.category, UncutStructureWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    summary = {
        "architecture": result.architecture_after,
        "removed_channels": result.removed_channels,
        "params": result.after.params,
        "flops": result.after.flops,
        "effective_flops": result.after.effective_flops,
        "max_abs_diff": result.max_abs_diff,
    }
    left = [str(w.message) for w in caught if issubclass(w.category, UncutStructureWarning)]
    if left:
        summary["left_uncut"] = left
    return summary, result.model


SPEED_BATCHES = (1, 64)
SPEED_REPEATS = 9


def speed_summary(
    model: nn.Module, small: nn.Module | None, input_shape: Sequence[int]
) -> dict[str, Any]:
    """A quick measured latency of the final model (in eval mode) and its compact form
    ``small`` (``None``: the model alone) at batch 1 and 64 with this process's threads
    (:func:`learnprune.bench.time_forms`: warm-up, then the median of 9 calls in alternating
    rounds). ``learnprune bench RUN_DIR`` measures properly (1 and 2 threads, 30 calls, the
    masked and CSR forms too)."""
    from learnprune.bench import time_forms

    built = {"dense": model} if small is None else {"dense": model, "compact": small.eval()}
    timings = time_forms(
        built,
        input_shape,
        batches=SPEED_BATCHES,
        threads=(torch.get_num_threads(),),
        warmup=2,
        repeats=SPEED_REPEATS,
    )
    return {
        "threads": torch.get_num_threads(),
        "repeats": SPEED_REPEATS,
        "timings": [t.as_dict() for t in timings],
    }


def environment() -> dict[str, Any]:
    """Where and with what a result was produced."""
    return {
        "learnprune": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "processes": distributed.world_size(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
