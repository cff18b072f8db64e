"""Test error against compression of every kept run of a model, one series per method,
with Sparse Variational Dropout's published point (METHODS.md section 6) for reference.

    python benchmarks/plot_frontier.py --model lenet300 \
        --out benchmarks/results/scl/frontier_lenet300.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SPARSE_VD = {"lenet300": (68, 1.92), "lenet5-caffe": (280, 0.75)}
DENSE_PUBLISHED = {"lenet300": 1.64, "lenet5-caffe": 0.80}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SPARSE_VD), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="*", help="only these methods (default: all)")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    dense = None
    for final in sorted((ROOT / "results").rglob("final.json")):
        result = json.loads(final.read_text())
        if result.get("model") != args.model or result.get("data") != "mnist":
            continue
        if (
            result.get("epochs") != 20
            or "-normalize-" in final.parent.name
            or "-ste-" in final.parent.name
        ):
            continue  # only the 20-epoch comparison runs, not the ablations
        method = result["method"]
        if args.methods and method not in args.methods:
            continue
        if method == "dense":
            dense = 100 * result["test_error"]
            continue
        if "coupled" in final.parent.name:
            method += " (structured)"
        series[method].append((result["compression"], 100 * result["test_error"]))
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for method, points in sorted(series.items()):
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], "o-", label=method)
    vd_compression, vd_error = SPARSE_VD[args.model]
    axis.plot([vd_compression], [vd_error], "k*", markersize=12, label="Sparse VD (published)")
    if dense is not None:
        axis.axhline(dense, color="grey", linestyle=":", label=f"dense, ours ({dense:.2f}%)")
    axis.set_xscale("log")
    axis.set_xlabel("compression (Conv/Linear weights / nonzero)")
    axis.set_ylabel("test error (%)")
    axis.set_title(f"{args.model}, MNIST, 20 epochs each")
    axis.legend(fontsize=8)
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}: " + ", ".join(f"{k} ({len(v)})" for k, v in series.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
