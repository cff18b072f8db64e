"""DessiLBI's abstract claims, measured (issue 13, point 4).

Three protocols (``--protocol``), each run writing its ``final.json`` as it finishes under
``benchmarks/results/dessilbi-claims/<protocol>/<run>/``; a finished run is skipped, so an
interrupted benchmark resumes where it stopped. ``summary.json`` and ``summary.md`` (mean ±
std over seeds) are rewritten after every run.

* ``transfer`` — "early tickets ... are further transferable to similar alternative tasks".
  Per seed one starting point ``W₀`` (LeNet-300-100). On each source task (MNIST,
  Fashion-MNIST) a DessiLBI path of ``--path-epochs`` epochs from ``W₀`` (the recipe
  ``lenet300-dessilbi``'s first epochs: ν 5, κ 1, λ 1, lr 0.1 constant, batch 100); its
  ticket at ``--sparsity``: the ``(1 − s)·N`` coupled weights first by the path's prune
  order (``|W_ij| − first_epoch_ij``: earlier entry into ``supp(Γ)`` first, magnitude
  within an epoch; one global order over the layers, kept by
  :func:`learnprune.budget.exact_keep`). On each target task, from ``W₀``, the same
  retraining (SGD momentum 0.9, lr 0.1 cosine, batch 100, ``--retrain-epochs``) of: the
  ticket found on the *other* task (transfer), the ticket found on the target itself,
  a random mask with the transferred ticket's kept count in every layer
  (:func:`learnprune.methods.ticket.random_masks_like`), and the dense model.
* ``optimizer`` — "comparable and even better performance than the competitive
  optimizers": the DessiLBI code's LeNet-5 on MNIST (inputs in [0, 1]) trained
  ``--opt-epochs`` epochs by DessiLBI (the recipe ``lenet5-dessilbi``: ν 20, κ 1, lr 0.1,
  momentum 0.9, batch 128), SGD with momentum 0.9 (lr 0.1, the W step DessiLBI takes) and
  Adam (lr 1e-3); the same starting weights, data order and cosine schedule for all three.
  DessiLBI's accuracy is that of its dense ``W`` (its ``W*`` is reported too).
* ``grow`` — "a good performance with much less computational cost": ``learnprune``'s
  growing (:mod:`learnprune.growing`) of a CIFAR ResNet-20 on Fashion-MNIST (32×32) from
  ``--start-width`` channels per stage, against the full ResNet-20 (16-32-64) trained by SGD
  for as many epochs as the growth and its fine-tuning took together. Training FLOPs =
  Σ over phases of :func:`learnprune.accounting.training_flops_per_example` of that
  phase's network × the examples the phase trained on.

``--train-subset`` takes a fixed subset of the training set (the test set stays whole but
for ``grow``'s ``--test-subset``: the first k test images).

    python benchmarks/dessilbi_claims.py --protocol transfer
    python benchmarks/dessilbi_claims.py --protocol optimizer
    python benchmarks/dessilbi_claims.py --protocol grow --train-subset 2000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from learnprune.accounting import count, training_flops_per_example
from learnprune.budget import exact_keep
from learnprune.checkpoint import atomic_write_json
from learnprune.config import TrainConfig
from learnprune.data import Dataset, load_dataset
from learnprune.engine import seed_everything, train
from learnprune.growing import GrowConfig, grow
from learnprune.methods.base import Dense, PruningMethod
from learnprune.methods.dessilbi import DessiLBIMethod
from learnprune.methods.ticket import Ticket, random_masks_like
from learnprune.models import build_model
from learnprune.runner import environment

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "dessilbi-claims"
SCRATCH = RESULTS / ".scratch"  # masks and live run directories; not kept in git
TASKS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


# --- bookkeeping ------------------------------------------------------------------------
def done(run: Path) -> dict[str, Any] | None:
    final = run / "final.json"
    return json.loads(final.read_text()) if final.exists() else None


def trained(
    run: Path,
    model: nn.Module,
    method: PruningMethod,
    data: Dataset,
    config: TrainConfig,
    extra: Callable[[], Mapping[str, Any]] = dict,
) -> dict[str, Any]:
    """Train in a scratch directory; keep ``metrics.jsonl`` and write ``final.json``."""
    scratch = SCRATCH / run.parent.name / run.name
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.perf_counter()
    last = train(model, method, data, config, out_dir=scratch, quiet=True)
    counts = count(model, data.input_shape)
    result = {
        **{k: v for k, v in last.items() if k != "support"},
        "test_error": 1 - last["test_accuracy"],
        "weight_sparsity": counts.sparsity,
        "nonzero_weights": counts.nonzero_weights,
        "kept_per_layer": {layer.name: layer.nonzero_weights for layer in counts.layers},
        "seconds": time.perf_counter() - started,
        "train_config": asdict(config),
        **extra(),
        "environment": environment(),
    }
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(scratch / "metrics.jsonl", run / "metrics.jsonl")
    atomic_write_json(run / "final.json", result)
    shutil.rmtree(scratch)
    print(
        f"{run.parent.name}/{run.name}: test accuracy {result['test_accuracy']:.2%}, "
        f"sparsity {result['sparsity']:.2%}, {result['seconds']:.0f} s",
        flush=True,
    )
    return result


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def cell(stats: Mapping[str, float], scale: float = 100.0, digits: int = 2) -> str:
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def write_summary(protocol: str, summary: dict[str, Any], table: str, command: str) -> None:
    folder = RESULTS / protocol
    atomic_write_json(folder / "summary.json", {"command": command, **summary})
    (folder / "summary.md").write_text(f"```bash\n{command}\n```\n\n{table}\n")
    print(table, flush=True)


# --- transfer of early tickets ------------------------------------------------------------
def initial_state(seed: int) -> dict[str, Tensor]:
    """``W₀`` of a seed: LeNet-300-100 built right after ``seed_everything(seed)``."""
    seed_everything(seed)
    return {k: v.clone() for k, v in build_model("lenet300").state_dict().items()}


def from_state(state: Mapping[str, Tensor]) -> nn.Module:
    model = build_model("lenet300")
    model.load_state_dict(state)
    return model


def ticket_by_prune_order(method: DessiLBIMethod, sparsity: float) -> dict[str, Tensor]:
    """The ``round((1 − s)·N)`` coupled weights highest in the path's stored prune order,
    one order over all layers."""
    scores = method.optimizer.prune_order_scores("stored")
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = exact_keep(
        flat,
        torch.ones_like(flat),
        round((1 - sparsity) * flat.numel()),
        torch.zeros_like(flat, dtype=torch.bool),
    )
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = keep[start : start + score.numel()].reshape(score.shape)
        start += score.numel()
    return masks


def path_ticket(
    source: str, seed: int, data: Dataset, args: argparse.Namespace
) -> dict[str, Tensor]:
    run = RESULTS / "transfer" / f"path-{source}-seed{seed}"
    saved = SCRATCH / "transfer" / f"ticket-{source}-seed{seed}.pt"
    if done(run) and saved.exists():
        return torch.load(saved)
    model = from_state(initial_state(seed))
    method = DessiLBIMethod(model, kappa=1.0, nu=5.0, lam=1.0)
    config = TrainConfig(
        epochs=args.path_epochs,
        batch_size=100,
        lr=0.1,
        momentum=0.9,
        lr_schedule="constant",
        seed=seed,
    )
    holder: dict[str, Any] = {}

    def extra() -> dict[str, Any]:
        masks = ticket_by_prune_order(method, args.sparsity)
        support = method.optimizer.masks()
        holder["masks"] = masks
        inside = sum(int((masks[n] & support[n]).sum()) for n in masks)
        kept = sum(int(m.sum()) for m in masks.values())
        return {
            "role": "path",
            "source": source,
            "seed": seed,
            "support": method.optimizer.support(),
            "support_share": sum(int(m.sum()) for m in support.values())
            / sum(m.numel() for m in support.values()),
            "ticket_sparsity": args.sparsity,
            "ticket_kept_per_layer": {n: int(m.sum()) for n, m in masks.items()},
            "ticket_share_inside_support": inside / kept,
        }

    trained(run, model, method, data, config, extra)
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save(holder["masks"], saved)
    return holder["masks"]


def retrain(
    run: Path,
    seed: int,
    data: Dataset,
    masks: Mapping[str, Tensor] | None,
    args: argparse.Namespace,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    found = done(run)
    if found:
        return found
    model = from_state(initial_state(seed))
    method = Dense(model) if masks is None else Ticket(model, masks)
    config = TrainConfig(
        epochs=args.retrain_epochs,
        batch_size=100,
        lr=0.1,
        momentum=0.9,
        lr_schedule="cosine",
        seed=seed,
        train_subset=args.train_subset,
    )
    return trained(run, model, method, data, config, lambda: {"seed": seed, **info})


def transfer(args: argparse.Namespace, command: str) -> None:
    data = {task: load_dataset(task) for task in TASKS}
    folder = RESULTS / "transfer"
    rows: dict[tuple[str, str], list[float]] = {}
    structures: list[dict[str, float]] = []
    for seed in args.seeds:
        tickets = {task: path_ticket(task, seed, data[task], args) for task in TASKS}
        structures.append(ticket_structure(tickets))
        for target in TASKS:
            other = next(t for t in TASKS if t != target)
            arms = {
                f"ticket from {TASKS[other]}": tickets[other],
                f"ticket from {TASKS[target]} (same task)": tickets[target],
                f"random mask, {TASKS[other]} ticket's per-layer counts": random_masks_like(
                    tickets[other], seed=1000 + seed
                ),
                "dense": None,
            }
            for arm, masks in arms.items():
                slug = arm.split(",")[0].split(" (")[0].replace(" ", "-").lower()
                run = folder / f"{target}-{slug}-seed{seed}"
                result = retrain(
                    run, seed, data[target], masks, args, {"target": target, "arm": arm}
                )
                rows.setdefault((TASKS[target], arm), []).append(result["test_accuracy"])
        summarise_transfer(args, command, rows, structures)


def ticket_structure(tickets: Mapping[str, Mapping[str, Tensor]]) -> dict[str, float]:
    """How alike the two tasks' tickets are: the share of the MNIST ticket's weights that
    the Fashion-MNIST ticket keeps too, and per ticket the input pixels (of 784) and the
    hidden units (of 300) that ``fc1`` keeps a weight of."""
    mnist, fashion = tickets["mnist"], tickets["fashion-mnist"]
    shared = sum(int((mnist[n] & fashion[n]).sum()) for n in mnist)
    structure = {"shared_share": shared / sum(int(m.sum()) for m in mnist.values())}
    for task, masks in tickets.items():
        structure[f"{task} fc1 input pixels"] = float(masks["fc1.weight"].any(0).sum())
        structure[f"{task} fc1 units"] = float(masks["fc1.weight"].any(1).sum())
    return structure


def summarise_transfer(
    args: argparse.Namespace,
    command: str,
    rows: Mapping[tuple[str, str], list[float]],
    structures: list[dict[str, float]],
) -> None:
    summary = {f"{t} | {a}": mean_std(v) for (t, a), v in rows.items()}
    lines = [
        f"LeNet-300-100, ticket at path epoch {args.path_epochs}, sparsity "
        f"{args.sparsity:.0%}, retrained {args.retrain_epochs} epochs from the path's W₀",
        "",
        "| target task | retrained from W₀ | test accuracy (%) | seeds |",
        "|---|---|---|---|",
    ]
    for (target, arm), values in rows.items():
        lines.append(f"| {target} | {arm} | {cell(mean_std(values))} | {len(values)} |")
    paths = []
    for seed in args.seeds:
        for task in TASKS:
            found = done(RESULTS / "transfer" / f"path-{task}-seed{seed}")
            if found:
                paths.append(found)
    if paths:
        lines += [
            "",
            "| path on | W acc. (%) | W* acc. (%) | supp(Γ) share (%) "
            "| ticket inside supp(Γ) (%) |",
            "|---|---|---|---|---|",
        ]
        for task in TASKS:
            mine = [p for p in paths if p["source"] == task]
            if mine:
                lines.append(
                    f"| {TASKS[task]} | {cell(mean_std([p['test_accuracy'] for p in mine]))} | "
                    f"{cell(mean_std([p['test_accuracy_sparse'] for p in mine]))} | "
                    f"{cell(mean_std([p['support_share'] for p in mine]))} | "
                    f"{cell(mean_std([p['ticket_share_inside_support'] for p in mine]))} |"
                )
    structure = {key: mean_std([s[key] for s in structures]) for key in structures[0]}
    lines += [
        "",
        "| the two tickets (per seed) | mean ± std |",
        "|---|---|",
        f"| MNIST ticket's weights kept by the Fashion-MNIST ticket too (%) | "
        f"{cell(structure['shared_share'])} |",
    ]
    for task in TASKS:
        for what, of in (("input pixels", 784), ("units", 300)):
            key = f"{task} fc1 {what}"
            lines.append(
                f"| {TASKS[task]} ticket: fc1 {what} kept (of {of}) | "
                f"{cell(structure[key], scale=1, digits=0)} |"
            )
    settings = {"accuracy": summary, "ticket_structure": structure, "settings": vars(args)}
    write_summary("transfer", settings, "\n".join(lines), command)


# --- DessiLBI as an optimizer -----------------------------------------------------------------
OPTIMIZERS = {
    "DessiLBI (ν 20, lr 0.1, momentum 0.9)": ("dessilbi", 0.1),
    "SGD, momentum 0.9, lr 0.1": ("sgd", 0.1),
    "Adam, lr 1e-3": ("adam", 1e-3),
}


def optimizer(args: argparse.Namespace, command: str) -> None:
    data = load_dataset("mnist", normalize=False)
    folder = RESULTS / "optimizer"
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        for label, (kind, lr) in OPTIMIZERS.items():
            run = folder / f"lenet5-{kind}-seed{seed}"
            result = done(run)
            if result is None:
                seed_everything(seed)
                model = build_model("lenet5")
                method: PruningMethod = (
                    DessiLBIMethod(model, kappa=1.0, nu=20.0, lam=1.0)
                    if kind == "dessilbi"
                    else Dense(model)
                )
                config = TrainConfig(
                    epochs=args.opt_epochs,
                    batch_size=128,
                    lr=lr,
                    optimizer="adam" if kind == "adam" else "sgd",
                    momentum=0.9,
                    lr_schedule="cosine",
                    seed=seed,
                    train_subset=args.train_subset,
                )
                info = {"optimizer": label, "seed": seed}
                result = trained(run, model, method, data, config, lambda info=info: info)
            rows.setdefault(label, []).append(result)
        summary, lines = (
            {},
            [
                f"LeNet-5 (DessiLBI code) on MNIST, {args.opt_epochs} epochs, cosine lr, batch 128",
                "",
                "| optimizer | test accuracy of W (%) | DessiLBI's W* (%) | sparsity of W* (%) "
                "| seeds |",
                "|---|---|---|---|---|",
            ],
        )
        for label, results in rows.items():
            accuracy = mean_std([r["test_accuracy"] for r in results])
            summary[label] = {"test_accuracy": accuracy}
            sparse = "—"
            sparsity = "—"
            if "test_accuracy_sparse" in results[0]:
                stats = mean_std([r["test_accuracy_sparse"] for r in results])
                summary[label]["test_accuracy_sparse"] = stats
                sparse = cell(stats)
                share = mean_std([r["sparsity"] for r in results])
                sparsity = cell(share)
            lines.append(f"| {label} | {cell(accuracy)} | {sparse} | {sparsity} | {len(results)} |")
        write_summary(
            "optimizer", {"accuracy": summary, "settings": vars(args)}, "\n".join(lines), command
        )


# --- growing ---------------------------------------------------------------------------------
def resnet(widths: list[int] | tuple[int, ...], data: Dataset) -> nn.Module:
    return build_model(
        "resnet20",
        num_classes=data.num_classes,
        in_channels=data.input_shape[0],
        widths=tuple(widths),
    )


def full_network(
    folder: Path, seed: int, epochs: int, data: Dataset, base: TrainConfig, n: int
) -> dict[str, Any]:
    """The full ResNet-20 (16-32-64) trained by SGD for ``epochs``, with its training FLOPs."""
    run = folder / f"full-{epochs}ep-seed{seed}"
    found = done(run)
    if found:
        return found
    seed_everything(seed)
    model = resnet((16, 32, 64), data)
    per_example = training_flops_per_example(model, data.input_shape)
    config = TrainConfig(**{**asdict(base), "epochs": epochs, "seed": seed})
    dense = count(model, data.input_shape)
    info = {
        "role": "full",
        "seed": seed,
        "widths": [16, 32, 64],
        "params": dense.params,
        "flops": dense.flops,
        "epochs": epochs,
        "train_flops_per_example": per_example,
        "train_flops": per_example * epochs * n,
        "train_examples": n,
    }
    return trained(run, model, Dense(model), data, config, lambda: info)


def growing(args: argparse.Namespace, command: str) -> None:
    data = load_dataset("fashion-mnist", pad_to_32=True)
    if args.test_subset:  # the first k test images (every epoch evaluates them)
        data = Dataset(
            data.name,
            data.x_train,
            data.y_train,
            data.x_test[: args.test_subset],
            data.y_test[: args.test_subset],
            data.num_classes,
        )
    folder = RESULTS / "grow"
    n = min(args.train_subset or len(data.x_train), len(data.x_train))
    base = TrainConfig(
        batch_size=128, lr=0.05, momentum=0.9, train_subset=args.train_subset, augment="none"
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        run = folder / (
            f"grown-from{args.start_width}-nu{args.grow_nu:g}-lam{args.grow_lam:g}-seed{seed}"
        )
        grown = done(run)
        if grown is None:
            started = time.perf_counter()
            config = GrowConfig(
                start_width=args.start_width,
                local_epochs=args.local_epochs,
                max_rounds=args.max_rounds,
                finetune_epochs=args.finetune_epochs,
                nu=args.grow_nu,
                lam=args.grow_lam,
            )
            seed_everything(seed)
            model, config = grow(
                "resnet20", data, TrainConfig(**{**asdict(base), "seed": seed}), config, quiet=True
            )
            phases = [
                {
                    "phase": f"round {h['round']} (DessiLBI)",
                    "widths": h["widths"],
                    "epochs": args.local_epochs,
                }
                for h in config.history
            ]
            phases.append(
                {
                    "phase": "fine-tune (SGD)",
                    "widths": config.history[-1]["widths"],
                    "epochs": args.finetune_epochs,
                }
            )
            for phase in phases:
                per_example = training_flops_per_example(
                    resnet(phase["widths"], data), data.input_shape
                )
                phase["train_flops_per_example"] = per_example
                phase["train_flops"] = per_example * phase["epochs"] * n
            from learnprune.engine import evaluate

            _loss, accuracy = evaluate(model, data.x_test, data.y_test)
            counts = count(model, data.input_shape)
            grown = {
                "role": "grown",
                "seed": seed,
                "test_accuracy": accuracy,
                "test_error": 1 - accuracy,
                "widths": config.history[-1]["widths"],
                "params": counts.params,
                "flops": counts.flops,
                "epochs": sum(p["epochs"] for p in phases),
                "phases": phases,
                "train_flops": sum(p["train_flops"] for p in phases),
                "train_examples": n,
                "history": config.history,
                "seconds": time.perf_counter() - started,
                "grow_config": {k: v for k, v in asdict(config).items() if k != "history"},
                "environment": environment(),
            }
            run.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run / "final.json", grown)
            print(f"grow/{run.name}: {accuracy:.2%}, widths {grown['widths']}", flush=True)
        rows.setdefault("grown", []).append(grown)
        for epochs in [grown["epochs"], *args.full_epochs]:
            role = "full" if epochs == grown["epochs"] else f"full, {epochs} epochs"
            rows.setdefault(role, []).append(full_network(folder, seed, epochs, data, base, n))
        lines = [
            f"ResNet-20 on Fashion-MNIST 32×32, {n} training examples, {len(data.x_test)} "
            f"test images; grown (DessiLBI ν {args.grow_nu:g}, λ {args.grow_lam:g}, lr 0.05) from "
            f"{args.start_width} channels per stage (τ 0.8, {args.local_epochs} epochs a "
            f"round, at most {args.max_rounds} rounds, {args.finetune_epochs} fine-tuning)",
            "",
            "| network | widths | params | forward FLOPs | epochs | training FLOPs | "
            "test accuracy (%) | seeds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        summary = {}
        for role, results in rows.items():
            accuracy = mean_std([r["test_accuracy"] for r in results])
            train_flops = mean_std([float(r["train_flops"]) for r in results])
            summary[role] = {"test_accuracy": accuracy, "train_flops": train_flops}
            widths = "; ".join(sorted({"-".join(map(str, r["widths"])) for r in results}))
            lines.append(
                f"| {role} | {widths} | {results[0]['params']:,} | {results[0]['flops']:,} | "
                f"{results[0]['epochs']} | "
                f"{train_flops['mean']:.3g} | {cell(accuracy)} | {len(results)} |"
            )
        settings = {"summary": summary, "settings": vars(args)}
        write_summary("grow", settings, "\n".join(lines), command)


def main() -> int:
    global RESULTS, SCRATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("transfer", "optimizer", "grow"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-subset", type=int, help="retraining / training examples")
    parser.add_argument("--path-epochs", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--opt-epochs", type=int, default=5)
    parser.add_argument("--start-width", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument(
        "--full-epochs", type=int, nargs="*", default=[], help="grow: more full-network runs"
    )
    parser.add_argument("--grow-nu", type=float, default=100.0, help="grow: ν (reference 100)")
    parser.add_argument("--grow-lam", type=float, default=1.0, help="grow: λ (reference 1)")
    parser.add_argument("--test-subset", type=int, help="grow: the first k test images")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    RESULTS, SCRATCH = args.out, args.out / ".scratch"
    torch.set_num_threads(1)
    command = "python benchmarks/dessilbi_claims.py " + " ".join(sys.argv[1:])
    args.out = str(args.out)
    {"transfer": transfer, "optimizer": optimizer, "grow": growing}[args.protocol](args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
