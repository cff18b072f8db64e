"""Reading results back: one run's per-layer table, or several runs side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from learnprune import checkpoint
from learnprune.accounting import DEFINITIONS, format_table, human
from learnprune.errors import CheckpointError
from learnprune.runner import CONFIG, FINAL

FINAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "method": str,
    "model": str,
    "data": str,
    "epochs": int,
    "test_accuracy": Real,
    "test_error": Real,
    "sparsity": Real,
    "compression": Real,
    "seconds": Real,
    "weights": int,
    "nonzero_weights": int,
    "params": int,
    "nonzero_params": int,
    "flops": Real,
    "effective_flops": Real,
    "layers": list,
}
"""What :func:`summary` and :func:`compare` read from ``final.json``, with its type."""

LAYER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "shape": list,
    "weights": int,
    "nonzero_weights": int,
    "sparsity": Real,
    "flops": Real,
    "effective_flops": Real,
}
COMPACT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "architecture": (str, list, dict),
    "params": int,
    "flops": Real,
}
SPEED_FIELDS: dict[str, type | tuple[type, ...]] = {"threads": int, "timings": list}
TIMING_FIELDS: dict[str, type | tuple[type, ...]] = {
    "batch": int,
    "form": str,
    "median_ms": Real,
    "speedup": Real,
}


def run_directory(run_dir: str | Path) -> Path:
    """``run_dir``, refused (CheckpointError) when it does not exist or is not a run."""
    path = Path(run_dir)
    if not path.exists():
        raise CheckpointError(f"no run directory at {run_dir}")
    if not (path / FINAL).is_file() and not (path / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} is not a learnprune run directory (no {CONFIG})")
    return path


def read_final(run_dir: str | Path) -> dict[str, Any]:
    """``final.json`` of a run directory, checked against :data:`FINAL_FIELDS`; one clear
    CheckpointError when the directory is missing, the run unfinished or the file corrupt."""
    path = run_directory(run_dir) / FINAL
    if not path.is_file():
        hint = (
            " (the run is unfinished: resume it with --resume)"
            if (Path(run_dir) / "checkpoint.pt").exists()
            else ""
        )
        raise CheckpointError(f"{run_dir} has no {FINAL}{hint}")
    result = checkpoint.read_json(path)
    _check_fields(result, FINAL_FIELDS, path, "")
    for index, layer in enumerate(result["layers"]):
        _check_fields(layer, LAYER_FIELDS, path, f"layers[{index}].")
    if result.get("compact") is not None:
        _check_fields(result["compact"], {}, path, "compact.")
        if "architecture" in result["compact"]:
            _check_fields(result["compact"], COMPACT_FIELDS, path, "compact.")
    if result.get("speed") is not None:
        _check_fields(result["speed"], SPEED_FIELDS, path, "speed.")
        for index, timing in enumerate(result["speed"]["timings"]):
            _check_fields(timing, TIMING_FIELDS, path, f"speed.timings[{index}].")
    return result


def _check_fields(
    value: object, fields: Mapping[str, type | tuple[type, ...]], path: Path, prefix: str
) -> None:
    """Every field of ``fields`` is in the mapping ``value`` with its type (bool is no
    number); raises CheckpointError naming the first that is not."""
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{path} is corrupt: {prefix.rstrip('.') or 'it'} is not a table")
    for name, kind in fields.items():
        if name not in value:
            raise CheckpointError(f"{path} is corrupt: no {prefix}{name}")
        field = value[name]
        if isinstance(field, bool) or not isinstance(field, kind):
            raise CheckpointError(f"{path} is corrupt: {prefix}{name} is {field!r:.40}")


def protocol_line(result: Mapping[str, Any]) -> str:
    """``"\nphases: warm-up 1, learn 2, fine-tune 1 epochs (8, 16, 8 steps), from RUN"``:
    the run's phases and starting weights (empty for a run from scratch without phases)."""
    parts = []
    phases = result.get("phases")
    if phases:
        epochs, steps = phases["epochs"], phases["steps"]
        parts.append(
            f"phases: warm-up {epochs['warmup']:g}, learn {epochs['learn']:g}, fine-tune "
            f"{epochs['finetune']:g} epochs ({steps['warmup']}, {steps['learn']}, "
            f"{steps['finetune']} steps)"
        )
    init = result.get("init")
    if init:
        parts.append(f"from {init['source']}")
    return "\n" + ", ".join(parts) if parts else ""


def summary(result: Mapping[str, Any]) -> str:
    """Headline numbers and the per-layer table of one result."""
    length = f"{result['epochs']} epochs"
    max_steps = ((result.get("config") or {}).get("train") or {}).get("max_steps")
    if max_steps is not None and result.get("steps") == max_steps:
        length = f"{max_steps} steps (max_steps; {result['epochs']} epochs planned)"
    head = (
        f"{result['method']} on {result['model']} / {result['data']}, {length}: "
        f"test accuracy {result['test_accuracy']:.2%} (error {result['test_error']:.2%}), "
        f"sparsity {result['sparsity']:.2%}, compression {result['compression']:.1f}x, "
        f"{result['seconds'] / 60:.1f} min"
    )
    head += protocol_line(result)
    small = result.get("compact") or {}
    if "architecture" in small:
        head += (
            f"\ncompacted (dropped channels removed): {small['architecture']}, "
            f"params {small['params']:,}, FLOPs {human(small['flops'])}"
        )
    elif "error" in small:
        head += f"\nnot compacted: {small['error']}"
    timings = (result.get("speed") or {}).get("timings", [])
    by_batch: dict[int, dict[str, Any]] = {}
    for timing in timings:
        by_batch.setdefault(timing["batch"], {})[timing["form"]] = timing
    parts = [
        f"batch {batch}: dense {forms['dense']['median_ms']:.3g} ms"
        + (
            f", compact {forms['compact']['median_ms']:.3g} ms "
            f"({forms['compact']['speedup']:.2f}x)"
            if "compact" in forms
            else ""
        )
        for batch, forms in sorted(by_batch.items())
        if "dense" in forms
    ]
    if parts:
        threads = result["speed"]["threads"]
        head += f"\nmeasured ({threads} thread{'s' if threads > 1 else ''}): " + "; ".join(parts)
    return head + "\n" + format_table(result)


COLUMNS = (
    "run",
    "method",
    "model",
    "epochs",
    "error",
    "sparsity",
    "compression",
    "FLOPs",
    "eff. FLOPs",
    "compact FLOPs",
    "minutes",
)


def compare(run_dirs: Sequence[str | Path]) -> str:
    """One markdown row per run (unfinished or corrupt runs are listed as such; a path
    that is not a run directory is a CheckpointError)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for run_dir in run_dirs:
        run_directory(run_dir)  # a missing directory is an error, an unfinished run a row
        try:
            r = read_final(run_dir)
        except CheckpointError as err:
            lines.append(f"| {run_dir} | {err} |" + " |" * (len(COLUMNS) - 2))
            continue
        lines.append(
            f"| {Path(run_dir).name} | {r['method']} | {r['model']} | {r['epochs']} | "
            f"{r['test_error']:.2%} | {r['sparsity']:.2%} | {r['compression']:.1f}x | "
            f"{human(r['flops'])} | {human(r['effective_flops'])} | "
            f"{human(r['compact']['flops']) if 'flops' in (r.get('compact') or {}) else '-'} | "
            f"{r['seconds'] / 60:.1f} |"
        )
    lines.append(f"\n[{DEFINITIONS}]")
    return "\n".join(lines)
