"""What hard-concrete's gates learned by the exact finish: per layer, the kept share, log α
and its change from the start, before the finish (after the last learning step's update,
before its clamp to [log 10⁻², log 10²]) and after it, and the λ trace.

The diagnostic behind BENCHMARKS.md's "Hard-concrete's finish, its gate rate, and the
lagrangian's damping" (LeNet-300-100, 300 steps on 30,000 images, target 0.95)::

    python benchmarks/hardconcrete_gates.py                      # input-unit gates
    python benchmarks/hardconcrete_gates.py --recipe lenet300-hardconcrete-element
    python benchmarks/hardconcrete_gates.py --set gate_lr=0.001  # a method option (JSON value)
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from learnprune import config as configs
from learnprune import engine, runner
from learnprune.methods.hardconcrete import HardConcrete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="lenet300-hardconcrete")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-subset", type=int, default=30000)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--controller", default="lagrangian")
    parser.add_argument("--set", nargs="*", default=[], metavar="OPTION=JSON")
    args = parser.parse_args()
    run = configs.RunConfig.from_dict(configs.read_recipe(configs.find_recipe(args.recipe)))
    options = dict(run.method_options, target=args.target, controller=args.controller)
    for item in args.set:
        key, value = item.split("=", 1)
        options[key] = json.loads(value)
    train = dataclasses.replace(
        run.train, epochs=1, max_steps=args.steps, train_subset=args.train_subset, device="cpu"
    )
    run = dataclasses.replace(run, method_options=options, train=train)
    data = runner.load_data(run)
    model, method = runner.build(run, data)
    assert isinstance(method, HardConcrete) and method.schedule is not None
    start = {name: gate.log_alpha.detach().clone() for name, gate in method.gates.items()}
    lams: list[float] = []
    inner = method.after_step

    def report(when: str) -> None:
        print(f"{when} (step {method.step}, λ scale {method.current_lam:.4g})")
        for name, gate in method.gates.items():
            log_alpha = gate.log_alpha.detach()
            change = log_alpha - start[name]
            kept = float(gate.keep().float().mean())
            print(
                f"  {name}: {log_alpha.numel()} gates, kept {kept:.3f}, "
                f"log α {log_alpha.mean():.3f} [{log_alpha.min():.3f}, {log_alpha.max():.3f}], "
                f"change {change.mean():.4f} [{change.min():.4f}, {change.max():.4f}], "
                f"mean P(z ≠ 0) {gate.prob_open().mean():.3f}"
            )

    def after_step() -> None:
        if method.step + 1 == method.schedule.end and not method.finished:
            report("before the finish")
        inner()
        lams.append(method.current_lam)
        if method.step == method.schedule.end:
            report("after the finish")

    method.after_step = after_step  # type: ignore[method-assign]
    last = engine.train(model, method, data, run.train, quiet=True, progress=False)
    print("λ scale every 15 steps:", [round(lam, 3) for lam in lams[::15]])
    print(f"final sparsity {method.sparsity():.4f}, test accuracy {last.get('test_accuracy')}")


if __name__ == "__main__":
    main()
