"""Dense, one-shot magnitude and GMP baselines at 90/95/98% sparsity (BENCHMARKS.md).

Runs each configuration with the shipped recipes through the same code path as
``learnprune train`` and keeps each run's ``final.json`` under
``benchmarks/results/<model>-<method>[-<sparsity>]/``. Runs that already have a
``final.json`` there are skipped, so an interrupted sweep picks up where it stopped.

    python benchmarks/baselines.py --model lenet300           # about 4 minutes here
    python benchmarks/baselines.py --model lenet5-caffe       # about 35 minutes here
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from learnprune.config import RunConfig, read_recipe
from learnprune.report import compare
from learnprune.runner import run

ROOT = Path(__file__).resolve().parent
RECIPES = {"lenet300": "lenet300", "lenet5-caffe": "lenet5caffe"}
TARGETS = (0.90, 0.95, 0.98)


def configurations(model: str, targets: tuple[float, ...]) -> list[tuple[str, RunConfig]]:
    prefix = RECIPES[model]
    recipes = ROOT.parent / "recipes"
    out = [(f"{model}-dense", RunConfig.from_dict(read_recipe(recipes / f"{prefix}-dense.toml")))]
    for method in ("magnitude", "gmp"):
        for target in targets:
            raw = read_recipe(recipes / f"{prefix}-{method}.toml")
            raw["method"]["target"] = target
            out.append((f"{model}-{method}-{round(target * 100)}", RunConfig.from_dict(raw)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), required=True)
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args()
    results = Path(args.results)
    done = []
    for name, config in configurations(args.model, tuple(args.targets)):
        target = results / name
        if (target / "final.json").exists():
            print(f"{name}: done already")
            done.append(target)
            continue
        scratch = results / f".{name}.running"
        shutil.rmtree(scratch, ignore_errors=True)
        result = run(config, scratch, quiet=True)
        target.mkdir(parents=True, exist_ok=True)
        for file in ("final.json", "config.json", "metrics.jsonl"):
            shutil.copy(scratch / file, target / file)
        shutil.rmtree(scratch)
        print(
            f"{name}: error {result['test_error']:.2%}, sparsity {result['sparsity']:.2%}, "
            f"{result['seconds'] / 60:.1f} min",
            flush=True,
        )
        done.append(target)
    print(compare(done))
    print(json.dumps({"command": " ".join(sys.argv)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
