"""One command to compare every method on one recipe: a sweep of runs, a table, a report.

``learnprune compare --recipe R --methods scl,dessilbi,diffprune,hardconcrete,gmp,magnitude``
runs each method at several strengths on the model, data and epochs of recipe ``R``:

* a method with a shipped recipe for that model (``recipes/<model>-<method>.toml``, e.g.
  ``lenet300-scl.toml``) trains with that recipe's optimizer and options, at ``R``'s number of
  epochs; otherwise ``R`` itself is used with the method swapped in;
* the strength is a budget ``target`` (sparsity) by default, the same list for every method
  (``--targets``), or per method any numeric option: ``--strengths scl=lam:0.003,0.005``;
* DessiLBI is one run: its regularization path gives the rows, ``W* = W ⊙ 1[Γ ≠ 0]`` at the
  epochs ``--path-epochs`` (accuracy and sparsity of the sparse view at that epoch).

A fair comparison by construction: ``--phases W,L,F`` gives every method the same phases
(:mod:`learnprune.phases`: warm-up, mask learning, fine-tuning, the same steps each; they
replace the method recipes' epochs and timing, their learning rates stay), and ``--init
RUN_DIR`` or ``--dense-epochs N`` the same dense start: with ``--dense-epochs`` one dense
model is trained first into ``<out>/dense-start/`` (the dense recipe of the model, ``N``
epochs) and every method starts from its weights.

Every run lives in ``<out>/runs/<name>/`` and is the same as ``learnprune train`` writes; a run
with ``final.json`` is not run again and an interrupted one is resumed from its checkpoint, so
an interrupted sweep picks up where it stopped. The results go to ``<out>/results.csv``,
``<out>/results.md`` and ``<out>/report.html`` (plots: accuracy against compression and
against FLOPs, kept fraction per layer, measured speed-ups where ``learnprune bench`` has
written ``bench.json``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learnprune import checkpoint
from learnprune.config import RECIPES_DIR, RunConfig, apply_phases, read_recipe
from learnprune.errors import CheckpointError, ConfigError
from learnprune.phases import Phases

TARGETED = ("scl", "diffprune", "hardconcrete", "gmp", "magnitude")
COLUMNS = (
    "method",
    "strength",
    "test_error",
    "sparsity",
    "compression",
    "flops",
    "effective_flops",
    "compact_flops",
    "compact_architecture",
    "minutes",
    "run",
)


@dataclass
class Planned:
    """One run of the sweep."""

    name: str
    method: str
    strength: str
    config: RunConfig
    path_epochs: list[int] = field(default_factory=list)  # DessiLBI: rows from its path


CARRIED = ("epochs", "train_subset", "max_steps", "device")
"""Training keys of the sweep's recipe that a method's own recipe takes over."""
DENSE_START = "dense-start"
"""The sweep's subdirectory of the dense model every method starts from (``--dense-epochs``)."""


