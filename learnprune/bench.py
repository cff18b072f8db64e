"""Measured inference speed of a pruned model in its deployable forms.

For one finished model this times, on this machine's CPU:

* ``dense``: the model as trained and finalized (zeros stored in dense weights);
* ``masked``: the same with learnprune's fixed-mask gates attached (what a model costs while
  its masks are still parametrizations);
* ``compact``: dropped channels removed for real (:func:`learnprune.compact.compact`);
* ``csr``: the compact model with every Linear layer of at least ``min_sparsity`` zeros as
  CSR with int32 indices (:mod:`learnprune.sparse_linear`; convs stay dense, ../shared/
  SPEED.md: no sparse conv kernel pays on CPU);

at each batch size and thread count: ``warmup`` calls, then the median of ``repeats`` timed
calls (``time.perf_counter``, ``torch.no_grad``). Forms are timed in alternating
rounds so drift of a shared machine hits all alike; speed-ups are ratios of medians taken in
the same run. Next to them: each form's FLOPs (FlopCounterMode, 2 per multiply-add) and
effective FLOPs (nonzero weights only), so measured speed-up can be read against the FLOPs
ratio.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from learnprune import validation
from learnprune.accounting import count
from learnprune.errors import ConfigError

FORMS = ("dense", "masked", "compact", "csr")


@dataclass
class Timing:
    """One form at one batch size and thread count."""

    form: str
    batch: int
    threads: int
    median_ms: float
    throughput: float  # examples per second
    speedup: float  # dense median / this median, same batch and threads
    flops: int
    effective_flops: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_forms(
    model: nn.Module,
    input_shape: Sequence[int],
    forms: Sequence[str] = FORMS,
    min_sparsity: float = 0.5,
) -> dict[str, nn.Module]:
    """The model in each deployable form (copies; ``model`` is not changed)."""
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        raise ConfigError(f"unknown form {', '.join(unknown)}; choose from {', '.join(FORMS)}")
    built: dict[str, nn.Module] = {}
    if "dense" in forms:
        built["dense"] = copy.deepcopy(model).eval()
    if "masked" in forms:
        from learnprune.methods.ticket import Ticket

        masked = copy.deepcopy(model).eval()
        masks = {n: p != 0 for n, p in masked.named_parameters() if p.dim() > 1}
        Ticket(masked, masks)  # fixed-mask gates, as during training
        built["masked"] = masked
    if "compact" in forms or "csr" in forms:
        from learnprune.compact import compact

        small = compact(model, None, input_shape).model.eval()
        if "compact" in forms:
            built["compact"] = small
        if "csr" in forms:
            from learnprune.sparse_linear import sparsify

            built["csr"] = sparsify(small, "csr", min_sparsity=min_sparsity).eval()
    return built


def _flops(built: dict[str, nn.Module], input_shape: Sequence[int]) -> dict[str, tuple[int, int]]:
    """``(FLOPs, effective FLOPs)`` of each form; a CSR layer does the work of its nonzero
    weights, so the ``csr`` form is charged the effective FLOPs of its dense equivalent (the
    compact model)."""
    from learnprune.sparse_linear import densify

    out = {}
    for name, m in built.items():
        counts = count(densify(m) if name == "csr" else m, input_shape)
        out[name] = (
            (counts.effective_flops, counts.effective_flops)
            if name == "csr"
            else (counts.flops, counts.effective_flops)
        )
    return out


def measure(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    forms: Sequence[str] = FORMS,
    batches: Sequence[int] = (1, 64),
    threads: Sequence[int] = (1, 2),
    warmup: int = 3,
    repeats: int = 30,
    rounds: int = 3,
    min_sparsity: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> list[Timing]:
    """Time every form at every batch size and thread count (see the module docstring)."""
    _call_counts(warmup, repeats, rounds)  # before the forms are built
    built = build_forms(model, input_shape, forms, min_sparsity)
    return time_forms(
        built,
        input_shape,
        batches=batches,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        rounds=rounds,
        progress=progress,
    )


def _call_counts(warmup: int, repeats: int, rounds: int) -> tuple[int, int, int]:
    """``warmup >= 0``, ``repeats >= 1`` and ``rounds >= 1`` as ints (raises ConfigError)."""
    return (
        validation.integer("warmup", warmup),
        validation.integer("repeats", repeats, minimum=1),
        validation.integer("rounds", rounds, minimum=1),
    )


def time_forms(
    built: dict[str, nn.Module],
    input_shape: Sequence[int],
    *,
    batches: Sequence[int] = (1, 64),
    threads: Sequence[int] = (1, 2),
    warmup: int = 3,
    repeats: int = 30,
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[Timing]:
    """:func:`measure` on forms already built (``{form name: model}``, ``"dense"`` the
    reference of the speed-ups when present)."""
    warmup, repeats, rounds = _call_counts(warmup, repeats, rounds)
    flops = _flops(built, input_shape)
    before = torch.get_num_threads()
    timings: list[Timing] = []
    try:
        for thread_count in threads:
            torch.set_num_threads(thread_count)
            for batch in batches:
                x = torch.randn(batch, *input_shape)
                samples: dict[str, list[float]] = {name: [] for name in built}
                with torch.no_grad():  # inference_mode breaks F.linear on CSR weights (torch 2.13)
                    for m in built.values():
                        for _ in range(warmup):
                            m(x)
                    for _ in range(rounds):  # alternate the forms: drift hits all alike
                        for name, m in built.items():
                            for _ in range(max(repeats // rounds, 1)):
                                start = time.perf_counter()
                                m(x)
                                samples[name].append(time.perf_counter() - start)
                medians = {name: statistics.median(s) for name, s in samples.items()}
                base = medians.get("dense", next(iter(medians.values())))
                for name, median in medians.items():
                    timings.append(
                        Timing(
                            form=name,
                            batch=batch,
                            threads=thread_count,
                            median_ms=median * 1e3,
                            throughput=batch / median,
                            speedup=base / median,
                            flops=flops[name][0],
                            effective_flops=flops[name][1],
                        )
                    )
                if progress is not None:
                    progress(f"batch {batch}, {thread_count} thread(s) done")
    finally:
        torch.set_num_threads(before)
    return timings


def format_timings(timings: Sequence[Timing]) -> str:
    """A markdown table, with the FLOPs ratio of each form over dense beside its speed-up."""
    dense_flops = {(t.batch, t.threads): t.flops for t in timings if t.form == "dense"} or {
        (t.batch, t.threads): t.flops for t in timings
    }
    lines = [
        "| form | batch | threads | median (ms) | examples/s | speed-up | FLOPs ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        reference = dense_flops.get((t.batch, t.threads), t.flops)
        ratio = reference / t.flops if t.flops else float("inf")  # an empty model
        lines.append(
            f"| {t.form} | {t.batch} | {t.threads} | {t.median_ms:.3f} | {t.throughput:,.0f} | "
            f"{t.speedup:.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines)
