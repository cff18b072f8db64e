"""Do pruned models really run faster here? Compact models and sparse Linear formats.

Parts (``--part``):

* ``compact``: reference models with random structured masks (``drop`` of every coupled
  channel group removed, :func:`learnprune.compact.random_structured_masks`), compacted;
  latency of the dense and the compact model at batch 64 (and 1), measured speed-up, the
  FLOPs ratio, and their quotient (target: speed-up / FLOPs ratio ≥ 0.8);
* ``sparse``: one Linear layer with a random unstructured mask (block-structured for BSR)
  at sparsities 50-99%, dense ``F.linear`` against :class:`~learnprune.sparse_linear.
  SparseLinear` as CSR and BSR (int32 indices) at batch 1 and 64; the break-even sparsity
  of each format is the lowest measured sparsity from which it is never slower than dense.

Timing: :func:`learnprune.bench.measure` (warm-up, alternating rounds, medians), one thread
unless ``--threads``. Results: ``benchmarks/results/speed/<part>.json``.

    python benchmarks/speed_bench.py --part compact
    python benchmarks/speed_bench.py --part sparse --layer 800x500
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from sweep import ROOT
from torch import nn

from learnprune.bench import measure
from learnprune.compact import apply_masks, random_structured_masks
from learnprune.engine import configure_torch
from learnprune.models import build_model
from learnprune.sparse_linear import SparseLinear

RESULTS = ROOT / "results" / "speed"
SHAPES = {"lenet5-caffe": (1, 28, 28), "vgg16": (3, 32, 32), "resnet20": (3, 32, 32)}


def compact_part(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in args.models:
        for drop in args.drops:
            torch.manual_seed(0)
            model = build_model(name).eval()
            shape = SHAPES[name]
            apply_masks(model, random_structured_masks(model, shape, drop, seed=0))
            timings = measure(
                model,
                shape,
                forms=("dense", "compact"),
                batches=args.batches,
                threads=args.threads,
                repeats=args.repeats,
            )
            for t in timings:
                if t.form != "compact":
                    continue
                dense = next(
                    d
                    for d in timings
                    if d.form == "dense" and (d.batch, d.threads) == (t.batch, t.threads)
                )
                flops_ratio = dense.flops / t.flops
                rows.append(
                    {
                        "model": name,
                        "drop": drop,
                        "batch": t.batch,
                        "threads": t.threads,
                        "dense_ms": dense.median_ms,
                        "compact_ms": t.median_ms,
                        "speedup": t.speedup,
                        "flops_ratio": flops_ratio,
                        "speedup_over_flops_ratio": t.speedup / flops_ratio,
                    }
                )
                print(
                    f"{name} drop {drop:.0%} batch {t.batch}: dense {dense.median_ms:.3f} ms, "
                    f"compact {t.median_ms:.3f} ms, speed-up {t.speedup:.2f}, FLOPs ratio "
                    f"{flops_ratio:.2f}, quotient {t.speedup / flops_ratio:.2f}",
                    flush=True,
                )
    return rows


def _median_ms(fn, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():  # inference_mode breaks F.linear on CSR weights (torch 2.13)
        for _ in range(3):
            fn(x)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def sparse_part(args: argparse.Namespace) -> list[dict]:
    out_features, in_features = (int(v) for v in args.layer.split("x"))
    rows = []
    for sparsity in args.sparsities:
        torch.manual_seed(0)
        layer = nn.Linear(in_features, out_features)
        with torch.no_grad():
            keep = torch.rand_like(layer.weight) >= sparsity
            layer.weight.mul_(keep)
        block = args.block
        blocked = nn.Linear(in_features, out_features)
        with torch.no_grad():  # a block mask of the same sparsity for BSR
            grid = torch.rand(out_features // block + 1, in_features // block + 1) >= sparsity
            mask = grid.repeat_interleave(block, 0).repeat_interleave(block, 1)
            blocked.weight.mul_(mask[:out_features, :in_features])
        forms = {
            "dense": layer,
            "csr": SparseLinear.from_linear(layer, "csr"),
            "bsr": SparseLinear.from_linear(blocked, "bsr", block=block),
            "dense (block mask)": blocked,
        }
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                x = torch.randn(batch, in_features)
                times = {k: [] for k in forms}
                for _ in range(args.rounds):  # alternate: drift hits every form alike
                    for key, module in forms.items():
                        times[key].append(_median_ms(module, x, args.repeats // args.rounds))
                ms = {k: statistics.median(v) for k, v in times.items()}
                row = {
                    "layer": args.layer,
                    "sparsity": sparsity,
                    "batch": batch,
                    "threads": threads,
                    "dense_ms": ms["dense"],
                    "csr_speedup": ms["dense"] / ms["csr"],
                    "bsr_speedup": ms["dense (block mask)"] / ms["bsr"],
                    "bsr_block": block,
                }
                rows.append(row)
                print(
                    f"{args.layer} {sparsity:.0%} batch {batch} threads {threads}: dense "
                    f"{ms['dense']:.3f} ms, CSR x{row['csr_speedup']:.2f}, BSR{block} "
                    f"x{row['bsr_speedup']:.2f}",
                    flush=True,
                )
    for fmt in ("csr", "bsr"):
        for batch in args.batches:
            for threads in args.threads:
                cases = sorted(
                    (r for r in rows if r["batch"] == batch and r["threads"] == threads),
                    key=lambda r: r["sparsity"],
                )
                even = None
                for i, r in enumerate(cases):
                    if all(c[f"{fmt}_speedup"] >= 1.0 for c in cases[i:]):
                        even = r["sparsity"]
                        break
                print(f"break-even {fmt} batch {batch} threads {threads}: {even}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("compact", "sparse"), required=True)
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    parser.add_argument("--drops", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--layer", default="800x500", help="OUTxIN of the Linear layer")
    parser.add_argument(
        "--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
    )
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_torch()
    rows = compact_part(args) if args.part == "compact" else sparse_part(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{args.part}{'' if args.part == 'compact' else '-' + args.layer}.json"
    target.write_text(
        json.dumps(
            {
                "rows": rows,
                "command": " ".join(sys.argv),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=1,
        )
    )
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
