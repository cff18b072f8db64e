"""DessiLBI on MNIST: the regularization path, GMP at the path's sparsities, tickets.

Parts (``--part``):

* ``path``: one DessiLBI run of ``recipes/<model>-dessilbi.toml``; its ``metrics.jsonl``
  holds, per epoch, the test accuracy of ``W`` and of ``W* = W ⊙ 1[Γ ≠ 0]``, the sparsity of
  ``W*`` and the support of ``Γ`` per layer; a figure of both accuracies and the per-layer
  support along the path is written next to it;
* ``gmp``: GMP (``recipes/<model>-gmp.toml``, same epochs) at the sparsity of ``W*`` at
  the given path epochs (``--epochs-at``);
* ``ticket``: the lottery ticket at ``--ticket-epoch`` (the support then), retrained from
  the path's starting weights (``learnprune ticket``), and the dense model trained the same
  way (the path run's settings, cosine learning rate, ``--ticket-train-epochs``).

Results go to ``benchmarks/results/dessilbi/<run name>/``; finished runs are skipped.

    python benchmarks/dessilbi_bench.py --model lenet5 --part path
    python benchmarks/dessilbi_bench.py --model lenet5 --part ticket --ticket-epoch 10
    python benchmarks/dessilbi_bench.py --model lenet300 --part gmp --epochs-at 5 10 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from sweep import ROOT, recipe, run_all

from learnprune.cli import main as cli

PREFIX = {"lenet5": "lenet5", "lenet300": "lenet300", "lenet5-caffe": "lenet5caffe"}
RESULTS = ROOT / "results" / "dessilbi"


def path_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def plot_path(run_dir: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = path_rows(run_dir)
    epochs = [r["epoch"] for r in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
    top.plot(epochs, [100 * r["test_accuracy"] for r in rows], label="W (dense)")
    top.plot(epochs, [100 * r["test_accuracy_sparse"] for r in rows], label="W* = W·1[Γ≠0]")
    top.set_ylabel("test accuracy (%)")
    top.set_ylim(90, 100)
    top.legend()
    top.set_title(title)
    for layer in rows[-1]["support"]:
        bottom.plot(epochs, [r["support"][layer] for r in rows], label=layer)
    bottom.set_yscale("log")
    bottom.set_ylabel("|supp(Γ)| (weights)")
    bottom.set_xlabel("epoch")
    bottom.legend(fontsize=8)
    figure.tight_layout()
    target = run_dir / "path.png"
    figure.savefig(target, dpi=120)
    return target


def path_source(path_name: str, prefix: str, epoch: int) -> Path:
    """A run directory holding the path's checkpoint (with Γ's first-entry epochs) and its
    starting weights. Results keep only the JSON files, so the path's first ``epoch``
    epochs are run again: same seed, data order and learning rate (the recipe's milestones
    lie later), hence the same path up to float rounding; its per-epoch lines are compared
    with the stored ones and both supports printed.
    """
    stored = RESULTS / path_name
    if (stored / "checkpoint.pt").exists():
        return stored
    prefix_dir = RESULTS / f".{path_name}-to-epoch{epoch}.running"
    if not (prefix_dir / "final.json").exists():
        config = recipe(f"{prefix}-dessilbi")
        if any(m <= epoch for m in config.train.milestones):
            raise SystemExit(f"a milestone lies before epoch {epoch}: the prefix would differ")
        config.train.epochs = epoch
        shutil.rmtree(prefix_dir, ignore_errors=True)
        from learnprune.runner import run

        run(config, prefix_dir, quiet=True)
    again = path_rows(prefix_dir)
    first = path_rows(stored)[:epoch]
    same = all(
        a[k] == b[k]
        for a, b in zip(again, first, strict=True)
        for k in ("test_accuracy", "test_accuracy_sparse", "support")
    )
    verdict = "identical to" if same else "NOT identical to (float order; the ticket uses it)"
    print(f"path re-run to epoch {epoch}: {verdict} the stored path")
    print(f"  support at epoch {epoch}: re-run {again[-1]['support']}")
    print(f"  stored: {first[-1]['support']}")
    return prefix_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PREFIX), required=True)
    parser.add_argument("--part", choices=("path", "gmp", "ticket"), required=True)
    parser.add_argument("--epochs-at", type=int, nargs="*", default=[])
    parser.add_argument("--ticket-epoch", type=int)
    parser.add_argument("--ticket-train-epochs", type=int, default=20)
    args = parser.parse_args()
    prefix = PREFIX[args.model]
    path_name = f"{args.model}-dessilbi-path"
    path_dir = RESULTS / path_name

    if args.part == "path":
        run_all([(path_name, recipe(f"{prefix}-dessilbi"))], RESULTS)
        print(f"figure: {plot_path(path_dir, f'DessiLBI path, {args.model}, MNIST')}")
    elif args.part == "gmp":
        rows = {r["epoch"]: r for r in path_rows(path_dir)}
        epochs = json.loads((path_dir / "final.json").read_text())["epochs"]
        configurations = []
        for epoch in args.epochs_at:
            target = round(rows[epoch]["sparsity"], 4)
            config = recipe(f"{prefix}-gmp", target=target)
            config.train.epochs = epochs
            configurations.append((f"{args.model}-gmp-at-path-epoch{epoch}", config))
        run_all(configurations, RESULTS)
    else:
        if args.ticket_epoch is None:
            parser.error("--ticket-epoch is needed")
        ticket = RESULTS / f"{args.model}-ticket-epoch{args.ticket_epoch}"
        if not (ticket / "final.json").exists():
            scratch = RESULTS / f".{ticket.name}.running"
            shutil.rmtree(scratch, ignore_errors=True)
            source = path_source(path_name, prefix, args.ticket_epoch)
            code = cli(
                [
                    "ticket",
                    str(source),
                    "--epoch",
                    str(args.ticket_epoch),
                    "--epochs",
                    str(args.ticket_train_epochs),
                    "--set",
                    'train.lr_schedule="cosine"',
                    "--out",
                    str(scratch),
                    "--quiet",
                ]
            )
            if code:
                return code
            ticket.mkdir(parents=True, exist_ok=True)
            for file in ("final.json", "config.json", "metrics.jsonl"):
                shutil.copy(scratch / file, ticket / file)
            shutil.rmtree(scratch)
        dense = recipe(f"{prefix}-dessilbi")
        dense.method, dense.method_options = "dense", {}
        dense.train.epochs = args.ticket_train_epochs
        dense.train.lr_schedule = "cosine"  # both retrainings: the same cosine schedule
        run_all([(f"{args.model}-dense-{args.ticket_train_epochs}ep", dense)], RESULTS)
        final = json.loads((ticket / "final.json").read_text())
        print(
            f"ticket at epoch {args.ticket_epoch}: error {final['test_error']:.2%}, "
            f"sparsity {final['sparsity']:.2%}"
        )
    print(json.dumps({"command": " ".join(sys.argv)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
