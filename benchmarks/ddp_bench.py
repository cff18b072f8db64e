"""Time per epoch of 2 processes (torchrun, gloo, 1 thread each) against 1 process on the
same global batches, with the accuracy and sparsity each reaches.

Runs ``learnprune train`` three times on one recipe: one process with 1 thread, one process
with 2 threads (all of this machine's cores), and ``torchrun --nproc_per_node 2`` with 1
thread per process. Same seed, same global batch size; the per-epoch seconds are read from
``metrics.jsonl`` (training plus the test-set evaluation; the first epoch is left out of
the median as warm-up).

    python benchmarks/ddp_bench.py --recipe recipes/lenet300-scl.toml --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "ddp"


def train(
    recipe: str, epochs: int, out: Path, processes: int, threads: int
) -> dict[str, object]:
    """One run; its per-epoch seconds, final accuracy and sparsity."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(processes)]
    command += ["-m", "learnprune", "train", "--recipe", recipe, "--epochs", str(epochs)]
    command += ["--out", str(out), "--no-progress", "--quiet"]
    subprocess.run(command, check=True, env=env)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "final.json").read_text())
    seconds = [line["seconds"] for line in lines]
    return {
        "processes": processes,
        "threads_per_process": threads,
        "epoch_seconds": seconds,
        "median_epoch_seconds": statistics.median(seconds[1:] or seconds),
        "test_accuracy": final["test_accuracy"],
        "sparsity": final["sparsity"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/lenet300-scl.toml")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    results = Path(args.out)
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for processes, threads in ((1, 1), (1, 2), (2, 1)):
        name = f"{processes}proc-{threads}thread"
        scratch = results / f".{name}"
        row = train(args.recipe, args.epochs, scratch, processes, threads)
        rows.append({"name": name, **row})
        kept = results / name  # the run's final.json, metrics.jsonl, config.json (no weights)
        kept.mkdir(exist_ok=True)
        for file in ("final.json", "metrics.jsonl", "config.json"):
            shutil.copy(scratch / file, kept / file)
        shutil.rmtree(scratch)
    base = rows[0]["median_epoch_seconds"]
    print("| processes × threads | s per epoch (median) | vs 1 × 1 | test accuracy | sparsity |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['processes']} × {row['threads_per_process']} | "
            f"{row['median_epoch_seconds']:.2f} | {base / row['median_epoch_seconds']:.2f}x | "
            f"{row['test_accuracy']:.2%} | {row['sparsity']:.2%} |"
        )
    summary = {"command": " ".join(sys.argv), "recipe": args.recipe, "runs": rows}
    (results / "ddp.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
