"""SCL on MNIST: the λ sweep next to GMP at the same sparsity, and the ablations.

Parts (``--part``):

* ``sweep``: SCL at several λ (``recipes/<model>-scl.toml`` otherwise), and for each the
  GMP baseline (``recipes/<model>-gmp.toml``) with its target set to the sparsity SCL
  reached, same epochs and schedule;
* ``ste``: the STE ablation at the recipe's λ: identity, leaky_relu, softplus and the
  zero-region relu that breaks the paper's principle;
* ``normalize``: the normalisation ablation: none, l2, rms, max;
* ``structured``: structured SCL (coupled channel groups) at several λ, or with λ adapted
  to FLOPs budgets (``--flops``).

Each run's ``final.json`` goes to ``benchmarks/results/scl/<run name>/``; finished runs
are skipped, so an interrupted sweep resumes.

    python benchmarks/scl_sweep.py --model lenet300 --part sweep --lams 0.001 0.003 0.01 0.03
    python benchmarks/scl_sweep.py --model lenet5-caffe --part structured --lams 0.01 0.03
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sweep import ROOT, recipe, run_all

PREFIX = {"lenet300": "lenet300", "lenet5-caffe": "lenet5caffe"}
# (normalisation, λ): the gradients differ in scale (see learnprune.methods.scl), so each
# gets a λ near the default's sparsity; without normalisation no single λ does (1e-5 left
# LeNet-300-100 dense in an exploratory run), so two are shown. None = the recipe's λ.
NORMALIZE_LAM = [("none", 1e-4), ("none", 1e-3), ("l2", None), ("rms", 0.1), ("max", 0.01)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PREFIX), required=True)
    parser.add_argument(
        "--part", choices=("sweep", "ste", "normalize", "structured"), required=True
    )
    parser.add_argument("--lams", type=float, nargs="*", default=[])
    parser.add_argument(
        "--flops",
        type=float,
        nargs="*",
        default=[],
        help="structured: FLOPs budgets (fraction of dense kept) that λ is adapted to",
    )
    parser.add_argument("--lam-rate", type=float, default=1e-4)
    parser.add_argument("--results", default=str(ROOT / "results" / "scl"))
    args = parser.parse_args()
    results = Path(args.results)
    prefix = PREFIX[args.model]
    scl = f"{prefix}-scl"

    if args.part == "sweep":
        for lam in args.lams:
            name = f"{args.model}-scl-lam{lam:g}"
            (done,) = run_all([(name, recipe(scl, lam=lam))], results)
            sparsity = json.loads((done / "final.json").read_text())["sparsity"]
            target = round(sparsity, 4)
            run_all([(f"{name}-gmp-match", recipe(f"{prefix}-gmp", target=target))], results)
    elif args.part == "ste":
        configurations = [
            (f"{args.model}-scl-ste-{ste}", recipe(scl, ste=ste))
            for ste in ("identity", "leaky_relu", "softplus", "relu")
        ]
        run_all(configurations, results)
    elif args.part == "normalize":
        configurations = []
        for norm, lam in NORMALIZE_LAM:
            options = {"normalize": norm} if lam is None else {"normalize": norm, "lam": lam}
            name = f"{args.model}-scl-normalize-{norm}" + (f"-lam{lam:g}" if lam else "")
            configurations.append((name, recipe(scl, **options)))
        run_all(configurations, results)
    else:
        configurations = [
            (f"{args.model}-scl-coupled-lam{lam:g}", recipe(f"{scl}-structured", lam=lam))
            for lam in args.lams
        ]
        configurations += [
            (
                f"{args.model}-scl-coupled-flops{keep:g}",
                recipe(f"{scl}-structured", target={"flops": keep}, lam_rate=args.lam_rate),
            )
            for keep in args.flops
        ]
        run_all(configurations, results)
    print(json.dumps({"command": " ".join(sys.argv)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
