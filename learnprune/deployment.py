"""From a finished run to a model that is really smaller: compact, export, evaluate.

A run directory holds the finalized model (``model.pt``: masks baked in, zeros stored in the
weights) and its ``config.json``. These functions rebuild that model, and

* :func:`compact_run` removes the channels whose removal cannot change the outputs
  (:func:`learnprune.compact.compact`), evaluates the masked and the compact model on the
  test set, and exports the compact one (``safetensors`` + ``model.json``, loadable with
  :func:`learnprune.export.load`), with ``compact.json`` describing what changed;
* :func:`export_run` exports the run's model in any of the formats of
  :mod:`learnprune.export`, loads each back and checks it gives the run's test accuracy.

Nothing in the run directory is modified. The output directory must be new or empty, or
``overwrite`` given; even then only learnprune's own files in it are replaced
(:func:`learnprune.export.export`), a file of yours there is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learnprune import checkpoint
from learnprune.config import RunConfig
from learnprune.data import Dataset
from learnprune.engine import configure_torch, evaluate
from learnprune.errors import CheckpointError

BENCH_FILE = "bench.json"
COMPACT_DIR = "compact"
#: compact_run's summary, written with (and listed in the model.json of) the compact export.
COMPACT_FILE = "compact.json"
EXPORT_DIR = "export"


def load_run_model(
    run_dir: str | Path, data_dir: str | None = None
) -> tuple[RunConfig, Dataset, nn.Module, dict[str, Any]]:
    """The run's config, its data set, its final model and the ``build_model`` arguments
    that rebuild that model."""
    from learnprune.runner import WEIGHTS, load_data, load_init, model_for, read_run_config

    config = read_run_config(run_dir)
    if not (Path(run_dir) / WEIGHTS).is_file():
        raise CheckpointError(f"{run_dir} has no final model ({WEIGHTS}): is the run finished?")
    if data_dir:
        config.data_options["root"] = data_dir
    data = load_data(config)
    model = model_for(config, data)
    load_init(model, Path(run_dir) / WEIGHTS)
    model.eval()
    options = dict(config.model_options)
    options.setdefault("num_classes", data.num_classes)
    options.setdefault("in_channels", data.input_shape[0])
    return config, data, model, options


def _accuracy(model: nn.Module, data: Dataset) -> float:
    _loss, accuracy = evaluate(model, data.x_test, data.y_test)
    return accuracy


def compact_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    check: bool = True,
    data_dir: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Compact a run's model, evaluate both, export the compact one; returns the summary
    written to ``<out>/compact.json`` (default ``out``: ``<run_dir>/compact``)."""
    from learnprune.compact import compact
    from learnprune.export import check_export_directory, export

    configure_torch()
    target = Path(out) if out is not None else Path(run_dir) / COMPACT_DIR
    check_export_directory(target, overwrite=overwrite, extra_files=[COMPACT_FILE])
    config, data, model, options = load_run_model(run_dir, data_dir)
    result = compact(model, None, data.input_shape, check=check)
    masked_accuracy = _accuracy(model, data)
    compact_accuracy = _accuracy(result.model, data)
    summary = {
        "run_dir": str(run_dir),
        "test_accuracy_masked": masked_accuracy,
        "test_accuracy_compact": compact_accuracy,
        **result.as_dict(),
    }
    export(  # compact.json goes with the export, listed in its model.json as its own file
        result.model,
        target,
        model_name=config.model,
        model_options=options,
        input_shape=data.input_shape,
        extra_files={COMPACT_FILE: (checkpoint.json_text(summary, indent=2) + "\n").encode()},
        overwrite=overwrite,
    )
    summary["table"] = result.table()
    summary["out"] = str(target)
    return summary


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    formats: Iterable[str] = ("safetensors",),
    min_sparsity: float = 0.0,
    data_dir: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a run's model (default ``out``: ``<run_dir>/export``), load every format back
    and evaluate it; returns ``{format: test accuracy}`` with the run's own accuracy."""
    from learnprune.export import check_export_directory, export, load

    configure_torch()
    target = Path(out) if out is not None else Path(run_dir) / EXPORT_DIR
    check_export_directory(target, overwrite=overwrite)
    config, data, model, options = load_run_model(run_dir, data_dir)
    formats = list(formats)
    export(
        model,
        target,
        model_name=config.model,
        model_options=options,
        masks={name: p != 0 for name, p in model.named_parameters() if p.dim() > 1},
        input_shape=data.input_shape,
        formats=formats,
        min_sparsity=min_sparsity,
        overwrite=overwrite,
    )
    accuracies = {"run": _accuracy(model, data)}
    for fmt in formats:
        if fmt == "onnx":
            accuracies[fmt] = _onnx_accuracy(target / "model.onnx", data)
        else:
            accuracies[fmt] = _accuracy(load(target, format=fmt), data)
    return {"out": str(target), "formats": formats, "test_accuracy": accuracies}


def _onnx_accuracy(path: Path, data: Dataset, batch: int = 1000) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    batch = fixed if isinstance(fixed, int) else batch  # an export with a fixed batch size
    correct = 0
    for start in range(0, len(data.x_test), batch):
        x = data.x_test[start : start + batch]
        if len(x) < batch and isinstance(fixed, int):  # pad the last batch, count its real rows
            x = torch.cat([x, x.new_zeros(batch - len(x), *x.shape[1:])])
        logits = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        labels = data.y_test[start : start + batch]
        correct += int((logits[: len(labels)].argmax(1) == labels).sum())
    return correct / len(data.x_test)


def bench_run(
    run_dir: str | Path,
    *,
    batches: Iterable[int] = (1, 64),
    threads: Iterable[int] = (1, 2),
    repeats: int = 30,
    min_sparsity: float = 0.5,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Time the run's model in every form (:mod:`learnprune.bench`); the timings go to
    ``<run_dir>/bench.json`` (replaced atomically, nothing else is touched)."""
    from learnprune.bench import format_timings, measure
    from learnprune.runner import environment

    configure_torch()
    _config, data, model, _options = load_run_model(run_dir, data_dir)
    timings = measure(
        model,
        data.input_shape,
        batches=list(batches),
        threads=list(threads),
        repeats=repeats,
        min_sparsity=min_sparsity,
    )
    path = Path(run_dir) / BENCH_FILE
    checkpoint.atomic_write_json(
        path, {"timings": [t.as_dict() for t in timings], "environment": environment()}
    )
    return {"timings": timings, "table": format_timings(timings), "path": str(path)}
