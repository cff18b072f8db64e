"""How well each budget controller tracks its target schedule, per step.

For every learned method (SCL, DiffPrune, hard-concrete with one gate per weight as the
other two, each from its LeNet-300-100 recipe; ``hardconcrete-units`` is the reference's
input-unit gates) and every controller (``lagrangian``, ``pi``, ``integral``) this trains through
the Python API and records, after every step, the scheduled target ``b_t`` and the
budget the gates reach (sparsity, or the FLOPs share removed). It writes
``budget_tracking.json`` (the traces and a summary per run: the largest and mean gap
during the phase, the budget reached when the exact finish set it, the final one) and a
PNG per method and controller into ``--out``.

    python benchmarks/budget_tracking.py --steps 300 --train-subset 30000
    python benchmarks/budget_tracking.py --epochs 5 --tag 5ep   # the longer run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from learnprune import config as configs
from learnprune import engine, runner
from learnprune.methods.budgeted import BudgetedMethod

RECIPES = {
    "scl": "lenet300-scl",
    "diffprune": "lenet300-diffprune",
    "hardconcrete": "lenet300-hardconcrete-element",
    "hardconcrete-units": "lenet300-hardconcrete",
}
METHODS = tuple(RECIPES)
CONTROLLERS = ("lagrangian", "pi", "integral")


def track(method_name: str, controller: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run; ``{"trace": [(step, target, achieved), ...], "summary": {...}}``."""
    recipe = configs.read_recipe(configs.find_recipe(RECIPES[method_name]))
    run = configs.RunConfig.from_dict(recipe)
    options = dict(run.method_options, target=args.target, controller=controller)
    if args.multiplier_lr is not None:
        options["multiplier_lr"] = args.multiplier_lr
    train = dataclasses.replace(
        run.train,
        epochs=args.epochs,
        max_steps=args.steps,
        train_subset=args.train_subset,
        device="cpu",
    )
    run = dataclasses.replace(run, method_options=options, train=train)
    data = runner.load_data(run)
    model, method = runner.build(run, data)
    assert isinstance(method, BudgetedMethod)
    trace: list[tuple[int, float, float]] = []
    inner = method.after_step

    def after_step() -> None:  # the budget the controller tracks (hard-concrete: expected)
        inner()
        if not method.finished or method.step == method.schedule.end:
            achieved = method.achieved_at_finish if method.finished else method.tracked_budget()
            trace.append((method.step, float(method.scheduled_target()), achieved))

    method.after_step = after_step  # type: ignore[method-assign]
    last = engine.train(model, method, data, run.train, quiet=True, progress=False)
    gaps = [abs(target - achieved) for _step, target, achieved in trace]
    summary = {
        "method": method_name,
        "controller": controller,
        "steps": method.step,
        "end_step": method.schedule.end,
        "max_gap_points": 100 * max(gaps),
        "mean_gap_points": 100 * sum(gaps) / len(gaps),
        "achieved_at_finish": method.achieved_at_finish,
        "final_budget": method.budget_achieved(),
        "final_sparsity": method.sparsity(),
        "test_accuracy": last.get("test_accuracy"),
    }
    return {"trace": trace, "summary": summary}


def plot(result: dict[str, Any], path: Path, target: float) -> None:
    steps, targets, achieved = zip(*result["trace"], strict=True)
    s = result["summary"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, targets, label="scheduled target", color="black", linestyle="--")
    ax.plot(steps, achieved, label="achieved", color="tab:blue")
    ax.axvline(s["end_step"], color="gray", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"{s['method']}, {s['controller']}: target {target:g}, max gap "
        f"{s['max_gap_points']:.1f} pts, at finish {s['achieved_at_finish']:.3f}",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--controllers", nargs="+", default=list(CONTROLLERS))
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="max steps (default: all)")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--multiplier-lr", type=float, default=None)
    parser.add_argument("--tag", default="300")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/budget"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for method_name in args.methods:
        for controller in args.controllers:
            result = track(method_name, controller, args)
            name = f"{args.tag}-{method_name}-{controller}.png"
            plot(result, args.out / name, args.target)
            print(json.dumps(result["summary"]))
            results.append(result)
    (args.out / f"budget_tracking-{args.tag}.json").write_text(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
