"""Train one network (§4.1): Adam, cross entropy on the output, the best-validation epoch.

The loss is cross entropy on what the network returns: for a spiking output layer the
spike counts summed over the T steps, which is eq. 2 (softmax over the counts); for a
pure ANN the logits. After every epoch the network is evaluated on the validation set
(``model.eval()``, ``torch.no_grad()``), and the weights of the epoch with the best
validation accuracy are kept: those are the ones evaluated on test (§4.1).

Accuracy with spike-count ties: the class with the highest count is the prediction only
when that count is unique. When several classes share the top count (including the
all-silent output, every count zero) the image counts as wrong (the strict rule,
``acc``); the share of such images is ``tie_rate``. ``acc_argmax`` is the optimistic
accuracy that breaks ties by the lowest class index, as ``torch.argmax`` does.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import autocast, grad_scaler
from ..rates import recording_spike_rates, spike_rates
from .checkpoint import rng_state, set_rng_state
from .distributed import SINGLE, DistContext, all_gather_objects, all_reduce_sum, rank_seed

__all__ = [
    "TIE_RULE",
    "EpochRecord",
    "Metrics",
    "NonFiniteLoss",
    "Progress",
    "evaluate",
    "score_batch",
    "train_model",
]

TIE_RULE = (
    "Accuracy counts a prediction as correct only when the true class has the unique highest "
    "output (spike count); images whose top count is shared by several classes, including an "
    "all-silent output, count as wrong. 'tie rate' is the share of such test images; "
    "'argmax acc.' breaks ties by the lowest class index instead (torch.argmax), an upper bound."
)


@dataclass(frozen=True)
class Metrics:
    """Accuracy of one pass over a data set (fractions in [0, 1])."""

    acc: float  # strict rule: ties are wrong
    acc_argmax: float  # ties broken by the lowest index
    tie_rate: float  # several classes share the top output
    silent_rate: float  # every output is zero (no output spike)
    loss: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """One line of the per-epoch log."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_acc: float
    val_acc_argmax: float
    val_tie_rate: float
    lr: float
    seconds: float
    best: bool  # this epoch's weights became the best so far
    # spiking output only (None for an ANN): shares of this epoch's training images whose
    # output was silent (no spike at all) or saturated (every class fired at every step)
    train_out_silent: float | None = None
    train_out_saturated: float | None = None
    # spikes per neuron per step of every SL on the validation set, by `rates.layer_key`
    val_rates: dict[str, float] | None = None
    # only with ``test_batches`` (`train_model`): this epoch's weights on the test set, for
    # reporting the best *test* epoch beside the best-validation one (never used to select)
    test_acc: float | None = None
    test_acc_argmax: float | None = None
    test_tie_rate: float | None = None
    # spiking output only: the classes whose output neuron fired on no training image of
    # the epoch (never predicted; their neurons get almost no surrogate gradient)
    train_out_dead: list[int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss. Carries what finished before it: the epoch
    records, the best-validation weights and metrics so far."""

    def __init__(self, epoch: int, batch: int, value: float, finished: Mapping[str, Any]) -> None:
        super().__init__(f"non-finite training loss ({value}) in epoch {epoch}, batch {batch}; "
                         f"stopped, keeping the {epoch - 1} finished epoch(s)")
        self.epoch = epoch
        self.batch = batch
        self.value = value
        self.finished = finished


class Progress:
    """Receives progress events; the default does nothing (see `training.progress`)."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch(self, index: int, loss: float) -> None: ...

    def end_epoch(self, record: EpochRecord, eta_s: float) -> None: ...

    def close(self) -> None: ...


def score_batch(out: Tensor, y: Tensor) -> tuple[int, int, int, int]:
    """(correct by the strict rule, correct by argmax, ties, silent) for one batch."""
    top = out.max(dim=1, keepdim=True).values
    at_top = out == top
    tied = at_top.sum(dim=1) > 1
    silent = (out == 0).all(dim=1)
    argmax = out.argmax(dim=1)
    hit = argmax == y
    return int((hit & ~tied).sum()), int(hit.sum()), int(tied.sum()), int(silent.sum())


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], dist: DistContext | None = None,
             precision: str = "32", logit_scale: float = 1.0) -> Metrics:
    """Accuracy (strict tie rule and argmax), tie rate and loss over ``batches``.

    ``precision`` (`hnn_bridge.precision.PRECISIONS`): the forward runs under that autocast,
    as in training; the device is the model's. ``logit_scale`` scales a spiking output in
    the loss only (as in `train_model`); the accuracies do not depend on it.

    Under DDP (``dist`` with several processes) each process passes its own share of the
    set and the counts are summed over all processes (every process gets the same
    `Metrics`); ``model`` is the unwrapped module (no gradient synchronisation here).
    """
    was_training = model.training
    model.eval()
    strict = argmax = ties = silent = n = 0
    loss = 0.0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    scale = _loss_scale(model, logit_scale)
    try:
        for x, y in batches:
            with autocast(precision, device):
                out = model(x)
            loss += float(F.cross_entropy(scale * out.float(), y, reduction="sum"))
            s, a, t, z = score_batch(out, y)
            strict, argmax, ties, silent, n = strict + s, argmax + a, ties + t, silent + z, n + len(y)
    finally:
        model.train(was_training)
    if dist is not None and dist.distributed:
        strict, argmax, ties, silent, n, loss = all_reduce_sum([strict, argmax, ties, silent, n, loss], dist)
        strict, argmax, ties, silent, n = (int(round(v)) for v in (strict, argmax, ties, silent, n))
    if n == 0:
        return Metrics(0.0, 0.0, 0.0, 0.0, math.nan, 0)
    return Metrics(strict / n, argmax / n, ties / n, silent / n, loss / n, n)


