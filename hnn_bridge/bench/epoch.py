"""`hnn-bridge bench --suite epoch`: one training epoch of a recipe row, every contender
running the training step of `hnn_bridge.training.loop.train_model` (Adam, cross entropy on
the spike counts) on the same batches, interleaved batch by batch.

The suite is four steps, each usable alone: `epoch_contenders` (the networks, from one set
of weights), `time_epoch` (the interleaved epoch), `epoch_rows` (times scaled to the whole
epoch, memory, loss and accuracy per contender) and `add_total_ratios`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import make_neuron
from . import baselines
from .contenders import (
    SJ,
    SNNTORCH,
    add_ratios,
    contender_names,
    ratio_targets,
    result_row,
    seed_all,
    train_step,
)
from .timing import machine_info, peak_memory, saved_tensor_bytes, summarize

__all__ = [
    "Contender",
    "EpochTimes",
    "LimitedBatches",
    "add_total_ratios",
    "epoch_contenders",
    "epoch_rows",
    "epoch_suite",
    "load_recipe_row",
    "time_epoch",
]


class LimitedBatches:
    """The first ``limit`` batches of an epoch of `TensorBatches` (all when limit is None)."""

    def __init__(self, batches: Any, limit: Optional[int]) -> None:
        self.batches, self.limit = batches, limit

    def __len__(self) -> int:
        n = len(self.batches)
        return n if self.limit is None else min(n, self.limit)

    def epoch_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i, item in enumerate(self.batches.epoch_batches(epoch)):
            if self.limit is not None and i >= self.limit:
                return
            yield item


class Contender(NamedTuple):
    """One network of the race: ``group`` is ours, an ablation or a baseline (``tag``:
    `SJ` or `SNNTORCH`); ``backend`` names our backend (None for the others)."""

    model: nn.Module
    group: str
    tag: Optional[str]
    backend: Optional[str] = None


def load_recipe_row(recipe: str, row: int, overrides: dict[str, Any]):
    """Row ``row`` of ``recipe`` configured with ``overrides`` (a `recipe.RowSpec`)."""
    from ..recipe import load_recipe

    r = load_recipe(recipe).configure(overrides=overrides).select([row])
    return r.rows[0]


def epoch_contenders(ref: nn.Module, names: Sequence[str], ablations: bool) -> dict[str, Contender]:
    """``ref`` on each of our backends ``names``, its first-SL ablation (``ablations``) and
    the same network the SpikingJelly way and the snnTorch way, all from ``ref``'s weights
    (the reference backend is ``ref`` itself)."""
    contenders: dict[str, Contender] = {}
    for b in names:
        m = ref if b == "reference" else baselines.with_neurons(ref, lambda p, b=b: make_neuron(b, p))
        contenders[f"ours: {b}"] = Contender(m, "ours", None, b)
    if ablations and ref.first_op is not None:
        unhoisted = baselines.unhoisted(ref)
        contenders["ours: reference, first SL weighed T times"] = Contender(unhoisted, "ablation", None)
    contenders["SpikingJelly LIFNode net"] = Contender(baselines.SJMultiStepNet(ref), "baseline", SJ)
    contenders["snnTorch Leaky loop net"] = Contender(baselines.SNNTorchLoopNet(ref), "baseline", SNNTORCH)
    return contenders


@dataclass
class EpochTimes:
    """What `time_epoch` measured, per contender name: every step's seconds and loss, the
    strict hits; and the shared data time, images seen, batches run and the first batch."""

    step_times: dict[str, list[float]]
    losses: dict[str, list[float]]
    correct: dict[str, int]
    data_time: float = 0.0
    seen: int = 0
    batches: int = 0
    first: Optional[tuple[Tensor, Tensor]] = field(default=None, repr=False)


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    """``timed(fn) -> (seconds, fn())``, synchronising CUDA around the call."""
    clock_cuda = device.type == "cuda"

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if clock_cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        if clock_cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, result

    return timed


def time_epoch(
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    batches: Any,
    *,
    warmup: int,
    device: torch.device,
    progress: Optional[Callable[[str], None]] = None,
    timed: Optional[Callable[[Callable[[], Any]], tuple[float, Any]]] = None,
) -> EpochTimes:
    """Run epoch 0 of ``batches``: every model takes `train_step` on each batch, the first
    of them rotating from batch to batch (batch i starts with model i mod n), so load from
    other processes hits all alike. Before the first timed step each model's deep copy
    takes ``warmup`` untimed steps (first-call costs: allocations, MKL set-up). ``timed``
    (default: wall clock, CUDA synchronised) times each step and each batch fetch."""
    timed = timed or _timer(device)
    order = list(models)
    times = EpochTimes({n: [] for n in order}, {n: [] for n in order}, {n: 0 for n in order})
    it = iter(batches.epoch_batches(0))
    i = 0
    while True:
        dt, item = timed(lambda: next(it, None))
        if item is None:
            break
        times.data_time += dt
        x, y = item
        if times.first is None:
            times.first = (x, y)
            for name in order:  # not counted: first-call costs (allocations, MKL set-up)
                spare = copy.deepcopy(models[name])
                spare_opt = torch.optim.Adam([p for p in spare.parameters() if p.requires_grad], lr=0.0)
                for _ in range(warmup):
                    train_step(spare, spare_opt, x, y)
                del spare, spare_opt
        k = i % len(order)
        for name in order[k:] + order[:k]:
            m = models[name]
            seconds, (loss, hits) = timed(lambda: train_step(m, optimizers[name], x, y))
            times.step_times[name].append(seconds)
            times.losses[name].append(loss)
            times.correct[name] += hits
        times.seen += len(y)
        i += 1
        times.batches = i
        if progress is not None and (i % 50 == 0 or i == len(batches)):
            progress(f"  epoch suite: batch {i}/{len(batches)}")
    if times.first is None:
        raise ValueError("the epoch has no batches")
    return times


def epoch_rows(
    contenders: dict[str, Contender],
    optimizers: dict[str, torch.optim.Optimizer],
    times: EpochTimes,
    full_batches: int,
    device: torch.device,
    memory_steps: int,
) -> list[dict[str, Any]]:
    """One row per contender: the epoch time as median step x ``full_batches`` + data time,
    and as the sum of the measured steps + data time, both scaled by ``full_batches`` /
    batches run; the step statistics; peak memory (the largest of ``memory_steps`` more
    steps on the first batch, measured apart) and autograd's saved bytes; mean loss and
    training accuracy."""
    scale = full_batches / times.batches
    x, y = times.first
    rows = []
    for name, (model, group, tag, backend) in contenders.items():
        steps_s = sum(times.step_times[name])
        epoch_s = (steps_s + times.data_time) * scale
        step_stats = summarize(times.step_times[name])
        epoch_median_s = step_stats.median * full_batches + times.data_time * scale
        weights = list(model.parameters())
        peaks = [
            peak_memory(lambda: train_step(model, optimizers[name], x, y), device)
            for _ in range(memory_steps)
        ]
        saved = saved_tensor_bytes(lambda: F.cross_entropy(model(x), y), exclude=weights)
        peak = None if any(p is None for p in peaks) else max(peaks)
        rows.append(
            result_row(
                name,
                group,
                baseline=tag,
                backend=backend,
                epoch_s=epoch_s,
                epoch_median_s=epoch_median_s,
                steps_s=steps_s * scale,
                data_s=times.data_time * scale,
                step=step_stats.as_dict(),
                saved_bytes=saved,
                peak_bytes=peak,
                mean_loss=sum(times.losses[name]) / len(times.losses[name]),
                train_acc=times.correct[name] / max(times.seen, 1),
            )
        )
    return rows


def add_total_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``ratio_sj_total`` / ``ratio_snntorch_total`` to our rows: the ratio of the
    measured epoch totals (``epoch_s``), for reference beside the median-step ratios."""
    for r in rows:
        base = {b["baseline"]: b for b in rows if b["group"] == "baseline"}
        if r["group"] != "baseline":
            for tag in (SJ, SNNTORCH):
                r[f"ratio_{tag}_total"] = r["epoch_s"] / base[tag]["epoch_s"] if tag in base else None


