"""The ``learnprune`` command line.

::

    learnprune train --recipe lenet300-gmp                        # a shipped recipe, by name
    learnprune train --model lenet300 --data mnist --method gmp --target 0.95 --epochs 20
    learnprune train --resume runs/lenet300-gmp-20261126-140501     # continue a run
    learnprune eval runs/lenet300-gmp-20261126-140501
    learnprune report runs/lenet300-gmp-20261126-140501 [more runs ...]
    learnprune data fetch mnist
    learnprune inspect --module mynets:TinyViT --groups coupled --input-shape 3,32,32
    learnprune list

Errors a user can cause end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from learnprune.errors import ConfigError, LearnpruneError, one_line

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it
LEARNPRUNE_WARNING = "learnprune: "
"""How learnprune's own warning messages begin (the command line shows them on one line)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"learnprune: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse reports the error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="learnprune", description="Learn sparse neural networks in PyTorch.")
    from learnprune import __version__

    parser.add_argument("--version", action="version", version=f"learnprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train and prune a model; writes a run directory")
    train.add_argument(
        "--recipe",
        help="a shipped recipe's name (learnprune list), e.g. lenet300-gmp, or a TOML/YAML file",
    )
    from learnprune.methods import METHODS

    train.add_argument("--method", help=", ".join(METHODS))
    train.add_argument(
        "--model", help="lenet300, lenet5-caffe, lenet5, vgg16, resnet20, resnet56, ..."
    )
    train.add_argument("--data", help="mnist, fashion-mnist, cifar10, cifar100")
    train.add_argument("--data-dir", help="directory holding the data set's files")
    train.add_argument(
        "--pad-to-32",
        action="store_true",
        default=None,
        help="pad 28x28 images to 32x32 (for the CIFAR models)",
    )
    train.add_argument("--epochs", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--optimizer", help="sgd or adam")
    train.add_argument("--seed", type=int)
    train.add_argument("--target", type=float, help="target sparsity in [0, 1) (method option)")
    train.add_argument(
        "--groups", help="element, out_channel, in_channel, coupled, or n:m like 2:4"
    )
    train.add_argument(
        "--exclude", action="append", help="layer name pattern to leave dense (repeatable)"
    )
    train.add_argument("--init", help="start from the weights of a run directory or a .pt file")
    train.add_argument(
        "--phases",
        metavar="W,L,F",
        help="epochs of dense warm-up, mask learning and fine-tuning with the mask fixed; "
        "they replace the recipe's epochs and its method's begin/end/prune_epoch",
    )
    train.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    train.add_argument(
        "--train-subset", type=int, help="train on a fixed random subset of N examples"
    )
    train.add_argument("--device", help="auto, cpu or cuda")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key, e.g. train.lr=0.05, method.end_epoch=10 or "
        "train.phases=[1,8,3] (as --phases)",
    )
    train.add_argument(
        "--out", help="run directory to create (default runs/<model>-<method>-<time>)"
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    ticket = commands.add_parser(
        "ticket", help="retrain a DessiLBI run's lottery ticket from its starting weights"
    )
    ticket.add_argument("run_dir", help="a finished or interrupted dessilbi run")
    ticket.add_argument("--epoch", type=int, help="take the support at this epoch")
    ticket.add_argument(
        "--target", type=float, help="a sparsity budget: the prune order cut exactly there"
    )
    ticket.add_argument(
        "--flops", type=float, help="a FLOPs budget (share of the dense FLOPs kept), as --target"
    )
    ticket.add_argument("--layers", default="all", help="all (every coupled weight) or conv")
    ticket.add_argument("--epochs", type=int, help="training epochs (default: the source run's)")
    ticket.add_argument("--lr", type=float)
    ticket.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ticket.add_argument("--out", help="run directory to create")
    ticket.add_argument("--quiet", action="store_true")
    ticket.add_argument("--no-progress", action="store_true")

    grow = commands.add_parser("grow", help="grow a narrow VGG-16 or ResNet with DessiLBI")
    grow.add_argument("--model", required=True, help="vgg16 or resnet20/32/44/56/110")
    grow.add_argument("--data", required=True)
    grow.add_argument("--data-dir")
    grow.add_argument("--pad-to-32", action="store_true")
    grow.add_argument("--start-width", type=int, default=16)
    grow.add_argument("--tau", type=float, default=0.8)
    grow.add_argument("--local-epochs", type=int, default=10)
    grow.add_argument("--max-rounds", type=int, default=10)
    grow.add_argument("--finetune-epochs", type=int, default=40)
    grow.add_argument("--nu", type=float, default=100.0)
    grow.add_argument("--lam", type=float, default=1.0, help="threshold of the group prox")
    grow.add_argument("--lr", type=float, default=0.05)
    grow.add_argument("--batch-size", type=int, default=128)
    grow.add_argument("--train-subset", type=int)
    grow.add_argument("--device", default="auto")
    grow.add_argument("--seed", type=int, default=0)
    grow.add_argument("--out", required=True)
    grow.add_argument("--quiet", action="store_true")

    evaluate = commands.add_parser("eval", help="evaluate a finished run's final model")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data-dir", help="directory holding the data set's files")

    compact = commands.add_parser(
        "compact", help="remove a finished run's dropped channels for real; export the result"
    )
    compact.add_argument("run_dir")
    compact.add_argument("--out", help="output directory (default RUN_DIR/compact)")
    compact.add_argument(
        "--no-check",
        action="store_true",
        help="skip checking that the compact model's outputs equal the masked model's",
    )
    compact.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output, or write beside other files (those stay untouched)",
    )
    compact.add_argument("--data-dir", help="directory holding the data set's files")

    export = commands.add_parser(
        "export", help="export a finished run's model (safetensors, csr, bsr, onnx)"
    )
    export.add_argument("run_dir")
    export.add_argument(
        "--format",
        default="safetensors",
        help="comma-separated: safetensors (always written), csr, bsr, onnx",
    )
    export.add_argument("--out", help="output directory (default RUN_DIR/export)")
    export.add_argument(
        "--min-sparsity",
        type=float,
        default=0.0,
        help="csr/bsr: store a Linear weight sparse only from this sparsity on",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export, or write beside other files (those stay untouched)",
    )
    export.add_argument("--data-dir", help="directory holding the data set's files")

    bench = commands.add_parser(
        "bench", help="measured latency of a run's model: dense, masked, compact, csr"
    )
    bench.add_argument("run_dir")
    bench.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    bench.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    bench.add_argument(
        "--repeats", type=_positive_int, default=30, help="timed calls per form (>= 1)"
    )
    bench.add_argument(
        "--min-sparsity", type=float, default=0.5, help="csr: Linear layers from this sparsity"
    )
    bench.add_argument("--data-dir", help="directory holding the data set's files")

    compare = commands.add_parser(
        "compare", help="run several methods at several strengths on one recipe; table + report"
    )
    compare.add_argument(
        "--recipe", required=True, help="model, data and epochs of the sweep (a name or a file)"
    )
    compare.add_argument(
        "--methods",
        default="scl,dessilbi,diffprune,hardconcrete,gmp,magnitude",
        help="comma-separated method names",
    )
    compare.add_argument(
        "--targets", default="0.9,0.95,0.98", help="sparsity targets for every method"
    )
    compare.add_argument(
        "--strengths",
        action="append",
        default=[],
        metavar="METHOD=[OPTION:]V1,V2",
        help="per-method strengths instead, e.g. scl=lam:0.003,0.005 (repeatable)",
    )
    compare.add_argument("--path-epochs", default="5,10,20", help="DessiLBI: path epochs")
    compare.add_argument("--epochs", type=int, help="replace the recipe's number of epochs")
    compare.add_argument(
        "--phases",
        metavar="W,L,F",
        help="the same epochs of warm-up, mask learning and fine-tuning for every method",
    )
    start = compare.add_mutually_exclusive_group()
    start.add_argument(
        "--init", metavar="RUN_DIR", help="start every method from these weights (model.pt)"
    )
    start.add_argument(
        "--dense-epochs",
        type=_positive_int,
        metavar="N",
        help="train one dense model for N epochs first (into OUT/dense-start) and start "
        "every method from it",
    )
    compare.add_argument("--bench", action="store_true", help="also time every finished model")
    compare.add_argument("--out", required=True, help="sweep directory (resumed if it exists)")
    compare.add_argument("--no-progress", action="store_true")

    report = commands.add_parser("report", help="per-layer table of a run, or a table of runs")
    report.add_argument("run_dirs", nargs="+")

    data = commands.add_parser("data", help="fetch data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_commands.add_parser("fetch", help="fetch mnist or fashion-mnist into the cache")
    fetch.add_argument("name", help="mnist or fashion-mnist")
    fetch.add_argument(
        "--root",
        help="directory to put the data set's files in "
        "(default $LEARNPRUNE_DATA/<name>, $LEARNPRUNE_DATA = ~/.cache/learnprune)",
    )

    # inspect: learnprune.inspection
    inspect = commands.add_parser(
        "inspect", help="what a group kind prunes in a model, what it skips and why"
    )
    source = inspect.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a built-in model (see learnprune list)")
    source.add_argument(
        "--module",
        metavar="PATH.TO.MODULE:FACTORY",
        help="your model: a class or no-argument function importable from Python "
        "(the current directory included), e.g. mynets:TinyViT",
    )
    inspect.add_argument("--groups", default="element", help="a group kind, e.g. coupled")
    inspect.add_argument(
        "--input-shape", metavar="C,H,W", help="one example's shape; runs one forward pass"
    )
    inspect.add_argument("--exclude", action="append", default=[], help="layer name pattern")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")

    commands.add_parser("list", help="models, methods, data sets and shipped recipes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _dispatch(args)
    except LearnpruneError as err:
        if not getattr(err, "reported_by_rank_0", False):  # one message per torchrun job
            sys.stderr.write(f"learnprune: error: {one_line(str(err))}\n")
        return err.exit_code
    except KeyboardInterrupt as interrupt:
        hint = ""
        run_dir = getattr(interrupt, "resumable_run_dir", None)  # set by runner.run
        if run_dir is not None:
            hint = f"; continue with: learnprune train --resume {run_dir}"
        sys.stderr.write(f"learnprune: interrupted{hint}\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `learnprune report ... | head -1`: the reader has gone
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """learnprune's own warnings as one line ``learnprune: warning: ...``; others as usual."""
    text = str(message)
    if text.startswith(LEARNPRUNE_WARNING):
        shown = f"learnprune: warning: {text[len(LEARNPRUNE_WARNING) :]}\n"
    else:
        shown = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(shown)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from learnprune.distributed import process_group_from_env

        with process_group_from_env():  # under torchrun: one process of a DDP group
            return _train(args)
    _check_output_paths(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "ticket":
        return _ticket(args)
    if args.command == "grow":
        return _grow(args)
    if args.command == "report":
        return _report(args)
    if args.command == "compact":
        return _compact(args)
    if args.command == "export":
        return _export(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "data":
        return _fetch(args)
    if args.command == "inspect":
        return _inspect(args)
    return _list()


def _check_output_paths(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` or ``--root`` that cannot be written (one line, nothing left)."""
    from learnprune.validation import output_directory

    for flag in ("out", "root"):
        if getattr(args, flag, None):
            output_directory(f"--{flag}", getattr(args, flag))


def _train(args: argparse.Namespace) -> int:
    from learnprune.config import RunConfig, apply_overrides, apply_phases, read_recipe
    from learnprune.distributed import on_main
    from learnprune.phases import Phases
    from learnprune.runner import read_run_config
    from learnprune.validation import output_directory

    if args.resume:
        given = [
            flag
            for flag in (
                "recipe",
                "method",
                "model",
                "data",
                "epochs",
                "lr",
                "target",
                "groups",
                "out",
                "init",
                "batch_size",
                "max_steps",
                "phases",
            )
            if getattr(args, flag) is not None
        ] + (["set"] if args.set else [])
        if given:
            flag = given[0].replace("_", "-")
            raise ConfigError(f"--resume continues a run with its own saved config; drop --{flag}")
        config = read_run_config(args.resume)
        if args.device:
            config.train.device = args.device
        out: Path | None = Path(args.resume)
    else:
        raw: dict[str, Any] = read_recipe(args.recipe) if args.recipe else {}
        sets = _parsed_sets(args.set)
        phases = args.phases if args.phases is not None else sets.pop(("train", "phases"), None)
        if phases is not None:  # the phases replace the recipe's epochs and method timing
            raw = apply_phases(raw, Phases.parse(phases))
        overrides: dict[tuple[str, ...], Any] = {
            ("method",): args.method,
            ("model",): args.model,
            ("data",): args.data,
            ("init",): args.init,
            ("data_options", "root"): args.data_dir,
            ("data_options", "pad_to_32"): args.pad_to_32,
            ("train", "epochs"): args.epochs,
            ("train", "lr"): args.lr,
            ("train", "batch_size"): args.batch_size,
            ("train", "weight_decay"): args.weight_decay,
            ("train", "optimizer"): args.optimizer,
            ("train", "seed"): args.seed,
            ("train", "max_steps"): args.max_steps,
            ("train", "train_subset"): args.train_subset,
            ("train", "device"): args.device,
            ("method", "target"): args.target,
            ("method", "groups"): args.groups,
            ("method", "exclude"): args.exclude,
        }
        overrides.update(sets)
        config = RunConfig.from_dict(apply_overrides(raw, overrides))
        config.validate()
        if (config.method == "dense") and any(
            key in config.method_options for key in ("target", "groups", "exclude")
        ):
            raise ConfigError(
                "method dense prunes nothing; pass --method magnitude or gmp with --target"
            )
        out = Path(args.out) if args.out else None  # None: a new runs/<name> directory
        if out is not None:
            on_main(lambda: output_directory("--out", out))
    return _run_and_report(args, config, out, resume=bool(args.resume))


def _run_and_report(
    args: argparse.Namespace, config: Any, out: Path | None, *, resume: bool
) -> int:
    """Run ``config`` into ``out`` (``None``: a new directory under ``runs/``) and print
    the summary (unless quiet)."""
    from learnprune.report import summary
    from learnprune.runner import run

    result = run(
        config,
        out,
        resume=resume,
        quiet=args.quiet,
        progress=False if args.no_progress else None,
    )
    from learnprune.distributed import is_main

    if not args.quiet and is_main():
        print()
        print(summary(result))
        print(f"\nresults in {result['run_dir']} (final.json, metrics.jsonl, model.pt)")
    return 0


def _parsed_sets(texts: list[str]) -> dict[tuple[str, ...], Any]:
    """``--set KEY=VALUE`` options as overrides."""
    from learnprune.config import parse_override

    overrides = {}
    for text in texts:
        path, value = parse_override(text)
        overrides[tuple(path)] = value
    return overrides


def _ticket(args: argparse.Namespace) -> int:
    from learnprune.config import RunConfig, apply_overrides
    from learnprune.runner import initial_weights, read_run_config

    source = Path(args.run_dir)
    found = read_run_config(source)
    if found.method != "dessilbi":
        raise ConfigError(f"{source} is a {found.method} run; tickets come from dessilbi runs")
    raw = found.as_dict()
    raw.pop("method_options")
    raw["train"].pop("phases", None)  # a ticket retrains with its mask fixed throughout
    if args.target is not None and args.flops is not None:
        raise ConfigError("give one budget: --target or --flops")
    target = {"flops": args.flops} if args.flops is not None else args.target
    if args.epoch is None and target is None:
        raise ConfigError("learnprune ticket needs --epoch, --target or --flops")
    raw["method"] = {"name": "ticket", "source": str(source), "layers": args.layers}
    if args.epoch is not None:
        raw["method"]["epoch"] = args.epoch
    if target is not None:
        raw["method"]["target"] = target
    raw["init"] = str(initial_weights(source))
    at = [] if args.epoch is None else [f"epoch {args.epoch}"]
    if target is not None:
        at.append(f"flops {args.flops:g}" if args.flops is not None else f"sparsity {target:g}")
    raw["description"] = f"lottery ticket of {source} at {', '.join(at)}"
    overrides: dict[tuple[str, ...], Any] = {
        ("train", "epochs"): args.epochs,
        ("train", "lr"): args.lr,
    }
    overrides.update(_parsed_sets(args.set))
    config = RunConfig.from_dict(apply_overrides(raw, overrides)).validate()
    out = Path(args.out) if args.out else None
    return _run_and_report(args, config, out, resume=False)


def _grow(args: argparse.Namespace) -> int:
    from learnprune.config import TrainConfig
    from learnprune.data import canonical_name, load_dataset
    from learnprune.engine import configure_torch
    from learnprune.growing import GrowConfig, grow_run

    configure_torch()
    train_config = TrainConfig(
        epochs=1,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=0.9,
        weight_decay=0.0,
        lr_schedule="constant",
        seed=args.seed,
        train_subset=args.train_subset,
        device=args.device,
    ).validate()
    config = GrowConfig(
        start_width=args.start_width,
        tau=args.tau,
        local_epochs=args.local_epochs,
        max_rounds=args.max_rounds,
        lam=args.lam,
        finetune_epochs=args.finetune_epochs,
        nu=args.nu,
    ).validate()
    name = canonical_name(args.data)
    data = load_dataset(name, args.data_dir, pad_to_32=args.pad_to_32)
    result = grow_run(
        args.model, data, name, train_config, config, Path(args.out), quiet=args.quiet
    )
    if not args.quiet:
        print(
            f"grown {args.model}: widths {result['widths']} after {result['rounds']} rounds, "
            f"test accuracy {result['test_accuracy']:.2%}, params {result['params']:,}"
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from learnprune.accounting import count, format_table
    from learnprune.deployment import load_run_model
    from learnprune.engine import configure_torch, evaluate

    configure_torch()
    config, data, model, _options = load_run_model(args.run_dir, args.data_dir)
    loss, accuracy = evaluate(model, data.x_test, data.y_test)
    print(
        f"{config.model} from {args.run_dir} on {config.data} test set: "
        f"accuracy {accuracy:.2%} (error {1 - accuracy:.2%}), loss {loss:.4f}"
    )
    print(format_table(count(model, data.input_shape)))
    return 0


def _compact(args: argparse.Namespace) -> int:
    from learnprune.deployment import compact_run

    summary = compact_run(
        args.run_dir,
        args.out,
        check=not args.no_check,
        data_dir=args.data_dir,
        overwrite=args.overwrite,
    )
    print(summary["table"])
    print(
        f"compact model in {summary['out']}: test accuracy {summary['test_accuracy_compact']:.2%}"
        f" (masked {summary['test_accuracy_masked']:.2%}); load it with learnprune.export.load"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from learnprune.deployment import export_run

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    if "safetensors" not in formats:
        formats.insert(0, "safetensors")
    result = export_run(
        args.run_dir,
        args.out,
        formats=formats,
        min_sparsity=args.min_sparsity,
        data_dir=args.data_dir,
        overwrite=args.overwrite,
    )
    accuracies = result["test_accuracy"]
    loaded = ", ".join(f"{fmt} {accuracies[fmt]:.2%}" for fmt in result["formats"])
    print(f"exported to {result['out']}; test accuracy of the run {accuracies['run']:.2%}")
    print(f"loaded back: {loaded}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from learnprune.deployment import bench_run

    result = bench_run(
        args.run_dir,
        batches=_int_list("--batches", args.batches),
        threads=_int_list("--threads", args.threads),
        repeats=args.repeats,
        min_sparsity=args.min_sparsity,
        data_dir=args.data_dir,
    )
    print(result["table"])
    print(f"written to {result['path']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from learnprune.compare import (
        DENSE_START,
        check_init,
        dense_start_config,
        parse_strengths,
        plan,
        run_or_resume,
        run_sweep,
        write_results,
    )
    from learnprune.config import apply_phases, read_recipe
    from learnprune.engine import configure_torch
    from learnprune.phases import Phases

    configure_torch()
    out = Path(args.out)
    base = read_recipe(args.recipe)
    if args.epochs is not None:
        base.setdefault("train", {})["epochs"] = args.epochs
    dense_start = None
    start: Path | None = None
    if args.dense_epochs is not None:
        dense_start = dense_start_config(base, args.dense_epochs)
        start = out / DENSE_START
    elif args.init is not None:
        start = check_init(args.init)
    if args.phases is not None:
        base = apply_phases(base, Phases.parse(args.phases), args.epochs)
    try:
        targets = [float(v) for v in args.targets.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--targets takes numbers separated by commas, got {args.targets!r}"
        ) from None
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    planned = plan(
        base,
        methods,
        targets,
        parse_strengths(args.strengths),
        _int_list("--path-epochs", args.path_epochs),
        init=start,
    )
    if dense_start is not None and start is not None:
        print(f"compare: the dense start ({args.dense_epochs} epochs) in {start}")
        run_or_resume(dense_start, start)
    print(f"compare: {len(planned)} runs in {out / 'runs'}")
    rows = run_sweep(planned, out, progress=not args.no_progress, bench=args.bench)
    title = f"learnprune compare: {base.get('model')} / {base.get('data')}"
    paths = write_results(rows, out, title)
    print(paths["md"].read_text())
    print(f"results: {paths['csv']}, {paths['md']}, {paths['html']}")
    return 0


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} takes positive whole numbers, got {text!r}")
    return values


def _report(args: argparse.Namespace) -> int:
    from learnprune.report import compare, read_final, summary

    if len(args.run_dirs) == 1:
        print(summary(read_final(args.run_dirs[0])))
    else:
        print(compare(args.run_dirs))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from learnprune.data import fetch

    where = fetch(args.name, args.root)
    print(f"{args.name} is ready in {where}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from learnprune.inspection import inspect_command

    print(
        inspect_command(
            model=args.model,
            module=args.module,
            groups=args.groups,
            input_shape=args.input_shape,
            exclude=args.exclude,
            as_json=args.json,
        )
    )
    return 0


def _list() -> int:
    from learnprune.config import shipped_recipes
    from learnprune.data import DATASETS
    from learnprune.methods import METHODS
    from learnprune.models import list_models

    print("models:   " + ", ".join(list_models()))
    print("methods:  " + ", ".join(METHODS))
    print("data:     " + ", ".join(DATASETS))
    print("recipes:  " + ", ".join(shipped_recipes()) + "  (train --recipe NAME)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