def _loss_scale(model: nn.Module, logit_scale: float) -> float:
    """``logit_scale`` for a spiking output (counts over T steps), 1 for an ANN's logits."""
    return logit_scale if getattr(model, "steps", None) is not None else 1.0


def _cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (for gathering RNG states)."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _clone(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def train_model(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    train_batches: Any,
    val_batches: Any,
    *,
    epochs: int,
    lr: float,
    lr_milestones: Sequence[int] = (),
    lr_gamma: float = 0.1,
    device: torch.device | str = "cpu",
    state: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    dist: DistContext | None = None,
    precision: str = "32",
    test_batches: Any = None,
    logit_scale: float = 1.0,
) -> dict[str, Any]:
    """Train ``params`` of ``model`` with Adam for ``epochs`` epochs; return the final state.

    ``precision`` (``"32"``, ``"bf16"``, ``"16"``; `hnn_bridge.precision`): forward and loss
    run under `torch.autocast` of that dtype (validation too), backward and Adam outside
    it, as in PyTorch's AMP recipe; ``"16"`` on CUDA adds a GradScaler, saved with the
    state. The neuron keeps its state in float32 (`hnn_bridge.functional.iir`).

    ``logit_scale``: for a spiking output the loss is the cross entropy of ``logit_scale``
    x the spike counts (eq. 2b: 1); a pure ANN's logits are used as they are.

    ``test_batches`` (optional, like ``val_batches``): every epoch's weights are also scored
    on the test set and logged (``test_acc``, ``test_acc_argmax``, ``test_tie_rate``), so
    that a report can name the best *test* epoch as Fang et al.'s reference code does. The
    selection stays on validation, and the training is the same bit for bit as without it:
    the global RNG (coder noise of the test pass) is saved before and restored after.

    ``train_batches`` / ``val_batches`` have ``epoch_batches(epoch)`` (`TensorBatches`);
    the training order of epoch k depends only on the batches' seed and k. ``state`` (as
    returned here or saved by ``on_epoch``) resumes after its last finished epoch: model,
    optimizer, scheduler and RNG states are restored, so the result is the same bit for
    bit as an uninterrupted run on the same machine. ``on_epoch(state)`` is called after
    every epoch (the runner saves the state there).

    The returned state has ``epoch`` (finished epochs), ``best_epoch`` (1-based, 0 when no
    epoch finished), ``best_val`` (`Metrics` as a dict), ``best_model`` (a state dict),
    ``log`` (`EpochRecord` dicts) and ``wall_s``.

    Data parallel (``dist`` from `distributed.from_env` with several processes; every
    process calls this with the same arguments): the forward/backward pass runs through
    `torch.nn.parallel.DistributedDataParallel`, which starts every process from rank 0's
    weights and averages the gradients; ``model`` itself stays unwrapped, so state dicts
    keep their keys. ``train_batches`` must be this process's shard (`TensorBatches` with
    ``rank``/``world_size`` and batch_size = global batch / world size) and
    ``val_batches`` its share of the validation set: `evaluate` sums the counts over the
    processes, so the validation metrics, the best epoch and the returned state are the
    same on every process. The logged train loss/accuracy are over the global batches
    (all-reduced); the loss is also all-reduced per batch so that a non-finite loss on
    any process stops all of them together. Batch norms (``norm="batch"``) become
    `torch.nn.SyncBatchNorm` on CUDA, so their statistics are the global batch's; on the
    CPU (gloo, where SyncBatchNorm does not run) each process normalises with its own
    shard's statistics and the running statistics are rank 0's (DDP broadcasts buffers).
    After wrapping, each process reseeds torch's
    RNG with `distributed.rank_seed` (torch's initial seed, rank), so dropout masks and
    coder noise differ across processes; a saved state holds every process's RNG state,
    and resuming with the same number of processes continues each stream exactly.

    Raises:
        NonFiniteLoss: a NaN or infinite loss; ``.finished`` holds the epochs before it.
    """
    progress = progress or Progress()
    dist = dist or SINGLE
    steps = getattr(model, "steps", None)  # T of a spiking output (counts in 0..T), else None
    scale = _loss_scale(model, logit_scale)
    net: nn.Module = model  # what the training forward/backward runs through
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        dev = torch.device(device)
        if dev.type == "cuda":  # batch statistics over the global batch, as in one process
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BN children in place
        net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    optimizer = torch.optim.Adam(params, lr=lr)
    scaler = grad_scaler(precision, device)
    scheduler = (torch.optim.lr_scheduler.MultiStepLR(optimizer, list(lr_milestones), lr_gamma)
                 if lr_milestones else None)
    start = 0
    best_epoch, best_acc = 0, -1.0
    best_val: dict[str, Any] | None = None
    best_model: dict[str, Tensor] = _clone(model.state_dict())
    log: list[dict[str, Any]] = []
    wall = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        ranks = state.get("rng_ranks")
        if dist.distributed and ranks is not None and len(ranks) == dist.world_size:
            set_rng_state(ranks[dist.rank])
        else:
            set_rng_state(state["rng"])
            if dist.distributed:  # saved with another number of processes: a new stream per rank
                torch.manual_seed(rank_seed(int(torch.randint(0, 2**62, ())), dist.rank))
        start = int(state["epoch"])
        best_epoch = int(state["best_epoch"])
        best_val = dict(state["best_val"]) if state.get("best_val") else None
        best_acc = best_val["acc"] if best_val else -1.0
        best_model = _clone(state["best_model"])
        log = [dict(r) for r in state["log"]]
        wall = float(state.get("wall_s", 0.0))
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    elif dist.distributed:
        torch.manual_seed(rank_seed(torch.initial_seed(), dist.rank))

    def snapshot(epoch: int) -> dict[str, Any]:
        snap = {
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(device), "best_epoch": best_epoch, "best_val": best_val,
            "best_model": best_model, "log": log, "wall_s": wall,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        if dist.distributed:  # every process's RNG state (collective: all processes call snapshot)
            ranks = all_gather_objects(_cpu(snap["rng"]), dist)
            snap.update(rng=ranks[0], rng_ranks=ranks, world_size=dist.world_size)
        return snap

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        n_batches = len(train_batches)
        progress.start_epoch(epoch + 1, epochs, n_batches)
        loss_sum, correct, seen, silent, saturated = 0.0, 0, 0, 0, 0
        fired = None  # per class: training images on which its output neuron spiked
        current_lr = optimizer.param_groups[0]["lr"]
        for i, (x, y) in enumerate(train_batches.epoch_batches(epoch)):
            with autocast(precision, device):
                out = net(x)
                loss = F.cross_entropy(scale * out.float(), y)
            value = float(loss.detach())
            if dist.distributed:  # the global batch's mean loss, the same on every process
                total, count = all_reduce_sum([value * len(y), len(y)], dist)
                value = total / count if count else math.nan
            if not math.isfinite(value):
                finished = {"epoch": epoch, "best_epoch": best_epoch, "best_val": best_val,
                            "best_model": best_model, "log": log, "wall_s": wall + time.perf_counter() - t0}
                raise NonFiniteLoss(epoch + 1, i + 1, value, finished)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            loss_sum += value * len(y)
            correct += score_batch(out.detach(), y)[0]
            seen += len(y)
            if steps is not None:
                silent += int((out == 0).all(dim=1).sum())
                saturated += int((out == steps).all(dim=1).sum())
                hits = (out.detach() > 0).sum(dim=0)
                fired = hits if fired is None else fired + hits
            progress.batch(i + 1, value)
        if dist.distributed:  # sum of (global batch mean) x rows over every process's rows
            correct, seen, loss_sum, silent, saturated = all_reduce_sum(
                [correct, seen, loss_sum, silent, saturated], dist)
            correct, seen = int(round(correct)), int(round(seen))
            if fired is not None:
                fired = torch.tensor(all_reduce_sum(fired.tolist(), dist))
        if scheduler is not None:
            scheduler.step()
        val_iter = val_batches.epoch_batches(epoch)
        with recording_spike_rates(model) as totals:
            val = evaluate(model, val_iter, dist if dist.distributed else None, precision, logit_scale)
        if dist.distributed and totals:  # every process's spikes and neuron-steps
            summed = all_reduce_sum([v for pair in totals.values() for v in pair], dist)
            totals = {k: summed[2 * j:2 * j + 2] for j, k in enumerate(totals)}
        test = None
        if test_batches is not None:
            saved_rng = rng_state(device)
            test = evaluate(model, test_batches.epoch_batches(0), dist if dist.distributed else None, precision,
                            logit_scale)
            set_rng_state(saved_rng)
        improved = val.acc > best_acc
        if improved:
            best_epoch, best_acc, best_val = epoch + 1, val.acc, val.as_dict()
            best_model = _clone(model.state_dict())
        seconds = time.perf_counter() - t0
        wall += seconds
        out_shares = (silent / max(seen, 1), saturated / max(seen, 1)) if steps is not None else (None, None)
        dead = None if fired is None else torch.nonzero(fired == 0).flatten().tolist()
        record = EpochRecord(epoch + 1, loss_sum / max(seen, 1), correct / max(seen, 1), val.acc,
                             val.acc_argmax, val.tie_rate, current_lr, seconds, improved, *out_shares,
                             spike_rates(totals) or None,
                             *((test.acc, test.acc_argmax, test.tie_rate) if test is not None else ()),
                             train_out_dead=dead)
        log.append(record.as_dict())
        progress.end_epoch(record, (epochs - epoch - 1) * wall / len(log))
        if on_epoch is not None:
            on_epoch(snapshot(epoch + 1))
    return snapshot(max(start, epochs))
