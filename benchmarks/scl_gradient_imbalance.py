"""How unbalanced are SCL's mask gradients across features? (the reason for normalising)

Trains LeNet-300-100 (or LeNet-5-Caffe) on MNIST with SCL for one epoch without
normalisation and without λ, and records, every 50 steps, the norm of the task gradient
``W ⊙ ∂L/∂W̃`` of the mask variables of each feature (an output unit: one row of a weight;
one filter of a conv). Writes a figure of the per-feature RMS gradient (median over the
recorded steps) for every layer, sorted, on a log scale, and prints the spread (largest /
smallest feature, and 90th / 10th percentile) per layer.

    python benchmarks/scl_gradient_imbalance.py --model lenet300
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from learnprune.data import load_dataset
from learnprune.engine import configure_torch
from learnprune.methods import SCL
from learnprune.models import build_model

ROOT = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default=str(ROOT / "results" / "scl"))
    args = parser.parse_args()
    configure_torch()
    torch.manual_seed(0)
    data = load_dataset("mnist")
    model = build_model(args.model)
    method = SCL(model, lam=0.0, normalize="none")
    optimizer = torch.optim.SGD(method.model_parameters(), lr=0.05, momentum=0.9)
    records: dict[str, list[torch.Tensor]] = {name: [] for name in method.gates}
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
    for step in range(args.steps):
        index = order[(step * 100) % len(order) :][:100]
        loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
        optimizer.zero_grad()
        for gate in method.gates.values():
            gate.mask_variable.grad = None
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            for name, gate in method.gates.items():
                rows = gate.mask_variable.grad.reshape(method.features[name], -1)
                records[name].append(rows.square().mean(1).sqrt())
    summary = {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for name, rows in records.items():
        per_feature = torch.stack(rows).median(0).values.sort(descending=True).values
        per_feature = per_feature[per_feature > 0]
        q90, q10 = torch.quantile(per_feature, 0.9), torch.quantile(per_feature, 0.1)
        summary[name] = {
            "features": len(per_feature),
            "max_over_min": float(per_feature[0] / per_feature[-1]),
            "p90_over_p10": float(q90 / q10),
            "median": float(per_feature.median()),
        }
        axis.plot(torch.linspace(0, 1, len(per_feature)), per_feature, label=name)
    axis.set_yscale("log")
    axis.set_xlabel("features of the layer, sorted (fraction)")
    axis.set_ylabel("RMS mask gradient of the feature")
    axis.set_title(f"SCL task gradient of the mask variables, {args.model}, MNIST")
    axis.legend()
    figure.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / f"mask_gradient_imbalance_{args.model}.png", dpi=120)
    (out / f"mask_gradient_imbalance_{args.model}.json").write_text(
        json.dumps({"command": " ".join(sys.argv), "layers": summary}, indent=2) + "\n"
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