def method_recipe(base: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The recipe a method trains with on ``base``'s model (see the module docstring).

    A shipped method recipe takes over the sweep's ``epochs`` (and ``train_subset``,
    ``max_steps``, ``device``); its schedule points given in epochs (``begin_epoch``,
    ``end_epoch``, learning-rate ``milestones``) are scaled to the new length. The sweep's
    ``phases`` replace both (:func:`~learnprune.config.apply_phases`), and its
    ``batch_size``, when it gives one, is every method's then: the same steps in each phase.
    """
    raw = _method_recipe(base, method)
    base_train = dict(base.get("train", {}))
    if base_train.get("phases") is not None:
        raw = apply_phases(raw, Phases.parse(base_train["phases"]), base_train.get("epochs"))
        if "batch_size" in base_train:
            raw["train"]["batch_size"] = base_train["batch_size"]
    return raw


def _method_recipe(base: Mapping[str, Any], method: str) -> dict[str, Any]:
    prefix = str(base.get("model", "")).replace("-", "")  # none: RunConfig says so
    shipped = RECIPES_DIR / f"{prefix}-{method}.toml"
    base_train = dict(base.get("train", {}))
    if shipped.is_file():
        raw = read_recipe(shipped)
        if raw.get("data") == base.get("data"):
            train = dict(raw.get("train", {}))
            old_epochs = float(train.get("epochs", 1))
            train.update({k: base_train[k] for k in CARRIED if k in base_train})
            scale = float(train.get("epochs", old_epochs)) / old_epochs
            if scale != 1.0:
                if "milestones" in train:
                    train["milestones"] = [m * scale for m in train["milestones"]]
                table = raw.get("method")
                if isinstance(table, dict):
                    for key in [k for k in table if k.endswith("_epoch")]:
                        table[key] = table[key] * scale
            raw["train"] = train
            return raw
    raw = json.loads(json.dumps(base))
    raw["method"] = {"name": method}
    raw.pop("method_options", None)
    return raw


def parse_strengths(texts: Sequence[str]) -> dict[str, tuple[str, list[float]]]:
    """``["scl=lam:0.003,0.005", "gmp=0.9,0.95"]`` -> ``{"scl": ("lam", [...]), "gmp":
    ("target", [...])}``."""
    parsed: dict[str, tuple[str, list[float]]] = {}
    for text in texts:
        method, sep, rest = text.partition("=")
        if not sep or not rest:
            raise ConfigError(f"--strengths takes METHOD=[OPTION:]v1,v2,..., got {text!r}")
        option, _, values = rest.rpartition(":")
        try:
            numbers = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--strengths {text!r}: values must be numbers") from None
        if not numbers:
            raise ConfigError(f"--strengths {text!r}: no values")
        parsed[method.strip().lower()] = (option.strip() or "target", numbers)
    return parsed


def plan(
    base: Mapping[str, Any],
    methods: Sequence[str],
    targets: Sequence[float],
    strengths: Mapping[str, tuple[str, list[float]]],
    path_epochs: Sequence[int],
    init: str | Path | None = None,
) -> list[Planned]:
    """Every run of the sweep, validated before anything runs; every one starts from the
    weights ``init`` when given."""
    from learnprune.methods import METHODS

    planned: list[Planned] = []
    for method in methods:
        if method not in METHODS or method in ("ticket",):
            raise ConfigError(
                f"compare: unknown method {method!r}; choose from {', '.join(METHODS)}"
            )
        raw = method_recipe(base, method)
        if init is not None:
            raw["init"] = str(init)
        if method == "dessilbi":
            config = RunConfig.from_dict(raw).validate()
            epochs = [e for e in path_epochs if e <= config.train.epochs] or [config.train.epochs]
            planned.append(Planned("dessilbi-path", method, "path", config, epochs))
            continue
        if method == "dense":
            config = RunConfig.from_dict(raw).validate()
            planned.append(Planned("dense", method, "-", config))
            continue
        option, values = strengths.get(method, ("target", list(targets)))
        if option == "target" and method not in TARGETED:
            raise ConfigError(f"compare: {method} takes no target; give --strengths {method}=...")
        for value in values:
            run_raw = json.loads(json.dumps(raw))
            given = run_raw["method"]
            table = dict(given) if isinstance(given, dict) else {"name": given}
            table[option] = value
            run_raw["method"] = table
            config = RunConfig.from_dict(run_raw).validate()
            _check_method_builds(config)
            planned.append(
                Planned(f"{method}-{option}{value:g}", method, f"{option} {value:g}", config)
            )
    return planned


def _check_method_builds(config: RunConfig) -> None:
    """Attach the config's method to a fresh model (on the model's own input shape), so an
    option the method refuses (``--strengths scl=lam:-1``) fails before any run starts."""
    from learnprune.methods import build_method
    from learnprune.methods.base import TrainingContext
    from learnprune.models import build_model

    model = build_model(config.model, **config.model_options)
    epochs = config.train.epochs
    context = TrainingContext(
        epochs=epochs,
        steps_per_epoch=100,
        total_steps=100 * epochs,
        input_shape=getattr(model, "input_shape", None),
        pretrained=bool(config.init),
        phases=config.train.run_phases,
    )
    build_method(config.method, model, config.method_options, context)


def dense_start_config(base: Mapping[str, Any], epochs: int) -> RunConfig:
    """The dense model every method of a ``--dense-epochs`` sweep starts from: the model's
    dense recipe (or ``base`` with ``dense`` swapped in) for ``epochs`` epochs, no phases."""
    raw = method_recipe({**base, "train": _without_phases(base)}, "dense")
    raw["train"] = {**_without_phases(raw), "epochs": epochs}
    raw.pop("init", None)
    return RunConfig.from_dict(raw).validate()


def _without_phases(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(raw.get("train") or {}).items() if k != "phases"}


def check_init(source: str | Path) -> Path:
    """``--init``'s weights file (a finished run's ``model.pt``, or a file), checked now so
    a sweep does not fail at its first run."""
    from learnprune.runner import WEIGHTS

    path = Path(source)
    weights = path / WEIGHTS if path.is_dir() else path
    if not path.exists():
        raise CheckpointError(f"--init {source}: no such run directory or weights file")
    if not weights.is_file():
        raise CheckpointError(f"--init {source}: no {weights.name} there (is the run finished?)")
    return path


def run_or_resume(config: RunConfig, run_dir: Path) -> None:
    """Run ``config`` into ``run_dir`` unless finished there; an interrupted run resumes."""
    from learnprune.runner import FINAL, run

    if not (run_dir / FINAL).is_file():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        resume = (run_dir / "checkpoint.pt").is_file()
        if run_dir.exists() and not resume:
            _clear(run_dir)
        run(config, run_dir, resume=resume, quiet=True, progress=False)


def run_sweep(
    planned: Sequence[Planned], out: Path, progress: bool = True, bench: bool = False
) -> list[dict[str, Any]]:
    """Run what is not finished (resuming interrupted runs); return the result rows."""
    from tqdm import tqdm

    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(planned), desc="compare", unit="run", disable=not progress)
    try:
        for item in planned:
            run_dir = runs / item.name
            bar.set_postfix_str(item.name)
            run_or_resume(item.config, run_dir)
            if bench and not (run_dir / "bench.json").is_file():
                from learnprune.deployment import bench_run

                bench_run(run_dir, batches=(64,), threads=(1,), repeats=15)
            bar.update(1)
    finally:
        bar.close()
    return collect(planned, runs)


def _clear(run_dir: Path) -> None:
    """Remove an unfinished run that left no checkpoint (it never finished an epoch)."""
    for child in run_dir.iterdir():
        child.unlink()
    run_dir.rmdir()


def collect(planned: Sequence[Planned], runs: Path) -> list[dict[str, Any]]:
    """The table rows of the finished runs (DessiLBI: one row per path epoch)."""
    from learnprune.report import read_final

    rows = []
    for item in planned:
        run_dir = runs / item.name
        final = read_final(run_dir)
        small = final.get("compact") or {}
        common = {
            "method": item.method,
            "minutes": final["seconds"] / 60,
            "run": str(run_dir),
            "layers": final.get("layers", []),
            "phases": final.get("phases"),
            "init": final.get("init"),
        }
        if item.path_epochs:
            lines = checkpoint.read_json_lines(run_dir / "metrics.jsonl")
            by_epoch = {line["epoch"]: line for line in lines}
            for epoch in item.path_epochs:
                line = by_epoch[epoch]
                sparsity = line["sparsity"]
                rows.append(
                    {
                        **common,
                        "strength": f"path epoch {epoch}",
                        "test_error": 1 - line["test_accuracy_sparse"],
                        "sparsity": sparsity,
                        "compression": 1 / (1 - sparsity) if sparsity < 1 else math.inf,
                        "flops": final["flops"],
                        "effective_flops": final["effective_flops"]
                        if epoch == final["epochs"]
                        else None,
                        "compact_flops": small.get("flops") if epoch == final["epochs"] else None,
                        "compact_architecture": small.get("architecture")
                        if epoch == final["epochs"]
                        else None,
                    }
                )
            continue
        bench_file = run_dir / "bench.json"
        if bench_file.is_file():
            timings = checkpoint.read_json(bench_file).get("timings", [])
            common["speedups"] = {t["form"]: t["speedup"] for t in timings}
        rows.append(
            {
                **common,
                "strength": item.strength,
                "test_error": final["test_error"],
                "sparsity": final["sparsity"],
                "compression": final["compression"],
                "flops": final["flops"],
                "effective_flops": final["effective_flops"],
                "compact_flops": small.get("flops"),
                "compact_architecture": small.get("architecture"),
            }
        )
    return rows


def write_results(rows: Sequence[Mapping[str, Any]], out: Path, title: str) -> dict[str, Path]:
    """``results.csv``, ``results.md`` and ``report.html`` in ``out``."""
    paths = {"csv": out / "results.csv", "md": out / "results.md", "html": out / "report.html"}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    checkpoint.atomic_write_text(paths["csv"], buffer.getvalue())
    checkpoint.atomic_write_text(paths["md"], protocol_text(rows) + markdown_table(rows))
    checkpoint.atomic_write_text(paths["html"], html_report(rows, title, out))
    return paths


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "x":
        return f"{value:.1f}x"
    if kind == "flops":
        from learnprune.accounting import human

        return human(value)
    if kind == "min":
        return f"{value:.1f}"
    return str(value)


def protocol_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """What every run of the sweep shared, one line each: the phases (epochs and steps)
    and the starting weights; ``"phases: differ per method"`` when they differ."""
    from learnprune.report import protocol_line

    lines = {protocol_line(row).strip() for row in rows}
    if not lines or lines == {""}:
        return ""
    if len(lines) > 1:
        return "runs differ in phases or start: " + "; ".join(sorted(lines)) + "\n\n"
    return lines.pop() + "\n\n"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per result, best accuracy first within each method."""
    lines = [
        "| method | strength | test error | sparsity | compression | eff. FLOPs | compacted "
        "| compact FLOPs | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['strength']} | {_fmt(r['test_error'], 'pct')} | "
            f"{_fmt(r['sparsity'], 'pct')} | {_fmt(r['compression'], 'x')} | "
            f"{_fmt(r['effective_flops'], 'flops')} | {_fmt(r['compact_architecture'], '')} | "
            f"{_fmt(r['compact_flops'], 'flops')} | {_fmt(r['minutes'], 'min')} |"
        )
    return "\n".join(lines) + "\n"


