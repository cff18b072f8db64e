"""ResNet-20 on Fashion-MNIST 32x32 at 2x, 3x and 4x fewer FLOPs: every learned method
against Torch-Pruning's group-norm pruner at the same FLOPs, from the same dense model,
the same epochs, several seeds (issue 13, point 3).

Protocol, for each seed ``s`` (every run of a seed starts from that seed's dense model):

1. ``dense-seed<s>``: ResNet-20 (shortcut B, one input channel) trained ``--dense-epochs``
   (SGD 0.1, cosine).
2. ``<method>-keep<k>-seed<s>`` for SCL, DiffPrune, hard-concrete (``coupled`` groups: a
   channel and everything tied to it through BN and the residual adds) and DessiLBI, with
   ``target={"flops": k}``, from the dense weights, ``--learn-epochs + --finetune-epochs``
   epochs: the mask is learned over the first ``--learn-epochs`` (``end_epoch``; the
   budget's cubic schedule and controller), set to exactly the budget there by the
   method's own scores (the exact finish), and fine-tuned with that mask fixed for the
   rest. DessiLBI runs only where the installed method takes ``target=``; else it is
   skipped with a message.
3. ``tp-groupnorm-keep<k>-seed<s>``: Torch-Pruning's ``GroupNormPruner`` (group L2
   magnitude, the classifier ignored) one shot on the dense model at the channel ratio
   whose FLOPs fit ``k`` (bisection), then fine-tuned ``--learn-epochs +
   --finetune-epochs`` epochs with the dense model's SGD.

FLOPs are ``FlopCounterMode``'s count of the *compacted* model (``final.json`` →
``compact``) against the dense model's; a learned row is accepted when its FLOPs are
within 2% (relative) of ``k`` times the dense FLOPs. Each run's ``final.json`` (with
``config.json`` and ``metrics.jsonl``) is kept in ``<out>/<run>/`` as soon as it finishes;
a run whose ``final.json`` is there is skipped, so an interrupted protocol resumes where
it stopped. ``<out>/protocol.json`` holds the settings every run shares: an out
directory written under other settings is refused. At the end ``summary.json`` and
``summary.md`` (mean ± std over the seeds, the exact command) are written.

    python benchmarks/resnet20_flops.py --device cuda --seeds 0 1 2      # the full protocol
    python benchmarks/resnet20_flops.py --plan                            # what would run
    python benchmarks/resnet20_flops.py --summarise                       # tables so far

Exit status: 0 every run done and every learned row within 2% of its FLOPs target; 1 a
learned row missed it; 2 bad arguments or an out directory of another protocol; 3 runs are
left (``--stop-after``, or ``--summarise`` of an unfinished protocol).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "resnet20-flops"
LEARNED = ("scl", "diffprune", "hardconcrete", "dessilbi")
TP = "tp-groupnorm"
METHODS = (*LEARNED, TP)
KEEP = (0.5, 1 / 3, 0.25)
FLOPS_TOLERANCE = 0.02
"""A learned row holds its budget when ``|FLOPs / (k · dense FLOPs) − 1| ≤`` this."""
KEPT = ("final.json", "config.json", "metrics.jsonl")
INPUT_SHAPE = (1, 32, 32)

OPTIONS: dict[str, dict[str, Any]] = {
    "scl": {"groups": "coupled", "lam": 0.001},
    "diffprune": {"groups": "coupled", "lam": 0.1},
    "hardconcrete": {"groups": "coupled", "lam": 0.01, "weight_decay": 0.0},
    # the classifier stays out of the coupling (as in resnet_structured.py)
    "dessilbi": {"exclude": ["fc"]},
}
"""Each learned method's options besides the budget and its phase (``target``,
``end_epoch``); the budget's schedule, controller and finish are the methods' defaults."""
OPTIMIZER = {"diffprune": ("adam", 1e-3), "hardconcrete": ("adam", 1e-3)}
"""Method-specific optimizers; the others (and Torch-Pruning's fine-tuning) use SGD 0.05."""
FINETUNE_LR = 0.05
DENSE_LR = 0.1


class ProtocolError(Exception):
    """Arguments or an out directory that cannot give this protocol's results."""


@dataclass(frozen=True)
class Protocol:
    """The settings every run of one out directory shares (``protocol.json``)."""

    dense_epochs: int
    learn_epochs: int
    finetune_epochs: int
    train_subset: int | None
    batch_size: int

    @property
    def epochs(self) -> int:
        """Epochs of every pruned run: mask learning and fine-tuning."""
        return self.learn_epochs + self.finetune_epochs

    def as_dict(self) -> dict[str, Any]:
        return {
            "dense_epochs": self.dense_epochs,
            "learn_epochs": self.learn_epochs,
            "finetune_epochs": self.finetune_epochs,
            "train_subset": self.train_subset,
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True)
class Run:
    """One planned run: ``method`` ("dense", a learned method or Torch-Pruning)."""

    method: str
    seed: int
    keep: float | None = None

    @property
    def name(self) -> str:
        if self.keep is None:
            return f"{self.method}-seed{self.seed}"
        return f"{self.method}-keep{self.keep:.4g}-seed{self.seed}"


@dataclass
class Plan:
    protocol: Protocol
    runs: list[Run]
    out: Path
    skipped: dict[str, str] = field(default_factory=dict)
    """``{method: why}`` for methods that cannot run here (DessiLBI without ``target=``)."""

    def done(self, run: Run) -> bool:
        return (self.out / run.name / "final.json").is_file()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--keep",
        type=float,
        nargs="+",
        default=list(KEEP),
        help="fractions of the dense FLOPs to keep (default 1/2, 1/3, 1/4)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=", ".join(METHODS))
    parser.add_argument("--dense-epochs", type=int, default=30)
    parser.add_argument("--learn-epochs", type=int, default=15, help="mask learning")
    parser.add_argument("--finetune-epochs", type=int, default=15, help="mask fixed")
    parser.add_argument("--train-subset", type=int, help="default: the whole training set")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument("--plan", action="store_true", help="print the runs and stop")
    parser.add_argument(
        "--summarise", action="store_true", help="write the summary of the finished runs only"
    )
    parser.add_argument(
        "--stop-after",
        type=float,
        metavar="MINUTES",
        help="start no run after this many minutes, nor one the longest run so far would "
        "end after (a device command's time limit; run again to go on)",
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """The runs of ``args``, checked (raises ProtocolError); nothing is trained or written."""
    for name in ("dense_epochs", "learn_epochs", "finetune_epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ProtocolError(f"--{name.replace('_', '-')} must be at least 1")
    if args.stop_after is not None and not args.stop_after > 0:
        raise ProtocolError("--stop-after must be a positive number of minutes")
    if args.train_subset is not None and args.train_subset < 1:
        raise ProtocolError("--train-subset must be at least 1")
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise ProtocolError(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    for keep in args.keep:
        if not (0.0 < keep < 1.0) or not math.isfinite(keep):
            raise ProtocolError(f"--keep is a fraction of the dense FLOPs in (0, 1), got {keep}")
    names = [f"{k:.4g}" for k in args.keep]
    if len(set(names)) != len(names):
        raise ProtocolError(f"--keep values must differ in 4 significant digits, got {args.keep}")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise ProtocolError(
            f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ProtocolError(f"--out {out} is a file, not a directory")
    protocol = Protocol(
        args.dense_epochs,
        args.learn_epochs,
        args.finetune_epochs,
        args.train_subset,
        args.batch_size,
    )
    recorded = out / "protocol.json"
    if recorded.is_file():
        try:
            earlier = json.loads(recorded.read_text())
        except json.JSONDecodeError as err:
            raise ProtocolError(f"{recorded} is not JSON ({err}); move it away") from err
        if earlier != protocol.as_dict():
            changed = sorted(k for k, v in protocol.as_dict().items() if earlier.get(k) != v)
            raise ProtocolError(
                f"{out} holds runs of another protocol ({', '.join(changed)} differ: "
                f"{', '.join(f'{k} {earlier.get(k)}' for k in changed)}); use another --out"
            )
    skipped = {}
    methods = [m for m in METHODS if m in args.methods]  # the table's order
    if "dessilbi" in methods:
        why = dessilbi_refuses_target()
        if why:
            skipped["dessilbi"] = why
            methods.remove("dessilbi")
    runs = []
    for seed in args.seeds:
        runs.append(Run("dense", seed))
        runs.extend(Run(m, seed, keep) for keep in args.keep for m in methods)
    return Plan(protocol, runs, out, skipped)


def dessilbi_refuses_target() -> str:
    """Why the installed DessiLBI cannot take ``target={"flops": k}`` (empty if it can)."""
    from learnprune.methods import METHODS as INSTALLED

    if "target" not in INSTALLED["dessilbi"].recipe_options:
        return (
            "the installed DessiLBI takes no target option (no FLOPs budget to aim at); "
            "its rows are skipped"
        )
    return ""


def takes_option(method: str, option: str) -> bool:
    from learnprune.methods import METHODS as INSTALLED

    return option in INSTALLED[method].recipe_options


# --- the runs -----------------------------------------------------------------------------
def train_config(
    protocol: Protocol, epochs: int, seed: int, device: str, lr: float, optimizer: str = "sgd"
):
    from learnprune.config import TrainConfig

    return TrainConfig(
        epochs=epochs,
        batch_size=protocol.batch_size,
        lr=lr,
        optimizer=optimizer,
        momentum=0.9,
        weight_decay=5e-4 if optimizer == "sgd" else 0.0,
        lr_schedule="cosine",
        seed=seed,
        train_subset=protocol.train_subset,
        augment="auto",
        device=device,
    )


def run_config(protocol: Protocol, run: Run, device: str, init: str | None):
    """The :class:`RunConfig` of a dense or learned run."""
    from learnprune.config import RunConfig

    if run.method == "dense":
        options: dict[str, Any] = {}
        train = train_config(protocol, protocol.dense_epochs, run.seed, device, DENSE_LR)
    else:
        options = {**OPTIONS[run.method], "target": {"flops": run.keep}}
        if takes_option(run.method, "end_epoch"):  # the mask-learning phase
            options["end_epoch"] = protocol.learn_epochs
        optimizer, lr = OPTIMIZER.get(run.method, ("sgd", FINETUNE_LR))
        train = train_config(protocol, protocol.epochs, run.seed, device, lr, optimizer)
    return RunConfig(
        model="resnet20",
        data="fashion-mnist",
        method=run.method,
        method_options=options,
        data_options={"pad_to_32": True},
        train=train,
        init=init,
        description=f"ResNet-20 / Fashion-MNIST 32x32, {run.name} (resnet20_flops.py)",
    )


def dense_weights(out: Path, seed: int) -> Path:
    return out / ".weights" / f"dense-seed{seed}.pt"


def learnprune_run(plan: Plan, run: Run, device: str, data) -> dict[str, Any]:
    """A dense or learned run through :func:`learnprune.runner.run` (``learnprune train``'s
    path) in ``<out>/.<name>.running``; its files are kept in ``<out>/<name>/``."""
    from learnprune.runner import run as train_run

    init = None if run.method == "dense" else str(dense_weights(plan.out, run.seed))
    config = run_config(plan.protocol, run, device, init)
    scratch = plan.out / f".{run.name}.running"
    shutil.rmtree(scratch, ignore_errors=True)
    result = train_run(config, scratch, quiet=True, data=data)
    if run.method == "dense":
        weights = dense_weights(plan.out, run.seed)
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(scratch / "model.pt", weights)
    target = plan.out / run.name
    target.mkdir(parents=True, exist_ok=True)
    for file in KEPT[1:]:
        shutil.copy(scratch / file, target / file)
    shutil.copy(scratch / "final.json", target / "final.json")  # last: it marks the run done
    shutil.rmtree(scratch)
    return result


def groupnorm_pruned_to(
    base: Any, keep: float, input_shape: Sequence[int], halvings: int = 14
) -> tuple[Any, float]:
    """A copy of ``base`` pruned one shot by Torch-Pruning's ``GroupNormPruner`` (group L2
    norm, the classifier ``fc`` left whole) at the smallest channel ratio whose FLOPs are
    at most ``keep`` of ``base``'s, found by ``halvings`` bisections of [0, 0.95];
    ``(model, ratio)``."""
    import torch
    import torch_pruning as tp

    from learnprune.accounting import count

    example = torch.randn(1, *input_shape)
    budget = keep * count(base, tuple(input_shape)).flops

    def pruned(ratio: float) -> Any:
        model = copy.deepcopy(base)
        pruner = tp.pruner.GroupNormPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
        )
        pruner.step()
        return model

    low, high = 0.0, 0.95
    for _ in range(halvings):
        middle = (low + high) / 2
        if count(pruned(middle), tuple(input_shape)).flops <= budget:
            high = middle
        else:
            low = middle
    return pruned(high), high


def torch_pruning_run(plan: Plan, run: Run, device: str, data) -> dict[str, Any]:
    """Torch-Pruning's group-norm pruner to ``keep`` of the dense FLOPs, one shot, then
    fine-tuning; writes ``<out>/<name>/final.json``."""
    import torch_pruning as tp

    from learnprune.accounting import count
    from learnprune.engine import evaluate, resolve_device, seed_everything, train
    from learnprune.methods import Dense
    from learnprune.models import build_model
    from learnprune.runner import environment, load_init

    assert run.keep is not None
    base = build_model("resnet20", num_classes=10, in_channels=1)
    load_init(base, dense_weights(plan.out, run.seed))
    dense_flops = count(base, INPUT_SHAPE).flops

    model, high = groupnorm_pruned_to(base, run.keep, INPUT_SHAPE)
    flops = count(model, INPUT_SHAPE).flops
    params = sum(p.numel() for p in model.parameters())
    config = train_config(plan.protocol, plan.protocol.epochs, run.seed, device, FINETUNE_LR)
    where = resolve_device(device)
    model.to(where)
    x_test, y_test = data.x_test.to(where), data.y_test.to(where)
    model.eval()
    _loss, before = evaluate(model, x_test, y_test)
    seed_everything(run.seed)
    started = time.perf_counter()
    last = train(model, Dense(model), data, config, quiet=True, progress=False)
    model.eval()
    test_loss, accuracy = evaluate(model, x_test, y_test)
    result = {
        "method": TP,
        "model": "resnet20",
        "data": "fashion-mnist",
        "epochs": config.epochs,
        "steps": last.get("steps"),
        "keep": run.keep,
        "seed": run.seed,
        "channel_ratio": high,
        "test_accuracy_before_finetune": before,
        "test_accuracy": accuracy,
        "test_error": 1.0 - accuracy,
        "test_loss": test_loss,
        "dense_flops": dense_flops,
        "compact": {"flops": flops, "params": params},
        "seconds": last.get("elapsed", time.perf_counter() - started),
        "pruner": "torch_pruning.pruner.GroupNormPruner, GroupMagnitudeImportance(p=2), "
        f"ignored fc, torch-pruning {tp.__version__}",
        "train": asdict(config),
        "environment": environment(),
    }
    target = plan.out / run.name
    target.mkdir(parents=True, exist_ok=True)
    (target / "final.json").write_text(json.dumps(result, indent=1))
    return result


# --- the summary --------------------------------------------------------------------------
def row_of(plan: Plan, run: Run, dense: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One finished run's figures: accuracy, compact FLOPs against the dense model's."""
    final = json.loads((plan.out / run.name / "final.json").read_text())
    row: dict[str, Any] = {"run": run.name, "method": run.method, "seed": run.seed}
    row["test_accuracy"] = final["test_accuracy"]
    if run.method == "dense":
        row["flops"] = final["flops"]
        return row
    dense_flops = dense[run.seed]["flops"]
    flops = final.get("compact", {}).get("flops")
    row["keep"] = run.keep
    row["flops"] = flops
    row["flops_ratio"] = dense_flops / flops if flops else None
    row["flops_vs_target"] = flops / (run.keep * dense_flops) - 1.0 if flops else None
    row["within_tolerance"] = (
        row["flops_vs_target"] is not None and abs(row["flops_vs_target"]) <= FLOPS_TOLERANCE
    )
    row["vs_dense"] = final["test_accuracy"] - dense[run.seed]["test_accuracy"]
    if run.method != TP:
        row["finish"] = final.get("finish")
        row["achieved_before_finish"] = final.get("budget", {}).get("achieved_before_finish")
    if "compact" in final and "error" in final["compact"]:
        row["compact_error"] = final["compact"]["error"]
    return row


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(plan: Plan, command: str) -> tuple[dict[str, Any], str]:
    """``summary.json``'s dictionary and ``summary.md``'s table from the finished runs."""
    finished = [run for run in plan.runs if plan.done(run)]
    dense = {
        run.seed: json.loads((plan.out / run.name / "final.json").read_text())
        for run in finished
        if run.method == "dense"
    }
    rows = [
        row_of(plan, run, dense) for run in finished if run.method == "dense" or run.seed in dense
    ]
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row.get("keep")), []).append(row)
    table = []
    for (method, keep), members in groups.items():
        accuracy = mean_std([r["test_accuracy"] for r in members])
        entry: dict[str, Any] = {
            "method": method,
            "keep": keep,
            "seeds": [r["seed"] for r in members],
            "test_accuracy_mean": accuracy[0],
            "test_accuracy_std": accuracy[1],
        }
        if method != "dense":
            ratios = [r["flops_ratio"] for r in members if r["flops_ratio"]]
            entry["flops_ratio_mean"], entry["flops_ratio_std"] = (
                mean_std(ratios) if ratios else (None, None)
            )
            entry["flops_vs_target_max"] = max(
                (abs(r["flops_vs_target"]) for r in members if r["flops_vs_target"] is not None),
                default=None,
            )
            entry["within_tolerance"] = all(r["within_tolerance"] for r in members)
            entry["vs_dense_mean"] = statistics.fmean(r["vs_dense"] for r in members)
        table.append(entry)
    missing = [r.name for r in plan.runs if not plan.done(r) and r.method not in plan.skipped]
    learned_missed = [
        r["run"] for r in rows if r["method"] in LEARNED and not r.get("within_tolerance", True)
    ]
    summary = {
        "command": command,
        "protocol": plan.protocol.as_dict(),
        "flops_tolerance": FLOPS_TOLERANCE,
        "skipped_methods": plan.skipped,
        "not_finished": missing,
        "learned_rows_off_target": learned_missed,
        "table": table,
        "runs": rows,
    }
    lines = [
        "# ResNet-20 / Fashion-MNIST 32x32 at FLOPs budgets (resnet20_flops.py)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Protocol: {json.dumps(plan.protocol.as_dict())}. FLOPs of the compacted model; "
        f"a learned row holds its budget within {FLOPS_TOLERANCE:.0%} (relative).",
        "",
        "| method | FLOPs kept (target) | seeds | FLOPs ratio (dense / pruned) "
        "| max FLOPs off target | within 2% | test accuracy | vs dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in table:
        accuracy = f"{entry['test_accuracy_mean']:.2%} ± {entry['test_accuracy_std']:.2%}"
        seeds = ", ".join(map(str, entry["seeds"]))
        if entry["method"] == "dense":
            lines.append(f"| dense | 1 | {seeds} | 1.00x | | | {accuracy} | |")
            continue
        ratio = (
            f"{entry['flops_ratio_mean']:.3f}x ± {entry['flops_ratio_std']:.3f}"
            if entry["flops_ratio_mean"]
            else "n/a"
        )
        off = entry["flops_vs_target_max"]
        held = "yes" if entry["within_tolerance"] else "**no**"
        if entry["method"] == TP:  # one shot at a uniform channel ratio: no learned budget
            held = "(baseline)"
        lines.append(
            f"| {entry['method']} | {entry['keep']:.4g} | {seeds} | {ratio} | "
            f"{'n/a' if off is None else f'{off:.2%}'} | {held} | {accuracy} | "
            f"{entry['vs_dense_mean']:+.2%} |"
        )
    for method, why in plan.skipped.items():
        lines.append(f"\n{method}: {why}.")
    if missing:
        lines.append(f"\nNot finished: {', '.join(missing)}.")
    return summary, "\n".join(lines) + "\n"


def write_summary(plan: Plan, command: str) -> dict[str, Any]:
    summary, table = summarise(plan, command)
    (plan.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (plan.out / "summary.md").write_text(table)
    print(table)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--summarise"]
    command = shlex.join(["python", "benchmarks/resnet20_flops.py", *given])  # what trained
    try:
        plan = make_plan(args)
    except ProtocolError as err:
        print(f"resnet20_flops.py: error: {err}", file=sys.stderr)
        return 2
    for method, why in plan.skipped.items():
        print(f"{method}: {why}", flush=True)
    if args.plan:
        for run in plan.runs:
            print(f"{run.name}: {'done' if plan.done(run) else 'to run'}")
        return 0
    if args.summarise:
        if not plan.out.is_dir():
            print(f"resnet20_flops.py: error: no results in {plan.out}", file=sys.stderr)
            return 2
        return exit_status(write_summary(plan, command))
    from learnprune.data import load_dataset
    from learnprune.engine import configure_torch
    from learnprune.errors import LearnpruneError

    configure_torch()
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "protocol.json").write_text(json.dumps(plan.protocol.as_dict(), indent=1))
    data = load_dataset("fashion-mnist", pad_to_32=True)
    began, longest = time.perf_counter(), 0.0
    for run in plan.runs:
        if plan.done(run):
            print(f"{run.name}: done already", flush=True)
            continue
        if run.method in plan.skipped:
            continue
        started = time.perf_counter()
        if args.stop_after is not None and started - began + longest > 60 * args.stop_after:
            print(f"--stop-after {args.stop_after:g} min: stopping before {run.name}", flush=True)
            break
        try:
            if run.method == TP:
                result = torch_pruning_run(plan, run, args.device, data)
            else:
                result = learnprune_run(plan, run, args.device, data)
        except LearnpruneError as err:
            if run.method != "dessilbi":
                raise
            plan.skipped["dessilbi"] = f"refused by the installed method: {err}"
            print(f"{run.name}: skipped, {err}", flush=True)
            continue
        longest = max(longest, time.perf_counter() - started)
        print(
            f"{run.name}: test accuracy {result['test_accuracy']:.2%}, "
            f"{(time.perf_counter() - started) / 60:.1f} min",
            flush=True,
        )
    return exit_status(write_summary(plan, command))


def exit_status(summary: dict[str, Any]) -> int:
    """1 where a learned row missed its FLOPs target, else 3 where runs are left, else 0."""
    if summary["learned_rows_off_target"]:
        return 1
    return 3 if summary["not_finished"] else 0


if __name__ == "__main__":
    sys.exit(main())
