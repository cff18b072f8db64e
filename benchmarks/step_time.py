"""Training step time of each method over the plain model (SGD with momentum), one run.

A step is forward, cross-entropy, backward and an SGD-momentum update (of the weights and
the method's own tensors), on a fixed batch, as the engine does it (the method's
``regularizer()`` and ``after_step()`` included). The plain model and every method are
timed in alternating rounds in the same process, so drift of the machine hits all alike;
the ratio of the medians is reported, of wall-clock time (``ratio``) and of the process's
CPU time (``cpu_ratio``: on a machine shared with other jobs it leaves out the time spent
waiting for a core, which wall-clock rounds of a few milliseconds pick up unevenly).

    python benchmarks/step_time.py                        # lenet300 and lenet5-caffe
    python benchmarks/step_time.py --models lenet300 --methods masked scl --rounds 31
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from learnprune.config import TrainConfig
from learnprune.engine import configure_torch
from learnprune.methods import (
    SCL,
    Dense,
    DessiLBIMethod,
    DiffPrune,
    HardConcrete,
    Magnitude,
    PruningMethod,
)
from learnprune.models import build_model


def make_step(
    name: str, attach: Callable[[torch.nn.Module], PruningMethod], batch: int
) -> Callable[[int], tuple[float, float, float]]:
    """A function running ``steps`` training steps; it returns the mean time of a whole
    step, of ``optimizer.step()`` alone, and the mean CPU time of a whole step."""
    torch.manual_seed(0)
    model = build_model(name)
    method = attach(model)
    optimizer = method.build_optimizer(TrainConfig(lr=0.01)) or torch.optim.SGD(
        method.model_parameters() + method.parameters(), lr=0.01, momentum=0.9
    )
    x = torch.randn(batch, *model.input_shape)
    y = torch.randint(0, 10, (batch,))

    def run(steps: int) -> tuple[float, float, float]:
        optimizer_time = 0.0
        cpu_start = time.process_time()
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y) + method.regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            before = time.perf_counter()
            optimizer.step()
            optimizer_time += time.perf_counter() - before
            method.after_step()
        wall = (time.perf_counter() - start) / steps
        return wall, optimizer_time / steps, (time.process_time() - cpu_start) / steps

    return run


METHODS: dict[str, Callable[[torch.nn.Module], PruningMethod]] = {
    "masked": lambda m: Magnitude(m, target=0.9),  # fixed element masks (magnitude, GMP)
    "scl": lambda m: SCL(m, lam=0.01),
    "dessilbi": DessiLBIMethod,  # the optimizer itself; the plain run uses SGD momentum
    "diffprune": lambda m: DiffPrune(m, lam=1.0),  # element gates, deterministic
    "diffprune-stochastic": lambda m: DiffPrune(m, lam=1.0, mode="stochastic"),
    "hardconcrete": HardConcrete,  # neuron/filter gates, the reference's groups
}


def measure(name: str, methods: list[str], batch: int, rounds: int, steps: int) -> list[dict]:
    variants = {"plain": make_step(name, Dense, batch)}
    variants.update({key: make_step(name, METHODS[key], batch) for key in methods})
    times: dict[str, list[tuple[float, float, float]]] = {key: [] for key in variants}
    for run in variants.values():
        run(steps)  # warm-up
    for _ in range(rounds):
        for key, run in variants.items():
            times[key].append(run(steps))

    def median(key: str, part: int) -> float:
        return statistics.median(t[part] for t in times[key])

    plain, plain_optimizer = median("plain", 0), median("plain", 1)
    return [
        {
            "model": name,
            "method": key,
            "batch": batch,
            "plain_ms": plain * 1e3,
            "method_ms": median(key, 0) * 1e3,
            "ratio": median(key, 0) / plain,
            "plain_optimizer_ms": plain_optimizer * 1e3,
            "method_optimizer_ms": median(key, 1) * 1e3,
            "optimizer_ratio": median(key, 1) / plain_optimizer,
            "plain_cpu_ms": median("plain", 2) * 1e3,
            "method_cpu_ms": median(key, 2) * 1e3,
            "cpu_ratio": median(key, 2) / median("plain", 2),
        }
        for key in methods
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5-caffe"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    configure_torch()
    rows = [
        row
        for name in args.models
        for row in measure(name, args.methods, args.batch, args.rounds, args.steps)
    ]
    print(
        "| model | method | batch | plain step (ms) | method step (ms) | ratio "
        "| optimizer.step() ratio | CPU time ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['method']} | {row['batch']} | {row['plain_ms']:.3f} | "
            f"{row['method_ms']:.3f} | {row['ratio']:.3f} | {row['optimizer_ratio']:.3f} | "
            f"{row['cpu_ratio']:.3f} |"
        )
    print(
        json.dumps(
            {
                "rows": rows,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "command": " ".join(sys.argv),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
