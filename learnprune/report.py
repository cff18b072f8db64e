"""Reading results back: one run's per-layer table, or several runs side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from learnprune.accounting import DEFINITIONS, format_table, human
from learnprune.errors import CheckpointError
from learnprune.runner import FINAL


def read_final(run_dir: str | Path) -> dict[str, Any]:
    """``final.json`` of a run directory, with a clear error when it is missing or corrupt."""
    path = Path(run_dir) / FINAL
    if not path.is_file():
        hint = (
            " (the run is unfinished: resume it with --resume)"
            if (Path(run_dir) / "checkpoint.pt").exists()
            else ""
        )
        raise CheckpointError(f"{run_dir} has no {FINAL}{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from err


def summary(result: Mapping[str, Any]) -> str:
    """Headline numbers and the per-layer table of one result."""
    head = (
        f"{result['method']} on {result['model']} / {result['data']}, {result['epochs']} epochs: "
        f"test accuracy {result['test_accuracy']:.2%} (error {result['test_error']:.2%}), "
        f"sparsity {result['sparsity']:.2%}, compression {result['compression']:.1f}x, "
        f"{result['seconds'] / 60:.1f} min"
    )
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
    """One markdown row per run (unfinished runs are listed as such)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for run_dir in run_dirs:
        try:
            r = read_final(run_dir)
        except CheckpointError as err:
            lines.append(f"| {run_dir} | {err} |" + " |" * (len(COLUMNS) - 2))
            continue
        lines.append(
            f"| {Path(run_dir).name} | {r['method']} | {r['model']} | {r['epochs']} | "
            f"{r['test_error']:.2%} | {r['sparsity']:.2%} | {r['compression']:.1f}x | "
            f"{human(r['flops'])} | {human(r['effective_flops'])} | "
            f"{human(r['compact']['flops']) if 'flops' in r.get('compact', {}) else '-'} | "
            f"{r['seconds'] / 60:.1f} |"
        )
    lines.append(f"\n[{DEFINITIONS}]")
    return "\n".join(lines)
