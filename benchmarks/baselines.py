"""Dense, one-shot magnitude and GMP at 90/95/98% sparsity (BENCHMARKS.md).

Runs the shipped recipes (``recipes/<model>-{dense,magnitude,gmp}.toml``) with the target
replaced, and keeps each run's ``final.json`` under ``benchmarks/results/<run name>/``;
finished runs are skipped, so an interrupted sweep picks up where it stopped.

    python benchmarks/baselines.py --model lenet300           # about 5 minutes here
    python benchmarks/baselines.py --model lenet5-caffe       # about 30 minutes here
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweep import ROOT, recipe, run_all

PREFIX = {"lenet300": "lenet300", "lenet5-caffe": "lenet5caffe"}
TARGETS = (0.90, 0.95, 0.98)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PREFIX), required=True)
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args()
    prefix = PREFIX[args.model]
    configurations = [(f"{args.model}-dense", recipe(f"{prefix}-dense"))]
    for method in ("magnitude", "gmp"):
        for target in args.targets:
            name = f"{args.model}-{method}-{round(target * 100)}"
            configurations.append((name, recipe(f"{prefix}-{method}", target=target)))
    run_all(configurations, Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
