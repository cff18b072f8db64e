"""Running a list of configurations once each, keeping every run's results.

Each configuration runs through :func:`learnprune.runner.run` (the code path of
``learnprune train``) in ``<results>/.<name>.running`` and, when done, its ``final.json``,
``config.json`` and ``metrics.jsonl`` are kept in ``<results>/<name>/``. A configuration
whose ``final.json`` is already there is skipped, so an interrupted sweep resumes where it
stopped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from learnprune.config import RunConfig, read_recipe
from learnprune.report import compare
from learnprune.runner import run

ROOT = Path(__file__).resolve().parent
RECIPES = ROOT.parent / "recipes"
KEPT = ("final.json", "config.json", "metrics.jsonl")


def recipe(name: str, **method_options: object) -> RunConfig:
    """A shipped recipe (``recipes/<name>.toml``) with some method options replaced."""
    raw = read_recipe(RECIPES / f"{name}.toml")
    if method_options:
        method = raw.get("method", "dense")
        method = {"name": method} if isinstance(method, str) else dict(method)
        method.update(method_options)
        raw["method"] = method
    return RunConfig.from_dict(raw)


def run_all(configurations: Iterable[tuple[str, RunConfig]], results: Path) -> list[Path]:
    """Run what is not done yet; print one line per run and the comparison table."""
    done = []
    for name, config in configurations:
        target = results / name
        if (target / "final.json").exists():
            print(f"{name}: done already", flush=True)
            done.append(target)
            continue
        scratch = results / f".{name}.running"
        shutil.rmtree(scratch, ignore_errors=True)
        result = run(config, scratch, quiet=True)
        target.mkdir(parents=True, exist_ok=True)
        for file in KEPT:
            shutil.copy(scratch / file, target / file)
        shutil.rmtree(scratch)
        print(
            f"{name}: error {result['test_error']:.2%}, sparsity {result['sparsity']:.2%}, "
            f"{result['seconds'] / 60:.1f} min",
            flush=True,
        )
        done.append(target)
    print(compare(done))
    return done
