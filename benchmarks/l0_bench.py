"""DiffPrune and the hard-concrete L0 baseline on MNIST.

Parts (``--part``):

* ``unstructured``: one gate per weight, DiffPrune (``recipes/<model>-diffprune.toml``) or
  hard-concrete (``--methods hardconcrete``: ``recipes/<model>-hardconcrete-element.toml``),
  at the sparsity targets ``--targets`` (the λ budget controller) or at fixed strengths
  ``--lams``, to stand beside GMP at the same sparsities and epochs and SCL;
* ``gmp``: GMP (``recipes/<model>-gmp.toml``, same epochs) at the sparsity each finished
  unstructured run of the model reached (``<run>-gmp-match``);
* ``structured``: gates per Linear input neuron and per conv feature map (``l0_units``):
  the hard-concrete reference recipe (``recipes/<model>-hardconcrete.toml``) for
  ``--epochs`` epochs; DiffPrune with the same groups, optimizer, batch and epochs at the
  sparsity ``--structured-target``; both at each fixed ``--lams`` and at each FLOPs budget
  ``--flops`` (fraction of the dense FLOPs kept). ``--schedule`` replaces the recipes'
  learning-rate schedule (names get a suffix).

Results go to ``benchmarks/results/l0/<run name>/``; finished runs are skipped.

    python benchmarks/l0_bench.py --model lenet300 --part unstructured --targets 0.9 0.95 0.98
    python benchmarks/l0_bench.py --model lenet5-caffe --part structured --flops 0.06
"""

from __future__ import annotations

import argparse
import json
import sys

from sweep import ROOT, recipe, run_all

PREFIX = {"lenet300": "lenet300", "lenet5-caffe": "lenet5caffe"}
RESULTS = ROOT / "results" / "l0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PREFIX), required=True)
    parser.add_argument("--part", choices=("unstructured", "structured", "gmp"), required=True)
    parser.add_argument("--targets", type=float, nargs="*", default=[0.9, 0.95, 0.98])
    parser.add_argument("--flops", type=float, nargs="*", default=[])
    parser.add_argument("--lams", type=float, nargs="*", default=[], help="fixed λ, no target")
    parser.add_argument("--structured-target", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument(
        "--schedule", choices=("cosine", "step", "constant"), help="replace the recipe's"
    )
    args = parser.parse_args()
    prefix = PREFIX[args.model]
    configurations = []
    if args.part == "gmp":
        for run_dir in sorted(RESULTS.glob(f"{args.model}-*")):
            final_file = run_dir / "final.json"
            if "units" in run_dir.name or run_dir.name.endswith("gmp-match"):
                continue
            if not final_file.is_file():
                continue
            final = json.loads(final_file.read_text())
            config = recipe(f"{prefix}-gmp", target=round(final["sparsity"], 4))
            config.train.epochs = final["epochs"]
            configurations.append((f"{run_dir.name}-gmp-match", config))
    elif args.part == "unstructured":
        for method in args.methods or ["diffprune"]:
            name = f"{prefix}-diffprune" if method == "diffprune" else f"{prefix}-{method}-element"
            for target in args.targets:
                config = recipe(name, target=target)
                config.train.epochs = args.epochs
                configurations.append((f"{args.model}-{method}-{round(target * 100)}", config))
            for lam in args.lams:
                config = recipe(name, lam=lam, target=None)
                config.train.epochs = args.epochs
                configurations.append((f"{args.model}-{method}-lam{lam:g}", config))
    else:
        for method in args.methods or ["hardconcrete", "diffprune"]:
            hard = method == "hardconcrete"
            name = f"{prefix}-hardconcrete" if hard else f"{prefix}-diffprune-structured"
            if hard or args.structured_target:
                options = {} if hard else {"target": args.structured_target}
                config = recipe(name, **options)
                config.train.epochs = args.epochs
                label = "reference" if hard else f"sparsity{args.structured_target:g}"
                run_name = f"{args.model}-{method}-units-{label}-{args.epochs}ep"
                configurations.append((run_name, config))
            for lam in args.lams:
                config = recipe(name, lam=lam, target=None)
                config.train.epochs = args.epochs
                configurations.append(
                    (f"{args.model}-{method}-units-lam{lam:g}-{args.epochs}ep", config)
                )
            for keep in args.flops:
                config = recipe(name, target={"flops": keep})
                config.train.epochs = args.epochs
                configurations.append(
                    (f"{args.model}-{method}-units-flops{keep:g}-{args.epochs}ep", config)
                )
    if args.schedule:
        configurations = [(f"{name}-{args.schedule}", config) for name, config in configurations]
        for _name, config in configurations:
            config.train.lr_schedule = args.schedule
    run_all(configurations, RESULTS)
    for name, _config in configurations:
        final = json.loads((RESULTS / name / "final.json").read_text())
        small = final.get("compact", {})
        compacted = (
            f"; compacted {small['architecture']}, {small['flops'] / 2:,.0f} multiply-adds"
            if "flops" in small
            else ""
        )
        print(
            f"{name}: {final['architecture']}, error {final['test_error']:.2%}, "
            f"sparsity {final['sparsity']:.2%}, FLOPs {final['effective_flops']:,} "
            f"({final['effective_flops'] / 2:,.0f} multiply-adds){compacted}"
        )
    print(json.dumps({"command": " ".join(sys.argv)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
