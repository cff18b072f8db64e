"""Every method at the same sparsities, from one dense model, with the same phases.

Protocol (one table, the same for every method):

1. ``dense``: the model trained dense (``--dense RUN_DIR``, or ``--dense-epochs`` into
   ``OUT/dense``); every run below starts from its weights (``--init``);
2. ``<method>-<target>-s<seed>``: the method's shipped recipe (its own optimizer and
   learning rate) for ``--learn + --finetune`` epochs: the mask is learned (or, for GMP,
   pruned on its cubic schedule) over the first ``--learn`` epochs
   (``begin_epoch = 0``, ``end_epoch = learn``), then fine-tuned with the mask fixed
   (the learned methods' exact finish sets the mask to the target by their own scores);
3. each run is a ``learnprune train`` subprocess (what a user runs), one thread, and
   writes its ``final.json``; a run whose ``final.json`` exists is skipped, so the
   script resumes where it stopped. The order is seed-major: seed 0 of every row first.
   Several copies may run side by side on one ``OUT`` (one per core): each run is claimed
   by a lock on ``OUT/<name>.lock``, and a copy skips the runs another holds.

``summary.json`` and ``table.md`` (mean ± std over the seeds that finished) are rewritten
after every run.

    python benchmarks/sparsity_table.py --model lenet300 --out runs/l300 \\
        --dense runs/l300/dense --methods gmp scl diffprune \\
        --targets 0.95 0.98 0.99 0.995 --seeds 0 1 2 --learn 8 --finetune 4
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RECIPES = {
    "lenet300": {
        "dense": "lenet300-dense",
        "gmp": "lenet300-gmp",
        "scl": "lenet300-scl",
        "diffprune": "lenet300-diffprune",
        "hardconcrete": "lenet300-hardconcrete-element",
        "dessilbi": "lenet300-dessilbi",
        "magnitude": "lenet300-magnitude",
    },
    "lenet5-caffe": {
        "dense": "lenet5caffe-dense",
        "gmp": "lenet5caffe-gmp",
        "scl": "lenet5caffe-scl",
        "diffprune": "lenet5caffe-diffprune",
        "hardconcrete": "lenet5caffe-hardconcrete-element",
        "dessilbi": "lenet5caffe-dessilbi",
        "magnitude": "lenet5caffe-magnitude",
    },
}


def train(args: Sequence[str], out: Path, log: Path) -> int:
    """One ``learnprune train`` subprocess on one thread; its output goes to ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "learnprune", "train", *args, "--out", str(out)]
    command += ["--no-progress"]
    with log.open("w") as stream:
        stream.write(" ".join(command) + "\n")
        stream.flush()
        return subprocess.call(command, stdout=stream, stderr=subprocess.STDOUT, env=env)


def phase_arguments(method: str, target: float, learn: float, finetune: float) -> list[str]:
    """The recipe overrides that give ``method`` the table's phases and target."""
    epochs = learn + finetune
    arguments = ["--epochs", f"{epochs:g}", "--target", f"{target:g}"]
    if method == "magnitude":
        return [*arguments, "--set", "method.prune_epoch=0"]
    if method == "dessilbi":  # its path starts at step 0; the exact finish at end_epoch
        return [*arguments, "--set", f"method.end_epoch={learn:g}"]
    return [
        *arguments,
        "--set",
        "method.begin_epoch=0",
        "--set",
        f"method.end_epoch={learn:g}",
    ]