def epoch_suite(
    *,
    recipe: str = "table1a",
    row: int = 3,
    steps: Optional[int] = 25,
    batch: Optional[int] = 64,
    backends: Sequence[str] = ("reference", "spikingjelly", "snntorch"),
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    limit_batches: Optional[int] = None,
    warmup: int = 2,
    device: str = "cpu",
    ablations: bool = True,
    memory_steps: int = 2,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """One training epoch of a recipe row (default: Table 1(a), A784-S500-S10 with duplicate
    coding, simultaneous; T = 25, batch 64, Adam lr 1e-3, dropout 0.3, on the 42,000
    training images of the 6:2:2 split of MNIST).

    Every contender has its own copy of the same initial weights and its own Adam, and
    runs `train_model`'s step on the same batches, taking turns batch by batch
    (`time_epoch`). Reported (`epoch_rows`): the epoch time as median step time x batches
    + data time, and as the sum of the measured steps + data time; the ratios use the
    median steps. With ``limit_batches`` only the first batches run and the totals are
    scaled to the whole epoch, and flagged so. Peak memory: the largest of
    ``memory_steps`` training steps measured apart (after the timed run, so the optimizer
    states exist).
    """
    from ..data import TensorBatches, load_dataset, split_622
    from ..recipe import build_row

    dev = torch.device(device)
    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides["steps"] = steps
    if batch is not None:
        overrides["batch_size"] = batch
    if dataset is not None:
        overrides["dataset"] = dataset
    spec = load_recipe_row(recipe, row, overrides)
    s = spec.settings
    names, skipped = contender_names(backends, dev)

    ds = load_dataset(s.dataset, data_dir)
    split = split_622(ds.labels, seed=s.split_seed)
    loader = TensorBatches(
        ds.images,
        ds.labels,
        split.train,
        batch_size=s.batch_size,
        shuffle=True,
        seed=seed,
        device=dev,
        preload=dev.type == "cuda",
    )
    full_batches = len(loader)

    seed_all(seed)
    ref = build_row(spec)
    if spec.training == "separate":
        ref.freeze_als()
    contenders = epoch_contenders(ref, names, ablations)
    optimizers = {}
    for name, c in contenders.items():
        c.model.to(dev).train()
        optimizers[name] = torch.optim.Adam([p for p in c.model.parameters() if p.requires_grad], lr=s.lr)

    models = {name: c.model for name, c in contenders.items()}
    times = time_epoch(
        models,
        optimizers,
        LimitedBatches(loader, limit_batches),
        warmup=warmup,
        device=dev,
        progress=progress,
    )
    rows = epoch_rows(contenders, optimizers, times, full_batches, dev, memory_steps)
    add_ratios(rows, "step.median")
    add_total_ratios(rows)
    measured = times.batches
    estimated = measured < full_batches
    scale = full_batches / measured
    note = (
        f"{s.dataset}: {measured} of {full_batches} batches measured, epoch time scaled x{scale:.2f}"
        if estimated
        else f"{s.dataset}: full epoch, {full_batches} batches"
    )
    return {
        "suite": "epoch",
        "config": {
            "recipe": recipe,
            "row": row,
            "label": spec.label,
            "arch": spec.arch,
            "coder": spec.coder,
            "training": spec.training,
            "settings": s.as_dict(),
            "train_images": int(split.train.numel()),
            "batches_per_epoch": full_batches,
            "batches_measured": measured,
            "estimated": estimated,
            "note": note,
            "warmup_steps": warmup,
            "device": str(dev),
            "skipped": skipped,
            "loop": "hnn_bridge.training.loop.train_model's step: forward, cross entropy, zero_grad, "
            "backward, Adam step, score_batch",
        },
        "machine": machine_info(dev),
        "rows": rows,
        "targets": ratio_targets("epoch", rows, f"{spec.arch}, T={s.steps}, batch {s.batch_size}, {note}"),
    }