def _figure_png(draw: Callable[[Any], None]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _by_method(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["method"], []).append(row)
    return grouped


def html_report(
    rows: Sequence[Mapping[str, Any]], title: str, figure_dir: Path | None = None
) -> str:
    """A self-contained HTML page: the table and the plots (PNG inlined; also written to
    ``figure_dir`` as files when given)."""
    grouped = _by_method(rows)

    def accuracy_vs(key: str, label: str, log: bool) -> Callable[[Any], None]:
        def draw(ax: Any) -> None:
            for method, items in grouped.items():
                points = sorted((r[key], 100 * (1 - r["test_error"])) for r in items if r.get(key))
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=method)
            accuracies = [100 * (1 - r["test_error"]) for r in rows if r.get(key)]
            if accuracies:  # collapsed runs would squash the useful range: they fall below
                top = max(accuracies)
                bottom = max(min(accuracies), top - 5.0)
                ax.set_ylim(bottom - 0.25, min(100.0, top + 0.25))
                hidden = sum(a < bottom for a in accuracies)
                if hidden:
                    ax.set_title(f"{hidden} run(s) below {bottom:.1f}% not shown", fontsize=8)
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)

        return draw

    def kept_per_layer(ax: Any) -> None:
        sparsest = {m: max(items, key=lambda r: r["sparsity"]) for m, items in grouped.items()}
        names = [layer["name"] for layer in next(iter(sparsest.values()))["layers"]]
        width = 0.8 / max(len(sparsest), 1)
        for i, (method, row) in enumerate(sparsest.items()):
            kept = [100 * layer["nonzero_weights"] / layer["weights"] for layer in row["layers"]]
            ax.bar(
                [j + i * width for j in range(len(kept))],
                kept,
                width,
                label=f"{method} ({row['strength']})",
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("weights kept (%)")
        ax.legend(fontsize=7)

    figures = [
        ("Accuracy against compression", accuracy_vs("compression", "compression (x)", True)),
        (
            "Accuracy against effective FLOPs",
            accuracy_vs("effective_flops", "effective FLOPs", True),
        ),
        ("Kept fraction per layer (each method's sparsest run)", kept_per_layer),
    ]
    timed = [r for r in rows if r.get("speedups")]
    if timed:

        def speedups(ax: Any) -> None:
            forms = sorted({f for r in timed for f in r["speedups"]})
            width = 0.8 / len(forms)
            for i, form in enumerate(forms):
                ax.bar(
                    [j + i * width for j in range(len(timed))],
                    [r["speedups"].get(form, 0) for r in timed],
                    width,
                    label=form,
                )
            ax.set_xticks(
                [j + 0.4 - width / 2 for j in range(len(timed))],
                [f"{r['method']}\n{r['strength']}" for r in timed],
                fontsize=7,
            )
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_ylabel("speed-up over dense (batch 64, 1 thread)")
            ax.legend(fontsize=8)

        figures.append(("Measured speed-ups", speedups))
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(protocol_text(rows).strip())}</p>",
        "<table><tr>"
        + "".join(
            f"<th>{c}</th>"
            for c in (
                "method",
                "strength",
                "test error",
                "sparsity",
                "compression",
                "eff. FLOPs",
                "compacted",
                "compact FLOPs",
                "minutes",
            )
        )
        + "</tr>",
    ]
    for r in rows:
        cells = (
            r["method"],
            r["strength"],
            _fmt(r["test_error"], "pct"),
            _fmt(r["sparsity"], "pct"),
            _fmt(r["compression"], "x"),
            _fmt(r["effective_flops"], "flops"),
            _fmt(r["compact_architecture"], ""),
            _fmt(r["compact_flops"], "flops"),
            _fmt(r["minutes"], "min"),
        )
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    for caption, draw in figures:
        png = _figure_png(draw)
        if figure_dir is not None:
            slug = "".join(c if c.isalnum() else "_" for c in caption.lower()).strip("_")
            checkpoint.atomic_write_bytes(figure_dir / f"{slug[:40]}.png", base64.b64decode(png))
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{png}'>")
    return "\n".join(parts) + "\n"