def row(final: dict[str, Any]) -> dict[str, float]:
    return {
        "test_error": final["test_error"],
        "sparsity": final["sparsity"],
        "effective_flops": final.get("effective_flops") or float("nan"),
        "flops": final.get("flops") or float("nan"),
        "seconds": final.get("seconds") or float("nan"),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(out: Path, methods: Sequence[str], targets: Sequence[float]) -> list[dict]:
    """Mean ± std per (method, target) over the seeds whose ``final.json`` exists."""
    rows = []
    for target in targets:
        for method in methods:
            finals = sorted(out.glob(f"{method}-{target:g}-s*/final.json"))
            if not finals:
                continue
            runs = [row(json.loads(path.read_text())) for path in finals]
            entry: dict[str, Any] = {
                "method": method,
                "target": target,
                "seeds": [path.parent.name.rsplit("-s", 1)[1] for path in finals],
            }
            for key in ("test_error", "sparsity", "effective_flops", "seconds"):
                entry[key] = mean_std([r[key] for r in runs])
            rows.append(entry)
    return rows


def markdown(rows: Sequence[dict], dense: dict[str, Any] | None) -> str:
    lines = [
        "| target | method | seeds | error % (mean ± std) | sparsity % | effective MFLOPs |",
        "|---|---|---|---|---|---|",
    ]
    if dense:
        lines.append(
            f"| - | dense | 1 | {100 * dense['test_error']:.2f} | 0.00 | "
            f"{(dense.get('effective_flops') or dense.get('flops') or 0) / 1e6:.3f} |"
        )
    for r in rows:
        error, error_std = r["test_error"]
        lines.append(
            f"| {100 * r['target']:g}% | {r['method']} | {len(r['seeds'])} | "
            f"{100 * error:.2f} ± {100 * error_std:.2f} | {100 * r['sparsity'][0]:.2f} | "
            f"{r['effective_flops'][0] / 1e6:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lenet300", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dense", type=Path, help="a finished dense run directory")
    parser.add_argument("--dense-epochs", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=["gmp", "scl", "diffprune"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.95, 0.98, 0.99, 0.995])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--learn", type=float, default=8)
    parser.add_argument("--finetune", type=float, default=4)
    parser.add_argument(
        "--one-seed-below",
        type=float,
        default=0.98,
        help="targets below this get seed 0 only (they make no claim)",
    )
    parser.add_argument(
        "--summarise", action="store_true", help="only rewrite the tables of finished runs"
    )
    args = parser.parse_args()
    recipes = RECIPES[args.model]
    unknown = [m for m in args.methods if m not in recipes]
    if unknown:
        parser.error(f"no recipe for {', '.join(unknown)} on {args.model}")
    args.out.mkdir(parents=True, exist_ok=True)
    dense = args.dense or args.out / "dense"
    if not (dense / "final.json").is_file():
        if args.dense:
            parser.error(f"{dense} has no final.json (an unfinished or foreign directory)")
        code = train(
            ["--recipe", recipes["dense"], "--epochs", str(args.dense_epochs)],
            dense,
            args.out / "dense.log",
        )
        if code:
            sys.exit(f"the dense run failed (exit {code}); see {args.out / 'dense.log'}")
    dense_final = json.loads((dense / "final.json").read_text())
    if args.summarise:
        write_summary(args, dense, dense_final)
        return
    for seed in args.seeds:
        for target in args.targets:
            if seed != args.seeds[0] and target < args.one_seed_below:
                continue
            for method in args.methods:
                name = f"{method}-{target:g}-s{seed}"
                if (args.out / name / "final.json").is_file():
                    continue
                lock = (args.out / f"{name}.lock").open("w")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another copy of this script runs it
                    lock.close()
                    continue
                if (args.out / name / "final.json").is_file():  # finished meanwhile
                    lock.close()
                    continue
                if (args.out / name).exists():  # an interrupted run: start it again
                    subprocess.call(["rm", "-rf", str(args.out / name)])
                arguments = ["--recipe", recipes[method], "--init", str(dense), "--seed", str(seed)]
                arguments += phase_arguments(method, target, args.learn, args.finetune)
                code = train(arguments, args.out / name, args.out / f"{name}.log")
                lock.close()
                print(f"{name}: exit {code}", flush=True)
                write_summary(args, dense, dense_final)


def write_summary(args: argparse.Namespace, dense: Path, dense_final: dict[str, Any]) -> None:
    """``summary.json`` and ``table.md`` of the runs of ``args.methods`` that finished."""
    rows = summarise(args.out, args.methods, args.targets)
    summary = {
        "protocol": vars(args) | {"out": str(args.out), "dense": str(dense)},
        "dense": row(dense_final),
        "rows": rows,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "table.md").write_text(markdown(rows, dense_final))


if __name__ == "__main__":
    main()
